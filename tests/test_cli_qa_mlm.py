"""Extractive QA and masked LM from YAML through the one CLI route (distillation, export, metrics), the
answer-span mapping onto tokens, the seeded masking collator, and the data errors of bad QA input."""

import json
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from transformers import BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertTokenizerFast

from distill_toolkit import tasks
from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.cli import load_experiment, main, run_experiment
from distill_toolkit.config import DataSpec
from distill_toolkit.data.cache import TeacherCacheError
from distill_toolkit.data.loading import DataError
from distill_toolkit.data.mlm import MaskedLMCollator, tokenize_texts
from distill_toolkit.data.qa import char_span_to_tokens, tokenize_question_answering

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["who", "where", "did", "meet", "met", "in", "anna", "bob", "carl", "dora", "paris", "london", "rome",
         "the", "old", "city", "of", "at", "night"]
PEOPLE, PLACES = WORDS[6:10], WORDS[10:13]


def _tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(SPECIALS + WORDS + ["##s"]) + "\n")
    return BertTokenizerFast.from_pretrained(folder)


def _save_teacher(folder: Path, model_class) -> None:
    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    bert = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64)
    model_class(bert).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _qa_rows(n: int, seed: int, flat: bool = False) -> list[dict]:
    """ "anna met bob in paris": the answer is at the start (who met ...), middle, or end (where ...)."""
    g = torch.Generator().manual_seed(seed)

    def pick(pool):
        return pool[int(torch.randint(0, len(pool), (1,), generator=g))]

    rows = []
    for i in range(n):
        a, b, place = pick(PEOPLE), pick(PEOPLE), pick(PLACES)
        context = f"{a} met {b} in {place}"
        question, answer, start = [(f"who met {b}", a, 0), (f"who did {a} meet", b, len(a) + 5),
                                   (f"where did {a} meet {b}", place, len(context) - len(place))][i % 3]
        row = {"id": f"q{i}", "question": question, "context": context}
        row.update({"answer": answer, "start": start} if flat else
                   {"answers": {"text": [answer], "answer_start": [start]}})
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def _config(tmp_path: Path, data: dict, **sections) -> Path:
    base = {
        "data": {"max_length": 24, **data},
        "student": {"init_from": "teacher", "layers": [1]},
        "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 8, "learning_rate": 1e-3,
                     "trackers": [], "progress_bar": False},
        "distillation": {"strategy": "single", "temperature": 2, "hard_label_weight": 0.5,
                         "matches": [{"teacher_layer": 2, "student_layer": 1, "loss": "hidden_mse"}]},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _run(capsys, config: Path, *extra: str) -> tuple[int, dict, str]:
    code = main(["train", str(config), *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out[out.index("{"):]) if code == 0 else {}), err


def _qa_workspace(tmp_path: Path, train_rows=None) -> dict:
    """SQuAD-style QA files for train, dev and test."""
    return {"name": "files", "train_file": _write_jsonl(tmp_path / "train.jsonl", train_rows or _qa_rows(48, 1)),
            "dev_file": _write_jsonl(tmp_path / "dev.jsonl", _qa_rows(12, 2)),
            "test_file": _write_jsonl(tmp_path / "test.jsonl", _qa_rows(12, 3))}


# ---- CLI runs -----------------------------------------------------------------------------------

def test_question_answering_from_yaml(tmp_path, capsys):
    _save_teacher(tmp_path / "teacher", BertForQuestionAnswering)
    config = _config(tmp_path, _qa_workspace(tmp_path), teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "question_answering"})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert summary["global_step"] == 4
    for split in ("eval", "test"):
        assert {"exact_match", "start_accuracy", "end_accuracy"} <= set(summary[split])
        assert 0.0 <= summary[split]["exact_match"] <= 1.0
    student = BertForQuestionAnswering.from_pretrained(tmp_path / "out" / "final")
    assert student.config.num_hidden_layers == 1


def test_question_answering_flat_answer_columns_from_yaml(tmp_path):
    """Answer text and its offset in two plain columns, named in the config."""
    _save_teacher(tmp_path / "teacher", BertForQuestionAnswering)
    data = {"name": "files", "answer_column": "answer", "answer_start_column": "start",
            **{f"{s}_file": _write_jsonl(tmp_path / f"{s}.jsonl", _qa_rows(16, i, flat=True))
               for i, s in enumerate(("train", "dev"))}}
    config = _config(tmp_path, data, teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "question_answering", "hard_label_weight": 0.0},
                     training={"max_steps": 2})
    result = run_experiment(load_experiment(str(config)))  # the CLI's route, with the loss history
    assert "exact_match" in result["eval"] and (tmp_path / "out" / "final" / "config.json").is_file()
    assert all(row["train/kd"] > 0 and "train/hard_label" not in row for row in result["history"])


def _mlm_texts(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(torch.randint(4, 12, (1,),
                                                                                              generator=g)),),
                                                          generator=g)) for _ in range(n)]


def test_masked_lm_from_yaml(tmp_path, capsys):
    _save_teacher(tmp_path / "teacher", BertForMaskedLM)
    files = {}
    for i, split in enumerate(("train", "dev", "test")):
        (tmp_path / f"{split}.txt").write_text("\n".join(_mlm_texts(40 if split == "train" else 12, i)) + "\n")
        files[f"{split}_file"] = str(tmp_path / f"{split}.txt")
    config = _config(tmp_path, {"name": "text", "mlm_probability": 0.2, **files},
                     teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "masked_lm", "kd_loss": "forward_kl"})
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert summary["global_step"] == 4
    for split in ("eval", "test"):
        assert 0.0 <= summary[split]["accuracy"] <= 1.0 and summary[split]["masked_tokens"] >= 12
    assert BertForMaskedLM.from_pretrained(tmp_path / "out" / "final").config.num_hidden_layers == 1
    # the masks are a function of data.seed and the text: a second run evaluates exactly the same positions
    again = run_experiment(load_experiment(str(config), [f"training.output_dir={tmp_path / 'again'}"]))
    assert again["test"] == summary["test"] and again["eval"] == summary["eval"]
    assert all(row["train/kd"] > 0 and row["train/hard_label"] > 0 for row in again["history"])


def test_masked_lm_with_a_cached_teacher_from_yaml(tmp_path, capsys):
    """`cache-teacher` runs the teacher once over the masked training data; training then reads its outputs by
    example id: the masks, drawn from the text and data.seed, are the ones the cache was built on."""
    _save_teacher(tmp_path / "teacher", BertForMaskedLM)
    (tmp_path / "train.txt").write_text("\n".join(_mlm_texts(24, 0)) + "\n")
    config = _config(tmp_path, {"name": "text", "train_file": str(tmp_path / "train.txt")},
                     teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "masked_lm", "kd_loss": "forward_kl", "temperature": 1, "matches": []},
                     training={"teacher_cache": str(tmp_path / "cache"), "max_steps": 3})
    code = main(["cache-teacher", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["examples"] == 24
    code, summary, err = _run(capsys, config)
    assert code == 0, err
    assert summary["global_step"] == 3 and (tmp_path / "out" / "final" / "config.json").is_file()
    # another seed draws other masks: the cache (built on the old ones) is refused, not silently misused
    code = main(["train", str(config), "--set", "data.seed=1", "--set", f"training.output_dir={tmp_path / 'b'}"])
    err = capsys.readouterr().err
    assert code == 2 and "\nteacher cache error:" in "\n" + err and "collator's settings" in err
    with pytest.raises(TeacherCacheError, match="collator's settings"):  # --debug: the exception itself
        main(["train", str(config), "--set", "data.seed=1", "--set", f"training.output_dir={tmp_path / 'c'}",
              "--debug"])


def test_mlm_probability_out_of_range_is_a_config_error(tmp_path, capsys):
    (tmp_path / "train.txt").write_text("anna met bob\n")
    _save_teacher(tmp_path / "teacher", BertForMaskedLM)
    config = _config(tmp_path, {"name": "text", "train_file": str(tmp_path / "train.txt"), "mlm_probability": 1.5},
                     teacher={"path": str(tmp_path / "teacher")}, distillation={"task": "masked_lm"})
    code, _, err = _run(capsys, config)
    assert code == 2 and "data.mlm_probability" in err and "Fix:" in err


# ---- bad QA input -------------------------------------------------------------------------------

def test_answer_not_at_answer_start_is_a_data_error(tmp_path, capsys):
    rows = _qa_rows(12, 1)
    rows[5]["answers"]["answer_start"] = [1]
    _save_teacher(tmp_path / "teacher", BertForQuestionAnswering)
    config = _config(tmp_path, _qa_workspace(tmp_path, rows), teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "question_answering"})
    code, _, err = _run(capsys, config)
    assert code == 2 and "data error" in err
    assert "split 'train', row 5" in err and "answer_start 1" in err and "Fix:" in err


def test_missing_answer_column_is_a_data_error(tmp_path, capsys):
    rows = [{k: v for k, v in r.items() if k != "answers"} for r in _qa_rows(12, 1)]
    _save_teacher(tmp_path / "teacher", BertForQuestionAnswering)
    config = _config(tmp_path, _qa_workspace(tmp_path, rows), teacher={"path": str(tmp_path / "teacher")},
                     distillation={"task": "question_answering"})
    code, _, err = _run(capsys, config)
    assert code == 2 and "data error" in err
    assert "split 'train'" in err and "'answers'" in err and "data.answer_column" in err and "Fix:" in err


def _splits(rows: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})


def test_flat_answers_without_a_start_column_are_a_data_error(tmp_path):
    rows = [{"question": "who met bob", "context": "anna met bob", "answer": "anna"}]
    with pytest.raises(DataError, match="answer_start_column"):
        tokenize_question_answering(_splits(rows), _tokenizer(tmp_path), max_length=16, answer_column="answer")


def test_a_question_that_leaves_no_room_for_the_context_is_a_data_error(tmp_path):
    rows = [{"question": " ".join(["who"] * 20), "context": "anna met bob",
             "answers": {"text": ["anna"], "answer_start": [0]}}]
    with pytest.raises(DataError, match=r"split 'train', row 0: the question alone has 20 tokens.*max_length"):
        tokenize_question_answering(_splits(rows), _tokenizer(tmp_path), max_length=16)


# ---- the answer span on tokens ------------------------------------------------------------------

def _encode_one(tmp_path, question: str, context: str, answer: str, start: int, max_length: int = 24) -> dict:
    rows = [{"question": question, "context": context, "answers": {"text": [answer], "answer_start": [start]}}]
    return tokenize_question_answering(_splits(rows), _tokenizer(tmp_path), max_length=max_length)["train"][0]


def _answer_tokens(tmp_path, example: dict) -> str:
    ids = example["input_ids"][example["start_positions"]:example["end_positions"] + 1]
    return _tokenizer(tmp_path).decode(ids)


@pytest.mark.parametrize("answer, start", [("anna", 0), ("paris", 16), ("bob", 9), ("met bob", 5)])
def test_span_maps_onto_the_answer_tokens(tmp_path, answer, start):
    """At the start, the end or inside the context, one token or several: exactly the answer's tokens."""
    example = _encode_one(tmp_path, "who met whom", "anna met bob in paris", answer, start)
    assert example["start_positions"] > 0 and _answer_tokens(tmp_path, example) == answer


def test_span_of_word_pieces_covers_the_whole_word(tmp_path):
    """An answer the tokenizer splits into word pieces (london + ##s) spans all of them."""
    example = _encode_one(tmp_path, "where", "anna met bob in londons", "londons", 16)
    assert example["end_positions"] == example["start_positions"] + 1
    assert _answer_tokens(tmp_path, example) == "londons"


def test_answer_truncated_away_points_at_cls(tmp_path):
    context = "anna met bob in the old city of rome at night"
    # [CLS] who [SEP] + 6 context tokens + [SEP] = 10: "rome" (token 9 of the context) is cut off
    example = _encode_one(tmp_path, "where", context, "rome", context.index("rome"), max_length=10)
    assert len(example["input_ids"]) == 10
    assert (example["start_positions"], example["end_positions"]) == (0, 0)
    partly = _encode_one(tmp_path, "where", context, "old city of rome", context.index("old"), max_length=10)
    assert (partly["start_positions"], partly["end_positions"]) == (0, 0)  # half an answer is no answer
    kept = _encode_one(tmp_path, "who", context, "anna", 0, max_length=10)
    assert _answer_tokens(tmp_path, kept) == "anna"


def test_question_is_never_truncated_and_empty_answers_point_at_cls(tmp_path):
    rows = [{"question": "who met bob in the old city", "context": "anna met bob in the old city of rome",
             "answers": {"text": [], "answer_start": []}}]
    example = tokenize_question_answering(_splits(rows), _tokenizer(tmp_path), max_length=12)["train"][0]
    tokenizer = _tokenizer(tmp_path)
    assert tokenizer.decode(example["input_ids"]).startswith("[CLS] who met bob in the old city [SEP]")
    assert (example["start_positions"], example["end_positions"]) == (0, 0)
    assert set(example) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}


def test_char_span_to_tokens_directly():
    offsets = [(0, 0), (0, 3), (0, 0), (0, 4), (5, 8), (9, 11), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, None]
    assert char_span_to_tokens(offsets, sequence_ids, 0, 4) == (3, 3)
    assert char_span_to_tokens(offsets, sequence_ids, 5, 11) == (4, 5)
    assert char_span_to_tokens(offsets, sequence_ids, 9, 14) == (0, 0)  # ends beyond the kept context
    assert char_span_to_tokens(offsets, sequence_ids, 0, 0) == (0, 0)  # no answer


# ---- the masking collator -----------------------------------------------------------------------

def _mlm_examples(tmp_path, texts, max_length=512):
    tokenizer = _tokenizer(tmp_path)
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
    return tokenizer, tokenize_texts(splits, tokenizer, max_length=max_length)["train"]


def test_masking_rate_and_80_10_10_split_on_long_texts(tmp_path):
    texts = [" ".join(_mlm_texts(40, s)) for s in range(20)]  # 20 texts of ~300 tokens
    tokenizer, data = _mlm_examples(tmp_path, texts)
    collate = MaskedLMCollator(tokenizer, mlm_probability=0.15, seed=3)
    batch = collate([data[i] for i in range(len(data))])
    original = torch.nn.utils.rnn.pad_sequence([torch.tensor(data[i]["input_ids"]) for i in range(len(data))],
                                               batch_first=True, padding_value=tokenizer.pad_token_id)
    chosen = batch["labels"] != LABEL_PAD_ID
    eligible = (batch["attention_mask"] == 1) & ~torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    for row in range(len(data)):  # round(15%) of each example's tokens, so the rate is exact up to rounding
        assert abs(int(chosen[row].sum()) - 0.15 * int(eligible[row].sum())) <= 0.5 + 1e-9
    assert abs(chosen.sum() / eligible.sum() - 0.15) < 0.01
    got, was = batch["input_ids"][chosen], original[chosen]
    assert torch.equal(batch["labels"][chosen], was)
    n = len(got)
    assert n > 800
    masked = (got == tokenizer.mask_token_id).float().mean()
    random = ((got != tokenizer.mask_token_id) & (got != was)).float().mean()
    kept = (got == was).float().mean()
    assert abs(masked - 0.8) < 0.04 and abs(random - 0.1) < 0.03 and abs(kept - 0.1) < 0.03
    assert not torch.isin(got[got != tokenizer.mask_token_id], torch.tensor(tokenizer.all_special_ids)).any()


def test_masks_are_reproducible_and_depend_on_seed_and_content_only(tmp_path):
    tokenizer, data = _mlm_examples(tmp_path, _mlm_texts(16, 5))
    examples = [data[i] for i in range(len(data))]
    first = MaskedLMCollator(tokenizer, seed=7)(examples)
    torch.manual_seed(123)  # the global RNG plays no part
    again = MaskedLMCollator(tokenizer, seed=7)(examples)
    assert all(torch.equal(first[k], again[k]) for k in first)
    alone = MaskedLMCollator(tokenizer, seed=7)([examples[3]])  # another batch, another position in it
    width = alone["input_ids"].shape[1]
    assert torch.equal(alone["input_ids"][0], first["input_ids"][3, :width])
    assert torch.equal(alone["labels"][0], first["labels"][3, :width])
    other = MaskedLMCollator(tokenizer, seed=8)(examples)
    assert not torch.equal(other["labels"], first["labels"])
    spec = DataSpec(name="text", mlm_probability=0.15, seed=7)  # the task builds the same collator from the spec
    via_task = tasks.get("masked_lm").collator(tokenizer, spec)(examples)
    assert torch.equal(via_task["input_ids"], first["input_ids"])


def test_special_and_padding_tokens_are_never_masked(tmp_path):
    tokenizer, data = _mlm_examples(tmp_path, ["anna", "anna met bob in paris at night", "bob met [UNK] carl"])
    special = torch.tensor(tokenizer.all_special_ids)
    for seed in range(30):
        batch = MaskedLMCollator(tokenizer, mlm_probability=0.5, seed=seed)([data[i] for i in range(len(data))])
        labels, ids = batch["labels"], batch["input_ids"]
        original = torch.full_like(ids, tokenizer.pad_token_id)
        for row in range(len(data)):
            original[row, :len(data[row]["input_ids"])] = torch.tensor(data[row]["input_ids"])
        off = labels == LABEL_PAD_ID
        assert torch.equal(ids[off], original[off])  # untouched wherever there is no label
        assert not torch.isin(original[~off], special).any()  # [CLS] [SEP] [PAD] [UNK] are never chosen
        assert (batch["attention_mask"][~off] == 1).all()
        assert (labels[0] != LABEL_PAD_ID).sum() == 1  # a one-word text still gets its one masked token
