"""Bad data and bad config files end in one line naming the file and the fix, exit code 2, no traceback,
before any model is built or anything is written to output_dir; ``--debug`` shows the traceback."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill_toolkit.cli import main

WORDS = ["good", "great", "bad", "awful", "movie", "the"]


@pytest.fixture
def teacher(tmp_path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _good_rows(n: int = 8) -> list:
    return [{"text": "good movie" if i % 2 else "bad movie", "label": i % 2} for i in range(n)]


def _config(tmp_path: Path, teacher: Path, train: Path, **data) -> Path:
    dev = _jsonl(tmp_path / "dev.jsonl", _good_rows(4))
    config = {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [0]},
              "data": {"name": "files", "train_file": str(train), "dev_file": str(dev), "max_length": 8, **data},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 1, "batch_size": 4, "trackers": [],
                           "progress_bar": False}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _fails_cleanly(capsys, config: Path, kind: str, *needles: str) -> str:
    code = main(["train", str(config)])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith(f"{kind} error:")]
    assert lines and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Fix:" in lines[0]
    assert not (config.parent / "out").exists()  # nothing written: refused before training
    return lines[0]


def test_empty_data_file(tmp_path, capsys, teacher):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    _fails_cleanly(capsys, _config(tmp_path, teacher, train), "data", "data.train_file", str(train), "empty")


def test_non_utf8_bytes_name_file_line_and_offset(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows())
    raw = train.read_bytes()
    second_line = raw.index(b"\n") + 1
    train.write_bytes(raw[:second_line + 10] + b"\xff" + raw[second_line + 10:])
    line = _fails_cleanly(capsys, _config(tmp_path, teacher, train), "data", str(train),
                          f"byte offset {second_line + 10}", "line 2", "encoding")
    assert "0xff" in line


def test_latin1_file_reads_with_the_encoding_option(tmp_path, capsys, teacher):
    train = tmp_path / "train.jsonl"
    rows = [{"text": "caf\u00e9 good movie" if i % 2 else "bad movie", "label": i % 2} for i in range(8)]
    train.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    assert main(["train", str(_config(tmp_path, teacher, train, encoding="latin-1"))]) == 0, capsys.readouterr().err


def test_labels_outside_the_label_set(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows() + [{"text": "good", "label": 5}])
    _fails_cleanly(capsys, _config(tmp_path, teacher, train, label_names=["negative", "positive"]),
                   "data", "label 5", "outside the label set")


def test_negative_labels(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows() + [{"text": "good", "label": -1}])
    _fails_cleanly(capsys, _config(tmp_path, teacher, train), "data", "data.label_column", "-1")


def test_rows_with_missing_text(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows() + [{"text": None, "label": 1}])
    _fails_cleanly(capsys, _config(tmp_path, teacher, train), "data", "row 8", "'text'", "no text")


def test_missing_column_lists_the_columns(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows())
    _fails_cleanly(capsys, _config(tmp_path, teacher, train, text_column="sentence"), "config",
                   "'sentence'", "'text'")


def test_missing_teacher_folder(tmp_path, capsys, teacher):
    train = _jsonl(tmp_path / "train.jsonl", _good_rows())
    config = _config(tmp_path, tmp_path / "no_such_teacher", train)
    _fails_cleanly(capsys, config, "config", "teacher.path", "no_such_teacher")


@pytest.mark.parametrize("text, needle", [
    ("training: [unclosed\n", "cannot parse"),
    ("training: !!python/object/apply:os.system ['touch pwned']\n", "unsafe or unknown YAML tag"),
])
def test_bad_yaml_files(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"config error: {path}") and needle in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match="config file not found"):
        main(["train", str(tmp_path / "nope.yaml"), "--debug"])
