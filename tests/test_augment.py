"""Augmented transfer sets (Tang et al., 2019): masking, word replacement and n-gram sampling, seeded;
their rates on long text; augmented rows labelled by the teacher only (labels -100); the config checks;
and a CLI run with augmentation, through the teacher cache."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from distill_toolkit import tasks
from distill_toolkit.cli import main
from distill_toolkit.config import ConfigError, DataSpec, ExperimentConfig
from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.data import open_teacher_cache
from distill_toolkit.data.augment import (WordAugmenter, augment_split, embedding_neighbours, encode_augmented,
                                          training_vocabulary)
from distill_toolkit.data.loading import DataError

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "okay", "fine", "so", "movie", "plot", "the", "a"]


def _tokenizer(folder: Path) -> BertTokenizerFast:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast.from_pretrained(folder)


def _augmenter(vocabulary=WORDS, **spec) -> tuple[AugmentSpec, WordAugmenter]:
    aug = AugmentSpec(**spec)
    aug.validate()
    return aug, WordAugmenter(aug, vocabulary, "[MASK]")


def test_same_seed_same_copies_other_seed_other_copies():
    part = Dataset.from_dict({"text": [" ".join(WORDS) for _ in range(3)], "label": [0, 1, 0]})
    aug, augmenter = _augmenter(factor=3, p_mask=0.3, p_replace=0.3, p_ngram=0.5, seed=7)
    first = augment_split(part, aug, ["text"], augmenter)
    assert first["text"] == augment_split(part, aug, ["text"], augmenter)["text"]
    assert len(first) == 3 * (1 + 3) and first["text"][:3] == part["text"]
    assert first["label"] == [0, 1, 0] + [0] * 3 + [1] * 3 + [0] * 3  # copy c of row r at N + r * factor + c - 1
    other, other_augmenter = _augmenter(factor=3, p_mask=0.3, p_replace=0.3, p_ngram=0.5, seed=8)
    assert augment_split(part, other, ["text"], other_augmenter)["text"] != first["text"]
    # a copy depends on (seed, row, copy) only: the same text at another row gets other draws
    rng = lambda r, c: np.random.default_rng([7, r, c])  # noqa: E731
    assert first["text"][3] == augmenter.augment(part["text"][0], rng(0, 1))
    assert first["text"][3] != augmenter.augment(part["text"][0], rng(1, 1))


def test_rates_on_long_text_are_within_tolerance():
    g = np.random.default_rng(0)
    vocabulary = [f"w{i}" for i in range(500)]
    text = " ".join(vocabulary[i] for i in g.integers(0, 500, 50_000))
    words = text.split()
    aug, augmenter = _augmenter(vocabulary, p_mask=0.1, p_replace=0.15, p_ngram=0.0)
    out = augmenter.augment(text, np.random.default_rng([0, 0, 1])).split()
    assert len(out) == len(words)
    masked = sum(o == "[MASK]" for o in out) / len(words)
    replaced = sum(o != w and o != "[MASK]" for o, w in zip(out, words)) / len(words)
    assert abs(masked - 0.1) < 0.006 and abs(replaced - 0.15) < 0.006  # 4+ standard deviations
    assert all(o in vocabulary for o in out if o != "[MASK]")

    sentence = " ".join(vocabulary[:20])
    aug, augmenter = _augmenter(vocabulary, p_mask=0.0, p_replace=0.0, p_ngram=0.25, max_ngram=5)
    lengths = [len(augmenter.augment(sentence, np.random.default_rng([0, r, 1])).split()) for r in range(4000)]
    cut = [n for n in lengths if n < 20]
    assert abs(len(cut) / 4000 - 0.25) < 0.03
    assert set(cut) == {1, 2, 3, 4, 5} and min(cut.count(n) for n in range(1, 6)) > 0.15 * len(cut)
    kept = augmenter.augment(sentence, np.random.default_rng([0, 0, 1]))
    assert kept in sentence  # an n-gram is contiguous


def test_replacement_is_another_word_and_nothing_changes_at_zero_rates():
    aug, augmenter = _augmenter(["a", "b"], p_mask=0.0, p_replace=1.0, p_ngram=0.0)
    assert augmenter.augment("a b a b", np.random.default_rng(0)) == "b a b a"
    aug, augmenter = _augmenter(p_mask=0.0, p_replace=0.0, p_ngram=0.0)
    assert augmenter.augment("good  movie", np.random.default_rng(0)) == "good movie"
    with pytest.raises(DataError, match="no mask token"):
        WordAugmenter(AugmentSpec(p_mask=0.1), WORDS, None)


def test_nearest_neighbours_in_the_input_embedding_space(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok")
    embeddings = torch.zeros(len(tokenizer), 3)
    vectors = {"good": [1, 0, 0], "great": [0.9, 0.1, 0], "bad": [0, 1, 0], "awful": [0.1, 0.9, 0],
               "movie": [0, 0, 1]}
    for word, vector in vectors.items():
        embeddings[tokenizer.convert_tokens_to_ids(word)] = torch.tensor(vector)
    words = training_vocabulary(["good bad movie", "great awful"])
    assert words == ["awful", "bad", "good", "great", "movie"]
    neighbours = embedding_neighbours(words, tokenizer, embeddings)
    assert neighbours["good"] == "great" and neighbours["great"] == "good"
    assert neighbours["bad"] == "awful" and neighbours["awful"] == "bad"
    aug = AugmentSpec(p_mask=0.0, p_replace=1.0, p_ngram=0.0, replace_with="embedding")
    swapped = WordAugmenter(aug, words, "[MASK]", neighbours).augment("good bad", np.random.default_rng(0))
    assert swapped == "great awful"
    with pytest.raises(DataError, match="beyond the teacher's 4 input embeddings"):
        embedding_neighbours(words, tokenizer, embeddings[:4])


def _splits() -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    rows = {"text": ["good great movie", "bad awful plot", "fine okay", "dull so"], "label": [1, 0, 1, 0]}
    return DatasetDict({"train": Dataset.from_dict(rows, features=features),
                        "dev": Dataset.from_dict(rows, features=features)})


def test_augmented_rows_are_labelled_by_the_teacher_only(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok")
    spec = DataSpec(name="files", max_length=16, augment={"factor": 2, "p_mask": 0.5, "p_replace": 0.2, "seed": 3})
    task = tasks.get("sequence_classification")
    encoded = encode_augmented(_splits(), spec, lambda s: task.encode(s, tokenizer, spec, ["negative", "positive"]),
                               tokenizer=tokenizer)
    assert len(encoded["train"]) == 12 and len(encoded["dev"]) == 4  # dev is never augmented
    assert encoded["train"]["labels"] == [1, 0, 1, 0] + [-100] * 8
    assert any(tokenizer.mask_token_id in ids for ids in encoded["train"]["input_ids"][4:])
    multi = tasks.get("multilabel_classification")
    rows = Dataset.from_dict({"text": ["good movie", "bad plot"], "targets": [[1, 0], [0, 1]]})
    spec = DataSpec(name="files", label_column="targets", augment={"factor": 1})
    encoded = encode_augmented(DatasetDict({"train": rows}), spec,
                               lambda s: multi.encode(s, tokenizer, spec, ["a", "b"]), tokenizer=tokenizer)
    assert encoded["train"]["labels"] == [[1.0, 0.0], [0.0, 1.0], [-100.0, -100.0], [-100.0, -100.0]]


def test_augmenting_word_lists_is_refused(tmp_path):
    tokenizer = _tokenizer(tmp_path / "tok")
    spec = DataSpec(name="files", text_column="words", label_column="tags", augment={"factor": 1})
    rows = DatasetDict({"train": Dataset.from_dict({"words": [["good", "movie"]], "tags": [[0, 0]]})})
    with pytest.raises(DataError, match="works on texts.*token classification"):
        encode_augmented(rows, spec, lambda s: s, tokenizer=tokenizer)


def test_config_checks():
    for augment, message in (({"factor": 0}, "augment.factor"), ({"p_mask": 0.7, "p_replace": 0.5}, "above 1"),
                             ({"p_ngram": 2}, "augment.p_ngram"), ({"replace_with": "pos"}, "replace_with"),
                             ({"factors": 2}, "did you mean `factor`"), ({"factor": 2.0}, "augment.factor")):
        with pytest.raises(ConfigError, match=message):
            DataSpec(augment=augment).validate()
    config = ExperimentConfig.from_dict({"teacher": {"path": "t"}, "student": {"init_from": "teacher"},
                                         "data": {"augment": {"factor": 2}},
                                         "distillation": {"hard_label_weight": 0.5}})
    with pytest.raises(ConfigError, match="data.augment: augmented examples have no gold label"):
        config.validate()


def _workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    tokenizer = _tokenizer(folder)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                                             num_labels=2)).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("dev", 8)):
        rows = []
        for _ in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            pool = WORDS[:3] if label else WORDS[3:6]
            rows.append({"text": " ".join(pool[int(i)] for i in torch.randint(0, 3, (4,), generator=g)),
                         "label": label})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


@pytest.mark.parametrize("replace_with", ["vocabulary", "embedding"])
def test_cli_run_with_augmentation_through_the_teacher_cache(tmp_path, capsys, replace_with):
    teacher = _workspace(tmp_path)
    config = {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [1]},
              "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                       "dev_file": str(tmp_path / "dev.jsonl"), "max_length": 12,
                       "augment": {"factor": 3, "p_mask": 0.2, "p_replace": 0.2, "p_ngram": 0.3,
                                   "replace_with": replace_with, "seed": 1}},
              "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 8,
                           "learning_rate": 1e-3, "trackers": [], "progress_bar": False,
                           "teacher_cache": str(tmp_path / "cache")},
              "distillation": {"temperature": 2, "matches": [{"teacher_layer": 2, "student_layer": 1}]}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    code = main(["cache-teacher", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["examples"] == 16 * 4  # every copy has its own id
    cache = open_teacher_cache(tmp_path / "cache")
    assert len(cache) == 64
    code = main(["train", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["global_step"] == 4
    assert main(["cache-teacher", str(path)]) == 0  # the same augmented texts again: the cache is reused
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["shards_written"] == 0
