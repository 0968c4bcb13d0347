"""``data: {name: hf, ...}`` through the CLI: save_to_disk folders, parquet folders and single files,
3-class and text-pair data, label names from a ClassLabel, the values or the teacher's ``id2label``; and
the bad input that must stop a run before anything is written: a missing split or column, labels outside
the label set, teacher and student label maps that differ, a Hub dataset that is not in the cache."""

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill_toolkit.cli import main

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "okay", "fine", "so", "movie", "plot", "the", "a"]
CLASSES = ["negative", "neutral", "positive"]
POOLS = [WORDS[3:6], WORDS[6:9], WORDS[0:3]]  # words of each class, in CLASSES order


def save_model(folder: Path, names=CLASSES, seed: int = 0) -> Path:
    """A tiny BERT classifier with a trained-looking head named ``names``, and its tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=len(names),
                        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def rows(n: int, seed: int, pair: bool = False) -> dict:
    """Columns of ``n`` examples: ``text`` (and ``hypothesis``), integer ``label`` in 0..2 (CLASSES order)."""
    g = torch.Generator().manual_seed(seed)
    out = {"text": [], "label": []}
    for _ in range(n):
        label = int(torch.randint(0, 3, (1,), generator=g))
        words = [POOLS[label][int(torch.randint(0, 3, (1,), generator=g))] for _ in range(2)]
        out["text"].append(" ".join(words + ["movie"]))
        out["label"].append(label)
    if pair:
        out["hypothesis"] = [["the plot", "a movie", "so fine"][i % 3] for i in range(n)]
    return out


def class_features(pair: bool = False) -> datasets.Features:
    columns = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSES)}
    if pair:
        columns["hypothesis"] = datasets.Value("string")
    return datasets.Features(columns)


def save_to_disk(folder: Path, **splits: datasets.Dataset) -> Path:
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def write_config(tmp_path: Path, data: dict, teacher: Path, **sections) -> Path:
    config = {
        "teacher": {"path": str(teacher)},
        "student": {"init_from": "teacher", "layers": [1]},
        "data": {"name": "hf", "max_length": 16, **data},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 8, "learning_rate": 1e-3,
                     "trackers": [], "progress_bar": False},
        "distillation": {"strategy": "single", "temperature": 2, "hard_label_weight": 0.5},
        **sections,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(capsys, config: Path, *extra: str) -> dict:
    code = main(["train", str(config), *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out[out.index("{"):])


def fails_cleanly(capsys, config: Path, kind: str, *needles: str) -> str:
    """Exit 2 with one ``{kind} error:`` line holding every needle and a fix; nothing in output_dir."""
    code = main(["train", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    line = next((x for x in err.splitlines() if x.startswith(f"{kind} error:")), None)
    assert line is not None and "Traceback" not in err, err
    for needle in needles:
        assert needle in line, (needle, line)
    assert "Fix:" in line
    assert not (config.parent / "out").exists()
    return line


@pytest.fixture
def teacher(tmp_path) -> Path:
    return save_model(tmp_path / "teacher")


def student_config(tmp_path: Path) -> BertConfig:
    return BertConfig.from_pretrained(tmp_path / "out" / "final")


# ---- what works ----------------------------------------------------------------------------------

def test_save_to_disk_folder_three_classes(tmp_path, capsys, teacher):
    """ClassLabel names (3 classes) from a save_to_disk DatasetDict; dev = its `validation` split by default."""
    features = class_features()
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(32, 1), features=features),
                        validation=datasets.Dataset.from_dict(rows(8, 2), features=features),
                        test=datasets.Dataset.from_dict(rows(8, 3), features=features))
    summary = train(capsys, write_config(tmp_path, {"path": str(data)}, teacher))
    assert summary["global_step"] == 3 and "accuracy" in summary["test"]
    config = student_config(tmp_path)
    assert config.num_labels == 3 and config.id2label == dict(enumerate(CLASSES))


def test_parquet_folder_text_pairs_labels_named_by_the_teacher(tmp_path, capsys, tmp_path_factory):
    """Text pairs in a folder of parquet files with integer labels: the names come from the teacher's id2label;
    sliced splits carve dev and test out of `validation`."""
    names = ["entailment", "neutral", "contradiction"]
    teacher = save_model(tmp_path / "teacher", names=names)
    (tmp_path / "pq").mkdir()
    datasets.Dataset.from_dict(rows(32, 1, pair=True)).to_parquet(str(tmp_path / "pq" / "train.parquet"))
    datasets.Dataset.from_dict(rows(16, 2, pair=True)).to_parquet(str(tmp_path / "pq" / "validation.parquet"))
    data = {"path": str(tmp_path / "pq"), "text_pair_column": "hypothesis",
            "splits": {"train": "train", "dev": "validation[:50%]", "test": "validation[50%:]"}}
    summary = train(capsys, write_config(tmp_path, data, teacher))
    assert summary["global_step"] == 3 and "accuracy" in summary["test"]
    assert student_config(tmp_path).id2label == dict(enumerate(names))


def test_single_csv_file_string_labels_in_the_teachers_order(tmp_path, capsys):
    """One CSV file (split `train`, sliced for dev); string labels, which sort as [negative, neutral, positive],
    take the teacher's order [positive, negative, neutral]: the ids follow the teacher's head."""
    order = ["positive", "negative", "neutral"]
    teacher = save_model(tmp_path / "teacher", names=order)
    columns = rows(40, 4)
    columns["label"] = [CLASSES[i] for i in columns["label"]]
    datasets.Dataset.from_dict(columns).to_csv(str(tmp_path / "all.csv"))
    data = {"path": str(tmp_path / "all.csv"), "splits": {"train": "train[:80%]", "dev": "train[80%:]"}}
    train(capsys, write_config(tmp_path, data, teacher))
    assert student_config(tmp_path).id2label == dict(enumerate(order))


def test_max_examples_cuts_every_split(tmp_path):
    from distill_toolkit.config import DataSpec
    from distill_toolkit.data import load_splits

    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(20, 1)),
                        dev=datasets.Dataset.from_dict(rows(10, 2)))
    splits = load_splits(DataSpec(name="hf", path=str(data), max_examples=4))
    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "dev": 4}


# ---- bad input -----------------------------------------------------------------------------------

@pytest.fixture
def disk_data(tmp_path) -> Path:
    features = class_features()
    return save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(16, 1), features=features),
                        validation=datasets.Dataset.from_dict(rows(8, 2), features=features))


def test_missing_split_lists_the_splits(tmp_path, capsys, teacher, disk_data):
    config = write_config(tmp_path, {"path": str(disk_data), "splits": {"dev": "valid"}}, teacher)
    fails_cleanly(capsys, config, "config", "data.splits.dev", "'valid'", "train, validation")


def test_missing_text_column_lists_the_columns(tmp_path, capsys, teacher, disk_data):
    config = write_config(tmp_path, {"path": str(disk_data), "text_column": "sentence"}, teacher)
    fails_cleanly(capsys, config, "config", "'sentence'", "'text'", "'label'")


def test_missing_label_column_lists_the_columns(tmp_path, capsys, teacher, disk_data):
    config = write_config(tmp_path, {"path": str(disk_data), "label_column": "sentiment"}, teacher)
    fails_cleanly(capsys, config, "config", "'sentiment'", "'text'", "data.label_column")


def test_labels_outside_the_label_set(tmp_path, capsys, teacher):
    bad = rows(8, 2)
    bad["label"][5] = 3  # the dev split holds plain ids; the train split's ClassLabel has 3 names
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(16, 1), features=class_features()),
                        validation=datasets.Dataset.from_dict(bad))
    fails_cleanly(capsys, write_config(tmp_path, {"path": str(data)}, teacher), "data",
                  "'dev'", "row 5", "label 3", "0..2")


def test_hidden_test_labels_are_refused_with_the_fix(tmp_path, capsys, teacher):
    hidden = rows(8, 3)
    hidden["label"] = [-1] * 8  # GLUE's test splits
    features = class_features()
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(16, 1), features=features),
                        test=datasets.Dataset.from_dict(hidden, features=features))
    fails_cleanly(capsys, write_config(tmp_path, {"path": str(data)}, teacher), "data",
                  "data.splits.test", "-1", "`test: null`")


def test_teacher_and_student_label_maps_differ(tmp_path, capsys, teacher):
    student = save_model(tmp_path / "student", names=list(reversed(CLASSES)), seed=1)
    data = save_to_disk(tmp_path / "sd", train=datasets.Dataset.from_dict(rows(16, 1)))  # integer labels only
    config = write_config(tmp_path, {"path": str(data)}, teacher, student={"path": str(student)})
    fails_cleanly(capsys, config, "config", "student.path", "differs from the teacher's", "positive", "negative")


def test_data_label_names_that_differ_from_the_teacher(tmp_path, capsys, disk_data):
    teacher = save_model(tmp_path / "teacher", names=["bad", "meh", "good"])
    fails_cleanly(capsys, write_config(tmp_path, {"path": str(disk_data)}, teacher), "config",
                  "teacher.path", "bad", "negative")


def test_unknown_hub_dataset_offline(tmp_path, capsys, teacher):
    """conftest sets HF_HUB_OFFLINE=1 before `datasets` is imported, so this is datasets' own offline mode."""
    config = write_config(tmp_path, {"path": "distill-toolkit-tests/no-such-dataset"}, teacher)
    fails_cleanly(capsys, config, "config", "data.path", "no-such-dataset", "HF_HUB_OFFLINE", "datasets cache")


@pytest.mark.parametrize("data, field", [
    ({}, "data.path"),
    ({"path": "x", "splits": {"training": "train"}}, "data.splits"),
    ({"path": "x", "splits": {"train": None}}, "data.splits.train"),
    ({"path": "x", "splits": {"dev": 3}}, "data.splits.dev"),
    ({"path": "x", "config": 3}, "data.config"),
])
def test_data_section_values_are_checked(tmp_path, capsys, teacher, data, field):
    fails_cleanly(capsys, write_config(tmp_path, data, teacher), "config", field)
