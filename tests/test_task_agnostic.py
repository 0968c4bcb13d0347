"""Task-agnostic distillation: the unlabelled corpora (Shakespeare's plays, the VADER sentences), the
`general` task, its config checks, and the recipe from YAML: a general distillation on raw text, then
a task distillation that starts from its exported encoder."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

from distill_toolkit import tasks
from distill_toolkit.cli import load_experiment, main, task_of
from distill_toolkit.config import ConfigError, DistillationConfig, ExperimentConfig, read_config_file
from distill_toolkit.data import SENTIMENT_DOMAINS, load_splits
from distill_toolkit.data.unlabelled import load_shakespeare, load_vader_sentences, parse_play
from distill_toolkit.strategies import check_distillation

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "okay", "fine", "so", "movie", "plot", "the", "a"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "configs"

PLAY = """# The Tempest

## ACT I

### SCENE I. On a ship at sea.

_A tempestuous noise of thunder and lightning heard. Enter a Master and a
Boatswain_

**Master**  
Boatswain!

**Boatswain**  
Here, master: what cheer?  
Good, speak to the mariners.

_Exit_

Fall to't, yarely, or we run ourselves aground:  
bestir, bestir. _\\[Aside]_ \\[more]

**GONZALO**  
_\\[Within]_  
Nay, good, be _[ ]_ patient.

## ACT II

_Enter ALONSO_
"""


def test_parse_play_joins_speeches_and_drops_directions(tmp_path):
    path = tmp_path / "the-tempest.md"
    path.write_text(PLAY)
    assert parse_play(path) == [
        "Boatswain!",
        "Here, master: what cheer? Good, speak to the mariners. Fall to't, yarely, or we run ourselves aground: "
        "bestir, bestir. [more]",
        "Nay, good, be patient.",
    ]


def test_load_shakespeare_from_a_folder_is_seeded_and_has_ids(tmp_path):
    for genre, name in (("comedies", "the-tempest"), ("tragedies", "hamlet")):
        (tmp_path / genre).mkdir()
        (tmp_path / genre / f"{name}.md").write_text(PLAY)
    ds = load_shakespeare(seed=3, plays_dir=tmp_path)
    rows = [r for part in ds.values() for r in part]
    assert ds["train"].column_names == ["text", "id"] and len(rows) == 6
    assert sorted(r["id"] for r in rows) == sorted(f"{p}:{i}" for p in ("the-tempest", "hamlet") for i in range(3))
    assert load_shakespeare(seed=3, plays_dir=tmp_path)["train"]["id"] == ds["train"]["id"]


def test_vader_sentences_keep_neutral_ones(tmp_path):
    for i, name in enumerate(SENTIMENT_DOMAINS.values()):
        lines = [f"{j}\t{(-1) ** j * (j % 3)}\tsentence {i} {j}" for j in range(10)]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    ds = load_vader_sentences(data_dir=tmp_path)
    rows = [r for part in ds.values() for r in part]
    assert len(rows) == 40 and ds["train"].column_names == ["text", "id"]
    assert {r["id"].split(":")[0] for r in rows} == set(SENTIMENT_DOMAINS)


def test_general_task_and_its_config_checks():
    task = tasks.get("general")
    assert task.auto_class == "AutoModel" and task.label_names({}, None) is None
    assert task.metric([], []) == {}
    match = {"feature": "value", "teacher_layer": 1, "student_layer": 0, "loss": "minilmv2_relation"}
    DistillationConfig(task="general", kd_loss_weight=0, matches=[match]).validate()
    for fields, message in (({"matches": [match]}, "kd_loss_weight: task 'general'"),
                            ({"kd_loss_weight": 0, "hard_label_weight": 1, "matches": [match]}, "hard_label_weight"),
                            ({"kd_loss_weight": 0}, "matches: task 'general' learns from intermediate matches")):
        with pytest.raises(ConfigError, match=message):
            DistillationConfig(task="general", **fields).validate()
    config = ExperimentConfig.from_dict({"teacher": {"path": "t"}, "student": {"init_from": "teacher"},
                                         "data": {"name": "shakespeare"},
                                         "distillation": {"kd_loss_weight": 0, "matches": [match]}})
    assert task_of(config).name == "general"  # task auto on an unlabelled corpus
    config.validate()
    config.distillation.kd_loss_weight = 1
    with pytest.raises(ConfigError, match="kd_loss_weight: task 'general'"):  # auto on unlabelled text is general
        config.validate()


@pytest.mark.parametrize("name", ["general_minilmv2_shakespeare.yaml", "task_after_general.yaml",
                                  "distill_minilm_augmented.yaml"])
def test_example_configs_validate(name):
    config = ExperimentConfig.from_dict(read_config_file(str(EXAMPLES / name)))
    config.validate()
    check_distillation(config.distillation)


# ---- the recipe from YAML ----------------------------------------------------------------------

def _teacher(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _texts(tmp_path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (6,), generator=g)) for _ in range(40)]
    path = tmp_path / "unlabelled.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _labelled(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    for split, n in (("train", 24), ("dev", 8)):
        rows = []
        for _ in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            pool = WORDS[:3] if label else WORDS[3:6]
            text = " ".join(pool[int(i)] for i in torch.randint(0, 3, (3,), generator=g))
            rows.append({"text": text, "label": label})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def _training(out: Path, steps: int = 3) -> dict:
    return {"output_dir": str(out), "max_steps": steps, "batch_size": 8, "learning_rate": 1e-3, "trackers": [],
            "progress_bar": False}


def _run(capsys, config: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(config))
    code = main(["train", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out[out.index("{"):])


def _general_config(tmp_path: Path, teacher: Path) -> dict:
    rel = [{"feature": f, "teacher_layer": 1, "student_layer": 0, "loss": "minilmv2_relation",
            "loss_kwargs": {"relation_heads": 4}} for f in ("query", "key", "value")]
    return {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [1]},
            "data": {"name": "text", "train_file": str(_texts(tmp_path)), "max_length": 16},
            "training": _training(tmp_path / "general"),
            "distillation": {"task": "general", "kd_loss_weight": 0, "hard_label_weight": 0, "matches": rel + [
                {"feature": "attention", "teacher_layer": 1, "student_layer": 0, "loss": "minilm_attention"},
                {"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"}]}}


def test_general_distillation_then_task_distillation_from_its_output(tmp_path, capsys):
    teacher = _teacher(tmp_path)
    summary = _run(capsys, _general_config(tmp_path, teacher), tmp_path / "general.yaml")
    assert summary["global_step"] == 3 and summary["eval"] == {}
    exported = tmp_path / "general" / "final"
    encoder = BertModel.from_pretrained(exported)
    assert encoder.config.num_hidden_layers == 1 and encoder.config.architectures == ["BertModel"]
    start = {k: v.clone() for k, v in encoder.state_dict().items()}
    trained_away = BertModel.from_pretrained(teacher).encoder.layer[1].attention.self.query.weight
    assert not torch.equal(start["encoder.layer.0.attention.self.query.weight"], trained_away)  # it learnt

    _labelled(tmp_path)
    task = {"teacher": {"path": str(teacher)}, "student": {"path": str(exported)},
            "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                     "dev_file": str(tmp_path / "dev.jsonl"), "max_length": 16},
            "training": {**_training(tmp_path / "task", steps=1), "learning_rate": 1e-12},
            "distillation": {"temperature": 2, "hard_label_weight": 0.5}}
    summary = _run(capsys, task, tmp_path / "task.yaml")
    assert "accuracy" in summary["eval"]
    student = BertForSequenceClassification.from_pretrained(tmp_path / "task" / "final")
    for name, value in start.items():  # the task student started from the general student's encoder
        torch.testing.assert_close(student.bert.state_dict()[name], value, atol=1e-6, rtol=0)


def test_general_task_refuses_logits_kd(tmp_path, capsys):
    config = _general_config(tmp_path, _teacher(tmp_path))
    config["distillation"]["kd_loss_weight"] = 1
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", str(tmp_path / "bad.yaml")]) == 2
    assert "kd_loss_weight: task 'general'" in capsys.readouterr().err


def test_a_random_student_from_the_teacher_config(tmp_path, capsys):
    teacher = _teacher(tmp_path)
    config = _general_config(tmp_path, teacher)
    config["student"] = {"path": str(teacher), "init_from": "random",
                         "config": {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 2,
                                    "intermediate_size": 32}}
    config["distillation"]["matches"] = config["distillation"]["matches"][:3]  # relations: any width and heads
    assert _run(capsys, config, tmp_path / "random.yaml")["global_step"] == 3
    assert BertModel.from_pretrained(tmp_path / "general" / "final").config.hidden_size == 16


def test_general_distillation_on_augmented_text_through_the_teacher_cache(tmp_path, capsys):
    config = _general_config(tmp_path, _teacher(tmp_path))
    config["data"]["augment"] = {"factor": 2, "p_mask": 0.2, "p_replace": 0.2, "p_ngram": 0.3}
    config["training"]["teacher_cache"] = str(tmp_path / "cache")
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cache-teacher", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["examples"] == 40 * 3
    assert _run(capsys, config, path)["global_step"] == 3


@pytest.mark.slow
def test_real_shakespeare_is_fetched_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("DISTILL_TOOLKIT_OFFLINE", raising=False)
    ds = load_shakespeare()
    assert sum(len(part) for part in ds.values()) == 31354
    assert sum(len(t.split()) for part in ds.values() for t in part["text"]) > 800_000
    assert not any("**" in t or t.startswith("_") for t in ds["train"]["text"][:2000])
    config = load_experiment(str(EXAMPLES / "general_minilmv2_shakespeare.yaml"))
    config.data.max_examples = 50
    assert len(load_splits(config.data)["train"]) == 40
