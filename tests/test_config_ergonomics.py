"""Config ergonomics: YAML 1.2 floats (``1e-4``) in files and ``--set``, ``--set`` into list items and of
whole lists, the closest known names for an unknown field, ``validate`` and ``--version``, and values of
the wrong type named by field."""

import importlib.metadata

import pytest
import yaml

from distill_toolkit.cli import load_experiment, main
from distill_toolkit.config import ConfigError, DataSpec, ExperimentConfig, ModelSpec, TrainingConfig, read_config_file
from distill_toolkit.config.base import load_yaml


def _config(tmp_path, text: str = "") -> str:
    path = tmp_path / "run.yaml"
    path.write_text(f"""\
teacher: {{path: acme/tiny-sentiment, dtype: bf16}}
student: {{init_from: teacher, layers: [1]}}
data: {{name: hf, path: acme/reviews, splits: {{train: train, dev: validation}}}}
training:
  output_dir: {tmp_path / "out"}
  learning_rate: 1e-4
  adam_epsilon: 5E-9
  trackers: [wandb]
distillation:
  temperature: 4
  matches:
    - {{teacher_layer: 2, student_layer: 1, loss: hidden_mse}}
    - {{teacher_layer: 4, student_layer: 2, loss: hidden_mse}}
{text}""")
    return str(path)


def _validate(capsys, path: str, *sets: str) -> tuple[int, str, str]:
    code = main(["validate", path, *[arg for s in sets for arg in ("--set", s)]])
    out, err = capsys.readouterr()
    return code, out, err


def test_yaml_12_floats_in_files_and_overrides(tmp_path):
    data = read_config_file(_config(tmp_path))
    assert data["training"]["learning_rate"] == 1e-4 and data["training"]["adam_epsilon"] == 5e-9
    config = load_experiment(_config(tmp_path), ["training.learning_rate=5e-5", "distillation.temperature=2.5e0"])
    assert config.training.learning_rate == 5e-5 and config.distillation.temperature == 2.5
    assert [load_yaml(x) for x in ("1e-4", "-2E+3", ".5", "1_000", "'1e-4'", "1e4x")] == [1e-4, -2e3, .5, 1000,
                                                                                         "1e-4", "1e4x"]
    assert yaml.safe_load("a: 1e-4") == {"a": "1e-4"}  # PyYAML's own loader is left as it was


def test_set_reaches_list_items_and_replaces_whole_lists(tmp_path):
    config = load_experiment(_config(tmp_path), ["distillation.matches.0.weight=2", "distillation.matches.-1.loss=cos",
                                                 "training.trackers=[tensorboard]", "teacher.config.num_labels=3",
                                                 "student.layers=[0, 1]"])
    assert [m.weight for m in config.distillation.matches] == [2, 1.0]
    assert config.distillation.matches[1].loss == "cos"
    assert config.training.trackers == ["tensorboard"] and config.teacher.config == {"num_labels": 3}
    assert config.student.layers == [0, 1]


@pytest.mark.parametrize("override, needles", [
    ("trainer.max_steps=5", ["trainer", "did you mean `training`"]),
    ("training.max_step=5", ["training.max_step", "did you mean `max_steps`"]),
    ("training.num_epoch=2", ["training.num_epoch", "`num_epochs`"]),
    ("distillation.matches.2.weight=1", ["distillation.matches.2", "list of 2 item(s)", "0..1"]),
    ("distillation.matches.first.weight=1", ["distillation.matches.first", "not an index"]),
    ("training.learning_rate.x=1", ["training.learning_rate.x", "not a section"]),
    ("training", ["--set training", "section.key=value"]),
    ("training.run_name=[a", ["--set training.run_name", "cannot read the value"]),
])
def test_set_paths_that_do_not_exist(tmp_path, capsys, override, needles):
    code, out, err = _validate(capsys, _config(tmp_path), override)
    assert code == 2 and out == "" and err.startswith("config error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Fix:" in err


def test_unknown_fields_get_the_closest_names():
    with pytest.raises(ConfigError, match=r"training.num_epoch: .*did you mean `num_epochs`"):
        ExperimentConfig.from_dict({"training": {"num_epoch": 3}})
    with pytest.raises(ConfigError, match=r"distillation.matches\[0\].teacher_layers: .*`teacher_layer`"):
        ExperimentConfig.from_dict({"distillation": {"matches": [{"teacher_layers": 1}]}})
    with pytest.raises(ConfigError, match=r"^zzz: .*Known fields: data, distillation") as err:
        ExperimentConfig.from_dict({"zzz": {}})
    assert "did you mean" not in str(err.value)


def test_validate_prints_the_resolved_config(tmp_path, capsys):
    code, out, err = _validate(capsys, _config(tmp_path), "training.max_steps=7", "distillation.matches.1.weight=0.5")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["training"]["max_steps"] == 7 and printed["training"]["learning_rate"] == 1e-4
    assert printed["distillation"]["matches"][1]["weight"] == 0.5
    assert printed["training"]["batch_size"] == 32  # defaults are filled in
    assert printed["teacher"] == {**ModelSpec(path="acme/tiny-sentiment", dtype="bf16").to_dict()}
    again = load_experiment(_config(tmp_path), ["training.max_steps=7", "distillation.matches.1.weight=0.5"])
    assert ExperimentConfig.from_dict(printed) == again
    assert not (tmp_path / "out").exists()


def test_validate_refuses_a_bad_config(tmp_path, capsys):
    code, out, err = _validate(capsys, _config(tmp_path, "  temperature_scheduler: nope\n").replace(
        "  temperature: 4\n", "  temperature: 0\n"))
    assert code == 2 and out == "" and err.startswith("config error: distillation.temperature"), err


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"distill-toolkit {importlib.metadata.version('distill_toolkit')}"


@pytest.mark.parametrize("section, values, field, fix", [
    ("training", {"batch_size": "32"}, "training.batch_size", "positive integer"),
    ("training", {"progress_bar": "yes"}, "training.progress_bar", "true or false"),
    ("training", {"adam_epsilon": "1e-8"}, "training.adam_epsilon", "without quotes"),
    ("training", {"cpu": "no"}, "training.cpu", "true or false"),
    ("data", {"text_column": 3}, "data.text_column", "a string"),
    ("data", {"seed": 1.5}, "data.seed", "an integer"),
    ("teacher", {"trust_remote_code": "yes"}, "teacher.trust_remote_code", "true or false"),
    ("teacher", {"dtype": "bfloat32"}, "teacher.dtype", "bfloat16"),
    ("teacher", {"revision": 1234567}, "teacher.revision", "quote it"),
])
def test_values_of_the_wrong_type_name_the_field(section, values, field, fix):
    build = {"training": TrainingConfig, "data": DataSpec, "teacher": ModelSpec}[section]
    config = build.from_dict({**({"path": "acme/tiny"} if section == "teacher" else {}), **values})
    with pytest.raises(ConfigError) as err:
        config.validate(section)
    assert err.value.field == field and fix in str(err.value), str(err.value)


def test_wrong_type_through_the_cli_writes_nothing(tmp_path, capsys):
    path = _config(tmp_path)
    text = open(path).read().replace("  learning_rate: 1e-4\n", '  learning_rate: 1e-4\n  batch_size: "32"\n')
    open(path, "w").write(text)
    assert main(["train", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("config error: training.batch_size") and "'32'" in err
    assert not (tmp_path / "out").exists()
