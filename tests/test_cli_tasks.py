"""Every task of the registry from YAML through the one CLI route: 3-class and text-pair classification,
token classification (NER), multi-label; and the label-space errors that must come before training."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (BertConfig, BertForSequenceClassification, BertForTokenClassification, BertModel,
                          BertTokenizerFast)

from distill_toolkit import tasks
from distill_toolkit.cli import main

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "okay", "fine", "so", "movie", "plot", "the", "a",
         "paris", "london", "anna", "bob", "met", "in", "is"]
CLASSES = ["negative", "neutral", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast.from_pretrained(folder)


def _save_teacher(folder: Path, model_class, **config) -> None:
    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=32, **config)
    model_class(bert).save_pretrained(folder)


def _rows(kind: str, n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)

    def pick(pool):
        return pool[int(torch.randint(0, len(pool), (1,), generator=g))]

    rows = []
    for _ in range(n):
        label = int(torch.randint(0, 3, (1,), generator=g))
        pool = [WORDS[0:3], WORDS[6:9], WORDS[3:6]][label]
        text = " ".join([pick(pool), pick(pool), "movie"])
        if kind == "three_class":
            rows.append({"text": text, "sentiment": CLASSES[label]})
        elif kind == "pair":
            rows.append({"premise": text, "hypothesis": pick(WORDS[9:13]), "label": label})
        elif kind == "multi_label":
            rows.append({"text": text, "targets": [int(label == 0), int(label == 2), int("movie" in text)]})
        else:  # NER, tags as ids into TAGS: "anna met the a in paris"
            person, place = pick(["anna", "bob"]), pick(["paris", "london"])
            rows.append({"words": [person, "met", "the", "a", "in", place], "tags": [1, 0, 0, 0, 0, 3]})
    return rows


def _workspace(tmp_path: Path, kind: str) -> Path:
    for split, n in (("train", 48), ("dev", 16), ("test", 16)):
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in _rows(kind, n, len(split))) + "\n")
    return tmp_path


def _config(tmp_path: Path, data: dict, **sections) -> Path:
    base = {
        "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"), "dev_file": str(tmp_path / "dev.jsonl"),
                 "test_file": str(tmp_path / "test.jsonl"), "max_length": 16, **data},
        "student": {"init_from": "teacher", "layers": [1]},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 8, "learning_rate": 1e-3,
                     "trackers": [], "progress_bar": False},
        "distillation": {"strategy": "single", "temperature": 2, "hard_label_weight": 0.5,
                         "matches": [{"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"}]},
    }
    base.update(sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _run(capsys, config: Path, *extra: str) -> tuple[int, dict, str]:
    code = main(["train", str(config), *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out[out.index("{"):]) if code == 0 else {}), err


def test_three_class_classifier_from_yaml(tmp_path, capsys):
    """A 3-class teacher whose saved head names its labels; the data holds label names."""
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification, num_labels=3,
                  id2label=dict(enumerate(CLASSES)), label2id={c: i for i, c in enumerate(CLASSES)})
    config = _config(tmp_path, {"label_column": "sentiment"}, teacher={"path": str(tmp_path / "teacher")})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert set(summary["test"]) >= {"accuracy"} and summary["global_step"] == 4
    student = BertForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert student.config.num_labels == 3 and student.config.id2label == dict(enumerate(CLASSES))


def test_text_pair_classifier_from_yaml(tmp_path, capsys):
    """NLI-style text pairs, integer labels, a base model whose head is new (num_labels read from the data)."""
    _workspace(tmp_path, "pair")
    _save_teacher(tmp_path / "teacher", BertModel)  # a base model: the head is new, sized by the data
    config = _config(tmp_path, {"text_column": "premise", "text_pair_column": "hypothesis"},
                     teacher={"path": str(tmp_path / "teacher"), "config": {"num_labels": 3}})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert BertForSequenceClassification.from_pretrained(tmp_path / "out" / "final").config.num_labels == 3


def test_token_classifier_from_yaml(tmp_path, capsys):
    _workspace(tmp_path, "ner")
    _save_teacher(tmp_path / "teacher", BertForTokenClassification, num_labels=len(TAGS),
                  id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})
    config = _config(tmp_path, {"text_column": "words", "label_column": "tags", "label_names": TAGS},
                     teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "token_classification", "temperature": 2, "hard_label_weight": 0.5})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert {"entity_f1", "accuracy"} <= set(summary["test"])
    assert BertForTokenClassification.from_pretrained(tmp_path / "out" / "final").config.num_labels == len(TAGS)


def test_multi_label_classifier_from_yaml(tmp_path, capsys):
    _workspace(tmp_path, "multi_label")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification, num_labels=3,
                  problem_type="multi_label_classification")
    config = _config(tmp_path, {"label_column": "targets", "label_names": ["neg", "pos", "movie"]},
                     teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "multilabel_classification", "kd_loss": "multilabel_kd",
                                   "temperature": 1, "hard_label_weight": 0.5})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert {"micro_f1", "macro_f1"} <= set(summary["test"])
    student = BertForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert student.config.problem_type == "multi_label_classification"


def test_teacher_head_disagreeing_with_the_data_is_a_config_error(tmp_path, capsys):
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification, num_labels=2,
                  id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    code, _, err = _run(capsys, _config(tmp_path, {"label_column": "sentiment"},
                                        teacher={"path": str(tmp_path / "teacher")}))
    assert code == 2
    assert "config error: teacher.path" in err and "2 labels" in err and "3" in err and "Fix:" in err


def test_label_names_disagreeing_with_the_teacher_are_a_config_error(tmp_path, capsys):
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification, num_labels=3,
                  id2label={0: "bad", 1: "meh", 2: "good"}, label2id={"bad": 0, "meh": 1, "good": 2})
    code, _, err = _run(capsys, _config(tmp_path, {"label_column": "sentiment"},
                                        teacher={"path": str(tmp_path / "teacher")}))
    assert code == 2 and "label names" in err and "bad" in err and "negative" in err


def test_saved_head_of_another_size_is_a_config_error(tmp_path, capsys):
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification)  # 2 labels, default names
    code, _, err = _run(capsys, _config(tmp_path, {"label_column": "sentiment"},
                                        teacher={"path": str(tmp_path / "teacher")}))
    assert code == 2 and "teacher.path" in err and "3 labels" in err and "Fix:" in err


def test_num_labels_override_disagreeing_with_the_data(tmp_path, capsys):
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification)
    code, _, err = _run(capsys, _config(tmp_path, {"label_column": "sentiment"},
                                        teacher={"path": str(tmp_path / "teacher"), "config": {"num_labels": 5}}))
    assert code == 2 and "teacher.config.num_labels" in err and "3 labels" in err


def test_unknown_task_lists_the_known_ones(tmp_path, capsys):
    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification)
    config = _config(tmp_path, {"label_column": "sentiment"}, teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "summarisation"})
    code, _, err = _run(capsys, config)
    assert code == 2 and "distillation.task" in err
    for name in tasks.available_tasks():
        assert name in err


def test_a_task_whose_head_the_checkpoint_lacks_is_a_config_error(tmp_path, capsys):
    """A sequence classifier's checkpoint loaded for token classification: its head is a sentence head (its
    weights would silently become a token head of the same shape); refused, naming the task that fits."""
    _workspace(tmp_path, "ner")
    _save_teacher(tmp_path / "teacher", BertForSequenceClassification, num_labels=len(TAGS))
    config = _config(tmp_path, {"text_column": "words", "label_column": "tags", "label_names": TAGS},
                     teacher={"path": str(tmp_path / "teacher")}, distillation={"task": "token_classification"})
    code, _, err = _run(capsys, config)
    assert code == 2 and "teacher.path" in err and "BertForSequenceClassification" in err
    assert "sequence_classification" in err and "Fix:" in err


@pytest.mark.parametrize("name", ["sequence_classification", "multilabel_classification", "token_classification",
                                  "question_answering", "masked_lm", "causal_lm"])
def test_every_task_is_registered(name):
    assert name in tasks.available_tasks() and tasks.get(name).name == name


@pytest.mark.parametrize("strategy", ["supervised", "single"])
def test_two_identical_runs_give_byte_identical_weights(tmp_path, capsys, strategy):
    """The seed is set before any model or head is built: a teacher run on a base model (its new head is
    random) and a distillation run each reproduce to the byte."""
    from safetensors.torch import load_file

    _workspace(tmp_path, "three_class")
    _save_teacher(tmp_path / "teacher", BertModel)
    weights = []
    for run in ("a", "b"):
        sections = {"teacher": {"path": str(tmp_path / "teacher")}}
        if strategy == "supervised":
            sections.update(student={"path": str(tmp_path / "teacher")}, distillation={"strategy": "supervised"})
        config = _config(tmp_path, {"label_column": "sentiment"}, **sections)
        code, _, err = _run(capsys, config, "--set", f"training.output_dir={tmp_path / run}")
        assert code == 0, err
        weights.append(load_file(str(tmp_path / run / "final" / "model.safetensors")))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
