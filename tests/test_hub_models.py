"""Models by Hub ID, read from a real Hugging Face cache with ``HF_HUB_OFFLINE=1``.

huggingface_hub, transformers and datasets read ``HF_HOME`` and ``HF_HUB_OFFLINE`` once, at import, so
the honest test is a fresh process: the CLI runs in a subprocess whose environment points ``HF_HOME`` at a
cache built here in the hub layout (``hub/models--org--name/{blobs,snapshots/<sha>,refs/<name>}``). The
package itself never sets either variable.
"""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification

from distill_toolkit.models import agree_label_names, is_hub_id, load_pretrained, resolve_model_path
from test_hf_data import CLASSES, class_features, rows, save_model, save_to_disk

ROOT = Path(__file__).resolve().parents[1]


def cache_model(home: Path, repo_id: str, folder: Path, ref: str = "main") -> str:
    """Put the files of ``folder`` into ``home``'s hub cache as a snapshot of ``repo_id`` named by ``ref``,
    the way ``huggingface_hub`` lays a download out (content-addressed blobs, snapshot symlinks, refs)."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    sha = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(sha)
    return sha


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def write_config(tmp_path: Path, teacher: dict, data: Path) -> Path:
    config = {"teacher": teacher, "student": {"init_from": "teacher", "layers": [1]},
              "data": {"name": "hf", "path": str(data), "max_length": 16},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 8,
                           "learning_rate": "1e-3", "trackers": [], "progress_bar": False},
              "distillation": {"temperature": 2, "hard_label_weight": 0.5,
                               "matches": [{"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config).replace("'1e-3'", "1e-3"))  # as a user writes it: YAML 1.2 float
    return path


@pytest.fixture
def hub_home(tmp_path) -> Path:
    """A cache holding ``acme/tiny-sentiment``: ``main`` a 2-label head, tag ``v2`` the 3-class CLASSES head."""
    home = tmp_path / "hf_home"
    cache_model(home, "acme/tiny-sentiment", save_model(tmp_path / "v1", names=["bad", "good"], seed=1))
    cache_model(home, "acme/tiny-sentiment", save_model(tmp_path / "v2"), ref="v2")
    return home


def test_teacher_by_hub_id_offline_with_revision_and_bf16(tmp_path, hub_home):
    """Integer labels: the names (and the count, 3) come from the v2 teacher; main (2 labels) would not fit."""
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(24, 1)),
                        validation=datasets.Dataset.from_dict(rows(8, 2)))
    teacher = {"path": "acme/tiny-sentiment", "revision": "v2", "dtype": "bfloat16"}
    done = run_cli(hub_home, "train", str(write_config(tmp_path, teacher, data)))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["global_step"] == 3
    student = BertForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert student.config.id2label == dict(enumerate(CLASSES)) and student.dtype == torch.float32


def test_unknown_hub_id_offline_names_both_fixes(tmp_path, hub_home):
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(8, 1), features=class_features()))
    done = run_cli(hub_home, "train", str(write_config(tmp_path, {"path": "acme/no-such-model"}, data)))
    assert done.returncode == 2, done.stderr[-3000:]
    line = next(x for x in done.stderr.splitlines() if x.startswith("config error:"))
    for needle in ("teacher.path", "acme/no-such-model", "not a local folder", "HF_HUB_OFFLINE",
                   "save_pretrained", "HF_HUB_OFFLINE=1", str(hub_home / "hub")):
        assert needle in line, (needle, line)
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


# ---- in-process: the pieces ------------------------------------------------------------------------

def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert is_hub_id("acme/tiny") and is_hub_id("bert-base-uncased")
    assert not any(is_hub_id(p) for p in ("./acme/tiny", "/abs/model", "~/model", "runs/a/final", "a//b"))
    assert resolve_model_path("acme/tiny") == "acme/tiny" and resolve_model_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(FileNotFoundError, match="Hub model ID"):
        resolve_model_path(str(tmp_path / "missing"))


@pytest.mark.parametrize("dtype, expected", [(None, torch.float32), ("bf16", torch.bfloat16),
                                             ("float16", torch.float16), ("auto", torch.bfloat16)])
def test_dtype_of_a_loaded_model(tmp_path, dtype, expected):
    folder = save_model(tmp_path / "m")
    BertForSequenceClassification.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    model = load_pretrained(BertForSequenceClassification, str(folder), dtype=dtype)
    assert model.dtype == expected


def test_a_new_student_head_takes_the_teachers_names(tmp_path):
    teacher = load_pretrained(BertForSequenceClassification, str(save_model(tmp_path / "t")),
                              labels=["LABEL_0", "LABEL_1", "LABEL_2"])
    student = BertForSequenceClassification(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=8, num_labels=3))
    assert agree_label_names(teacher, student, ["LABEL_0", "LABEL_1", "LABEL_2"]) == CLASSES
    assert student.config.id2label == dict(enumerate(CLASSES))


REMOTE_CODE = '''from transformers import BertConfig, BertForSequenceClassification


class TinyRemoteConfig(BertConfig):
    model_type = "tiny-remote"


class TinyRemoteForSequenceClassification(BertForSequenceClassification):
    config_class = TinyRemoteConfig
'''


def remote_code_model(folder: Path) -> Path:
    """A model folder whose config names its own code (``auto_map``), as Hub repositories with custom code do."""
    save_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tiny-remote", architectures=["TinyRemoteForSequenceClassification"],
                  auto_map={"AutoConfig": "modeling_tiny.TinyRemoteConfig",
                            "AutoModelForSequenceClassification": "modeling_tiny.TinyRemoteForSequenceClassification"})
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_tiny.py").write_text(REMOTE_CODE)
    return folder


def test_remote_code_is_refused_unless_trusted(tmp_path):
    from distill_toolkit import tasks
    from distill_toolkit.config import ConfigError

    folder = remote_code_model(tmp_path / "remote")
    with pytest.raises(ConfigError, match=r"teacher.trust_remote_code.*trust_remote_code: true"):
        tasks.get("sequence_classification").load_model(str(folder), labels=CLASSES, where="teacher")
    # Trusted, the repository's own code runs; in a fresh process so its module cache lands under HF_HOME.
    home = tmp_path / "hf_home"
    script = ("import sys; from distill_toolkit import tasks; "
              "m = tasks.get('sequence_classification').load_model(sys.argv[1], labels=None, trust_remote_code=True); "
              "print(type(m).__name__)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script, str(folder)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "TinyRemoteForSequenceClassification"
