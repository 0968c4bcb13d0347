"""The CLI end to end on YAML files: a tiny saved teacher, a student made of its layers, JSON-lines data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "movie", "plot", "the", "a", "was", "is", "very", "not"]


def _tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast.from_pretrained(folder)


def _data(path: Path, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        pool = WORDS[:3] if label else WORDS[3:6]
        words = [pool[int(i)] for i in torch.randint(0, 3, (3,), generator=g)] + ["movie"]
        lines.append(json.dumps({"sentence": " ".join(words), "polarity": label}))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def workspace(tmp_path):
    teacher_dir = tmp_path / "teacher"
    tokenizer = _tokenizer(teacher_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(teacher_dir)
    for split, n in (("train", 64), ("dev", 32), ("test", 32)):
        _data(tmp_path / f"{split}.jsonl", n, seed=len(split))
    return tmp_path


def _write_config(tmp_path, **sections) -> Path:
    base = {
        "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"), "dev_file": str(tmp_path / "dev.jsonl"),
                 "test_file": str(tmp_path / "test.jsonl"), "text_column": "sentence", "label_column": "polarity",
                 "max_length": 16},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 6, "batch_size": 16, "learning_rate": 1e-3,
                     "trackers": ["tensorboard"], "progress_bar": False},
    }
    base.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def test_train_from_yaml_distils_and_exports(workspace):
    config = _write_config(
        workspace,
        teacher={"path": str(workspace / "teacher")},
        student={"init_from": "teacher", "layers": [1, 3]},
        distillation={"strategy": "single", "temperature": 2, "hard_label_weight": 0.5,
                      "matches": [{"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"},
                                  {"teacher_layer": 3, "student_layer": 1, "feature": "attention",
                                   "loss": "attention_mse"}]})
    run = _cli("train", config, "--set", "training.max_steps=8")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["global_step"] == 8  # the --set override won over the file
    assert 0.0 <= summary["test"]["accuracy"] <= 1.0 and "accuracy" in summary["eval"]
    exported = workspace / "out" / "final"
    student = BertForSequenceClassification.from_pretrained(exported)
    assert student.config.num_hidden_layers == 2
    assert (exported / "tokenizer.json").is_file() or (exported / "vocab.txt").is_file()
    assert list((workspace / "out").rglob("events.out.tfevents.*"))


def test_supervised_from_yaml_needs_no_teacher(workspace):
    config = _write_config(workspace, student={"path": str(workspace / "teacher")},
                           distillation={"strategy": "supervised"})
    run = _cli("train", config)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["global_step"] == 6


def test_bad_config_is_refused_before_any_model_loads(workspace):
    config = _write_config(workspace, teacher={"path": str(workspace / "teacher")},
                           student={"init_from": "teacher", "layers": [0]},
                           distillation={"kd_loss": "kld"})
    run = _cli("train", config)
    assert run.returncode == 2
    assert "distillation.kd_loss" in run.stderr and "forward_kl" in run.stderr
    assert not (workspace / "out").exists()


def test_params_prints_a_table(workspace):
    run = _cli("params", workspace / "teacher", "--max-level", "2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "embeddings" in run.stdout and "encoder" in run.stdout
