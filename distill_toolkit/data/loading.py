"""The splits a run reads, named by a :class:`~distill_toolkit.config.DataSpec`.

- ``sentiment``: the VADER corpora (``domain``), fetched once; ``text`` and ``label`` columns.
- ``twitter_ner``: Twitter NER (BIO tags), fetched once; ``tokens`` and ``ner_tags`` columns.
- ``files``: your JSON-lines / JSON / CSV files (``train_file``, ``dev_file``, ``test_file``).
- ``text``: text for causal LMs: ``.txt`` (one example per line), JSON-lines or CSV.
- ``hf``: anything ``datasets`` reads: a Hub ID, a dataset folder, a data file, a ``save_to_disk``
  folder (:mod:`distill_toolkit.data.hf`).
- ``shakespeare`` / ``vader_sentences``: unlabelled English text, fetched once (:mod:`.unlabelled`).
"""

from __future__ import annotations

from pathlib import Path

import datasets

from distill_toolkit.config import ConfigError, DataSpec
from distill_toolkit.data.datasets import load_sentiment, load_twitter_ner, subsample
from distill_toolkit.data.unlabelled import UNLABELLED_SOURCES, load_unlabelled
from distill_toolkit.data.errors import DataError
from distill_toolkit.data.hf import load_hf_splits

__all__ = ["DataError", "check_text_file", "load_splits"]


def load_splits(spec: DataSpec) -> datasets.DatasetDict:
    """``train`` plus any of ``dev`` / ``test``, raw (untokenized), with the spec's subsampling applied."""
    if spec.name == "sentiment":
        splits = load_sentiment(spec.domain, seed=spec.seed, max_examples=spec.max_examples)
    elif spec.name == "twitter_ner":
        splits = load_twitter_ner(seed=spec.seed, max_examples=spec.max_examples)
    elif spec.name == "hf":
        splits = load_hf_splits(spec)
    elif spec.name in UNLABELLED_SOURCES:
        splits = load_unlabelled(spec.name, seed=spec.seed, max_examples=spec.max_examples)
    else:
        splits = datasets.DatasetDict({split: _read_file(path, spec, split) for split, path in _files(spec)})
    if spec.max_train_examples:
        splits["train"] = subsample(splits["train"], spec.max_train_examples, seed=spec.seed)
    return splits


def _files(spec: DataSpec) -> list[tuple[str, str]]:
    return [(split, path) for split, path in (("train", spec.train_file), ("dev", spec.dev_file),
                                              ("test", spec.test_file)) if path]


def _read_file(path: str, spec: DataSpec, split: str) -> datasets.Dataset:
    """One split from a file: ``.txt`` lines (text data), else JSON(-lines) or CSV through ``datasets``."""
    text = check_text_file(path, spec.encoding, f"data.{split}_file")
    if not text.strip():
        raise DataError(f"data.{split}_file: {path} is empty. Fix: give it at least one example")
    if path.endswith(".txt"):
        part = datasets.Dataset.from_dict({spec.text_column: [line for line in text.splitlines() if line.strip()]})
    else:
        kind = "csv" if path.endswith(".csv") else "json"
        try:
            part = datasets.load_dataset(kind, data_files={split: path}, encoding=spec.encoding)[split]
        except Exception as err:  # the JSON/CSV readers raise many types; the file is what the user fixes
            raise DataError(f"data.{split}_file: cannot read {path} as {kind.upper()} ({type(err).__name__}: "
                            f"{str(err)[:300]}). Fix: one JSON object per line (.jsonl), or a CSV with a header row")\
                from err
    if len(part) == 0:
        raise DataError(f"data.{split}_file: {path} holds no examples. Fix: give it at least one example")
    return part


def check_text_file(path: str, encoding: str, where: str) -> str:
    """The text of ``path`` decoded with ``encoding``; bytes that do not decode raise a :class:`DataError`
    naming the file, the line and the byte offset."""
    raw = Path(path).read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise DataError(f"{where}: {path} is not valid {encoding}: byte {raw[err.start]:#04x} at byte offset "
                        f"{err.start} (line {line}). Fix: save the file as {encoding}, or set data.encoding to "
                        "its encoding (e.g. `encoding: latin-1`)") from err
    except LookupError as err:
        raise ConfigError("data.encoding", f"unknown encoding {encoding!r}", "use e.g. utf-8 or latin-1") from err
