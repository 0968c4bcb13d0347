"""Run records (issue 4): config.yaml with every section and the package versions, the same config sent to
TensorBoard, W&B (offline) and MLflow (local file store), W&B names from the config or WANDB_* variables, a
resumed run continuing its W&B run; and the callbacks on_train_begin / on_log / on_save (issue 7).

Every assertion reads what the trackers really wrote: TensorBoard's hparams.yml and event files, the W&B
run's ``.wandb`` protobuf log, MLflow's file store folders.
"""

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType

from distill_toolkit import Callback, ConfigError, ExperimentConfig, Trainer, TrainingConfig
from distill_toolkit.cli import load_experiment
from distill_toolkit.config import TRACKERS
from distill_toolkit.engine.manifest import MARKER
from distill_toolkit.engine.run_info import PACKAGES, read_config_yaml
from distill_toolkit.engine.trackers import check_trackers

from helpers import ToyTask, collate, finished_wandb_records, tiny_bert, toy_distillation, toy_training
from test_cli import _data, _tokenizer, _write_config

SECTIONS = {"teacher", "student", "data", "training", "distillation"}


@pytest.fixture(autouse=True)
def fresh_wandb():
    """W&B reads its WANDB_* variables once per process (at its first ``init``); each test starts it anew."""
    import wandb

    wandb.teardown()
    yield
    wandb.teardown()


def _wandb_run(folder: Path):
    """(run record, {config key: value}) of the only offline W&B run under ``folder``."""
    runs = sorted(folder.glob("offline-run-*"))
    assert len(runs) == 1, runs
    records = finished_wandb_records(runs[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {item.key: json.loads(item.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for item in r.config.update}
    return run, config


def _mlflow_run(store: Path) -> Path:
    runs = [p for p in store.glob("*/*") if p.is_dir() and (p / "params").is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def _workspace(root: Path) -> Path:
    """test_cli's tiny saved BERT teacher (with its tokenizer) and JSON-lines splits, under ``root``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = _tokenizer(root / "teacher")
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                                             num_labels=2)).save_pretrained(root / "teacher")
    for split, n in (("train", 64), ("dev", 32), ("test", 32)):
        _data(root / f"{split}.jsonl", n, seed=len(split))
    return root


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """`distill-toolkit train` with TensorBoard, W&B offline and MLflow (file store), named in the config."""
    workspace = _workspace(tmp_path_factory.mktemp("cli"))
    store = workspace / "mlruns"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", WANDB_SILENT="true", MLFLOW_TRACKING_URI=store.as_uri(),
               MLFLOW_ALLOW_FILE_STORE="true")  # MLflow 3 keeps the file store behind this switch
    config = _write_config(
        workspace, teacher={"path": str(workspace / "teacher")}, student={"init_from": "teacher", "layers": [1, 3]},
        distillation={"strategy": "single", "temperature": 2, "hard_label_weight": 0.5})
    training = yaml.safe_load(config.read_text())["training"]
    training.update(trackers=["tensorboard", "wandb", "mlflow"], project_name="kd-proj", run_name="tiny-T2",
                    tags=["kd", "tiny"], group="sweep-1", log_every_steps=1)
    config.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "training": training}))
    run = subprocess.run([sys.executable, "-m", "distill_toolkit.cli", "train", str(config), "--set",
                          "distillation.kd_loss_weight=0.9"], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return workspace / "out", store, config


def test_config_yaml_holds_every_section_versions_and_the_command(cli_run):
    out, _, source = cli_run
    config, info = read_config_yaml(out / "config.yaml")
    assert SECTIONS <= set(config)
    assert config["distillation"]["kd_loss_weight"] == 0.9  # the --set override is what ran
    assert config["data"]["train_file"].endswith("train.jsonl") and config["student"]["layers"] == [1, 3]
    assert info["versions"] == {name: metadata.version(name) for name in PACKAGES}
    assert "distill_toolkit.cli train" in info["command"] and "kd_loss_weight=0.9" in info["command"]
    assert info["processes"] == 1
    # the record is a config the CLI reads back as the same run
    again = load_experiment(str(out / "config.yaml"))
    assert again.to_dict() == load_experiment(str(source), ["distillation.kd_loss_weight=0.9"]).to_dict()
    assert (out / "final" / "config.yaml").read_text() == (out / "config.yaml").read_text()


def test_tensorboard_gets_the_config_and_the_versions(cli_run):
    out, _, _ = cli_run
    hparams = [yaml.safe_load(p.read_text()) for p in (out / "kd-proj").glob("*/hparams.yml")]
    assert len(hparams) == 1
    assert hparams[0]["teacher.path"].endswith("teacher") and hparams[0]["data.name"] == "files"
    assert hparams[0]["student.layers"] == "[1, 3]" and hparams[0]["versions.torch"] == metadata.version("torch")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(out / "kd-proj"))
    events.Reload()
    assert len(events.Scalars("train/loss")) == 6


def test_wandb_gets_names_tags_group_and_config(cli_run):
    out, _, _ = cli_run
    run, config = _wandb_run(out / "wandb")
    assert (run.project, run.display_name, list(run.tags), run.run_group) == ("kd-proj", "tiny-T2", ["kd", "tiny"],
                                                                             "sweep-1")
    assert config["distillation.kd_loss_weight"] == 0.9 and config["versions.transformers"] == \
        metadata.version("transformers")
    assert SECTIONS == {key.split(".")[0] for key in config if not key.startswith(("versions.", "_"))}


def test_mlflow_file_store_gets_params_tags_and_metrics(cli_run):
    _, store, _ = cli_run
    run = _mlflow_run(store)
    params = {p.name: p.read_text() for p in (run / "params").iterdir()}
    assert params["student.init_from"] == "teacher" and params["versions.accelerate"] == metadata.version("accelerate")
    assert {p.name for p in (run / "tags").iterdir()} >= {"kd", "tiny", "group", "mlflow.runName"}
    assert (run / "tags" / "group").read_text() == "sweep-1"
    assert (run / "tags" / "mlflow.runName").read_text() == "tiny-T2"
    assert yaml.safe_load((run.parent / "meta.yaml").read_text())["name"] == "kd-proj"
    steps = [int(line.split()[2]) for line in (run / "metrics" / "train" / "loss").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---- the Python API -----------------------------------------------------------------------

def _toy(out, callbacks=(), eval_data=None, **kw):
    return Trainer(tiny_bert(2, 32, seed=2), toy_training(out, **kw), toy_distillation(), ToyTask(48),
                   teacher=tiny_bert(4, 48, seed=1), collate_fn=collate, callbacks=list(callbacks),
                   eval_data=eval_data)


def test_without_run_config_the_record_is_training_and_distillation(tmp_path):
    _toy(tmp_path / "run", save_every_steps=3).train()
    config, info = read_config_yaml(tmp_path / "run" / "config.yaml")
    assert set(config) == {"training", "distillation"}
    assert config["training"]["max_steps"] == 6 and config["distillation"]["temperature"] == 2.0
    assert set(info["versions"]) == set(PACKAGES)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_6"
    assert (checkpoint / "config.yaml").read_text() == (tmp_path / "run" / "config.yaml").read_text()


def test_wandb_reads_its_own_variables_when_the_config_leaves_names_unset(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "env-proj")
    monkeypatch.setenv("WANDB_NAME", "env-name")
    monkeypatch.setenv("WANDB_TAGS", "env-a,env-b")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_home"))
    _toy(tmp_path / "run", trackers=["wandb"]).train()
    run, config = _wandb_run(tmp_path / "wandb_home" / "wandb")
    assert (run.project, run.display_name, sorted(run.tags), run.run_group) == ("env-proj", "env-name",
                                                                               ["env-a", "env-b"], "env-group")
    assert config["training.max_steps"] == 6
    assert not (tmp_path / "run" / "wandb").exists()  # WANDB_DIR won over the default (output_dir)


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "w"))
    _toy(tmp_path / "run", trackers=["wandb"], max_steps=3, save_every_steps=3).train()
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    first_id = state["wandb_run_id"]
    assert first_id
    _toy(tmp_path / "run", trackers=["wandb"], max_steps=6, save_every_steps=3, resume_from="latest").train()
    # Two offline folders, one per part. Folder names are not the check: W&B names a folder by start second and
    # run id and appends "-1" when a part starts in the same second; each folder's own run record is the check.
    runs = sorted((tmp_path / "w" / "wandb").glob("offline-run-*"))  # by start second, then "-1"
    assert len(runs) == 2, runs
    for run in runs:
        records = finished_wandb_records(run)
        assert [rec.run.run_id for rec in records if rec.WhichOneof("record_type") == "run"] == [first_id]
    records = finished_wandb_records(runs[1])
    history = [rec.history for rec in records if rec.WhichOneof("record_type") == "history"]
    steps = [h.step.num for h in history]
    assert steps == [4, 5, 6]  # the second part logs where the first stopped
    again = json.loads((tmp_path / "run" / "checkpoints" / "step_6" / "trainer_state.json").read_text())
    assert again["wandb_run_id"] == first_id


# ---- tracker names ------------------------------------------------------------------------

def test_every_tracker_accelerate_knows_is_accepted():
    assert set(TRACKERS) == {str(t) for t in LoggerType} - {"all"}
    for name in TRACKERS:
        TrainingConfig(trackers=[name]).validate()


def test_a_tracker_that_is_not_installed_is_named_with_what_to_install(tmp_path):
    missing = [name for name in TRACKERS if name not in {str(t) for t in get_available_trackers()}]
    assert missing, "the test extra installs only some trackers: at least one known tracker must be absent"
    with pytest.raises(ConfigError, match=rf"training.trackers: tracker '{missing[0]}' is not installed.*pip install"):
        check_trackers(TrainingConfig(trackers=[missing[0]]))
    path = tmp_path / "c.yaml"  # the CLI refuses it before any model or data is loaded
    path.write_text(yaml.safe_dump({"training": {"trackers": [missing[0]]}, "distillation": {"strategy": "supervised"},
                                    "student": {"path": "builtin:minilm"}, "data": {"name": "sentiment"}}))
    with pytest.raises(ConfigError, match="is not installed"):
        load_experiment(str(path))


@pytest.mark.parametrize("change, field", [
    ({"trackers": ["mlfow"]}, "training.trackers"),
    ({"tags": "kd"}, "training.tags"),
    ({"tags": ["kd", ""]}, "training.tags"),
    ({"tags": ["kd", "kd"]}, "training.tags"),
    ({"tags": ["x" * 65]}, "training.tags"),
    ({"group": ""}, "training.group"),
    ({"group": 3}, "training.group"),
    ({"run_name": "  "}, "training.run_name"),
    ({"project_name": "team/proj"}, "training.project_name"),
    ({"wandb_mode": "shared"}, "training.wandb_mode"),
])
def test_tracker_fields_are_checked(change, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        TrainingConfig(**change).validate()


def test_tags_and_group_load_from_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"training": {"tags": ["a", "b"], "group": "g"}}))
    config = ExperimentConfig.from_dict(yaml.safe_load(path.read_text()))
    assert config.training.tags == ["a", "b"] and config.training.group == "g"


# ---- callbacks ----------------------------------------------------------------------------

class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, trainer):
        self.events.append(("begin", trainer.state.global_step))

    def on_step_end(self, trainer, step, logs):
        self.events.append(("step", step))

    def on_log(self, trainer, step, logs):
        self.events.append(("log", step, sorted({key.split("/")[0] for key in logs})))

    def on_evaluate(self, trainer, step, metrics):
        self.events.append(("evaluate", step))

    def on_save(self, trainer, step, checkpoint):
        # the checkpoint is complete when on_save runs: sealed, renamed, and its state is this step's
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        self.events.append(("save", step, checkpoint.name, (checkpoint / MARKER).is_file(), state["global_step"]))

    def on_train_end(self, trainer, result):
        self.events.append(("end", result["global_step"]))


def test_callbacks_run_at_their_places(tmp_path):
    recorder = Recorder()
    _toy(tmp_path / "run", [recorder], eval_data=ToyTask(16, seed=4), log_every_steps=2, save_every_steps=3,
         eval_every_steps=3).train()
    assert recorder.events == [
        ("begin", 0),
        ("log", 1, ["train"]), ("step", 1),
        ("log", 2, ["train"]), ("step", 2),
        ("step", 3), ("log", 3, ["eval"]), ("evaluate", 3), ("save", 3, "step_3", True, 3),
        ("log", 4, ["train"]), ("step", 4),
        ("step", 5),
        ("log", 6, ["train"]), ("step", 6), ("log", 6, ["eval"]), ("evaluate", 6), ("save", 6, "step_6", True, 6),
        ("end", 6),
    ]


def test_on_train_begin_sees_the_resumed_step_and_can_stop(tmp_path):
    _toy(tmp_path / "run", max_steps=3, save_every_steps=3).train()

    class StopAtOnce(Recorder):
        def on_train_begin(self, trainer):
            super().on_train_begin(trainer)
            trainer.should_stop = True

    recorder = StopAtOnce()
    result = _toy(tmp_path / "run", [recorder], max_steps=6, resume_from="latest").train()
    assert recorder.events[0] == ("begin", 3) and result["global_step"] == 3
    assert [e for e in recorder.events if e[0] == "step"] == []


def test_callbacks_get_on_log_without_trackers(tmp_path):
    recorder = Recorder()
    _toy(tmp_path / "run", [recorder], trackers=[], log_every_steps=3).train()
    assert [e[1] for e in recorder.events if e[0] == "log"] == [1, 3, 6]
    assert os.listdir(tmp_path / "run").count("wandb") == 0
