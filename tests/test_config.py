"""Configs: YAML/JSON round trips, safe loading, and validation that names the field and the fix."""

import json

import pytest
import yaml

from distill_toolkit import ConfigError, DistillationConfig, ExperimentConfig, Match, TrainingConfig
from distill_toolkit.strategies import check_distillation


def _experiment():
    return ExperimentConfig.from_dict({
        "teacher": {"path": "builtin:minilm"},
        "student": {"init_from": "teacher", "layers": [1, 3, 5]},
        "training": {"output_dir": "out", "num_epochs": 2, "trackers": ["tensorboard", "wandb"]},
        "distillation": {"temperature": 4, "temperature_scheduler": ["flsw", 1, 2], "kd_loss": "ce",
                         "matches": [{"teacher_layer": 2, "student_layer": 1, "projection": "linear"},
                                     {"teacher_layer": [0, 2], "student_layer": [0, 1], "loss": "fsp"}]},
    })


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    config = _experiment()
    config.validate()
    path = tmp_path / f"run{suffix}"
    config.save(path)
    loaded = ExperimentConfig.load(path)
    assert loaded == config
    assert loaded.distillation.kd_loss == "kd_ce"  # TextBrewer's 'ce' alias
    assert isinstance(loaded.distillation.matches[0], Match)
    if suffix == ".json":
        json.loads(path.read_text())


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("training: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="unsafe or unknown YAML tag"):
        ExperimentConfig.load(path)


@pytest.mark.parametrize("section, change, field, fix", [
    ("training", {"batch_size": 0}, "training.batch_size", "positive integer"),
    ("training", {"mixed_precision": "fp8"}, "training.mixed_precision", "bf16"),
    ("training", {"trackers": ["mlfow"]}, "training.trackers", "tensorboard"),
    ("training", {"warmup_ratio": 1.5}, "training.warmup_ratio", r"\[0, 1\)"),
    ("training", {"lr_scheduler": "exp"}, "training.lr_scheduler", "cosine"),
    ("distillation", {"temperature": 0}, "distillation.temperature", "> 0"),
    ("distillation", {"temperature_scheduler": ["flsw"]}, "distillation.temperature_scheduler", "flsw"),
    ("distillation", {"kd_loss": "hidden_mse"}, "distillation.kd_loss", "feature loss"),
    ("distillation", {"kd_loss_weight_schedule": "cosine"}, "distillation.kd_loss_weight_schedule", "linear_decay"),
    ("distillation", {"task": "summarization"}, "distillation.task", "causal_lm"),
])
def test_validation_names_field_and_fix(section, change, field, fix):
    config = {"training": TrainingConfig, "distillation": DistillationConfig}[section](**change)
    with pytest.raises(ConfigError) as err:
        config.validate()
        if section == "distillation":  # names (losses, schedules, tasks) are checked against the registries
            check_distillation(config)
    assert err.value.field == field
    assert "Fix:" in str(err.value)
    import re
    assert re.search(fix, str(err.value))


@pytest.mark.parametrize("match, field", [
    ({"teacher_layer": -1, "student_layer": 1}, "teacher_layer"),
    ({"teacher_layer": 1, "student_layer": 1, "loss": "kd_ce"}, "loss"),
    ({"teacher_layer": 1, "student_layer": 1, "feature": "logits"}, "feature"),
    ({"teacher_layer": 1, "student_layer": 1, "projection": "gelu"}, "projection"),
    ({"teacher_layer": 1, "student_layer": 1, "loss": "fsp"}, "teacher_layer"),
    ({"feature": "module", "teacher_module": "bert.pooler"}, "student_module"),
    ({"teacher_layer": 1, "student_layer": 1, "weight": float("nan")}, "weight"),
])
def test_bad_matches(match, field):
    config = DistillationConfig(matches=[match])
    with pytest.raises(ConfigError) as err:
        config.validate()
        check_distillation(config)  # loss and projection names are checked against the registries
    assert err.value.field == f"distillation.matches[0].{field}"


def test_unknown_fields_and_sections_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"training.batchsize.*batch_size"):
        ExperimentConfig.from_dict({"training": {"batchsize": 8}})
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"trainer": {}}))
    with pytest.raises(ConfigError, match="trainer"):
        ExperimentConfig.load(path)


def test_experiment_needs_a_teacher_unless_supervised():
    config = ExperimentConfig.from_dict({"student": {"path": "x"}})
    with pytest.raises(ConfigError, match="teacher.*supervised"):
        config.validate()
    ExperimentConfig.from_dict({"student": {"path": "x"}, "distillation": {"strategy": "supervised"}}).validate()
