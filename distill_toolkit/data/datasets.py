"""Real datasets as :class:`datasets.DatasetDict` objects with fixed, seeded splits.

* :func:`load_sentiment`: binary sentiment from the VADER ground-truth corpora (movie
  review sentences, tweets, Amazon review snippets, NYT editorial snippets).
* :func:`load_twitter_ner`: Twitter named-entity recognition, BIO tags over 10 types.

Parsing (:func:`parse_vader_file`, :func:`parse_conll`) is separate from fetching
(:mod:`distill_toolkit.data.sources`), so both can be used on local files.

Splits: the examples, in file order, are permuted with
``numpy.random.default_rng(seed).permutation(n)`` (PCG64, whose stream numpy keeps
stable across versions and platforms). ``max_examples`` keeps the first
``max_examples`` indices of that permutation; the kept indices are then cut, in order,
into train/dev/test by the ``splits`` fractions (dev and test sizes rounded, train takes
the rest). Each split lists its examples in file order. The same file, seed, splits
and ``max_examples`` therefore give identical splits on every machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Sequence as SequenceFeature

from . import sources

__all__ = [
    "SENTIMENT_DOMAINS",
    "load_sentiment",
    "load_twitter_ner",
    "ner_label_names",
    "parse_conll",
    "parse_vader_file",
    "split_indices",
    "subsample",
]

#: Domain name -> ground-truth file inside ``hutto_ICWSM_2014/``.
SENTIMENT_DOMAINS = {
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
SENTIMENT_LABELS = ["negative", "positive"]
SPLIT_NAMES = ("train", "dev", "test")


def _read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 file (BOM tolerated), CRLF or LF, line ends removed.

    ``str.splitlines`` is avoided on purpose: it also breaks on characters such as
    U+2028 or U+001C that may occur inside a sentence.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not valid UTF-8 ({exc}); re-save it as UTF-8.") from exc
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def parse_vader_file(path: str | Path, drop_zero: bool = True) -> list[dict]:
    """Parse one VADER ``*_GroundTruth.txt`` file.

    Each non-blank line is ``id<TAB>mean_rating<TAB>text``; the rating is the mean of
    human sentiment ratings in [-4, 4].

    Args:
        path: the file.
        drop_zero: drop examples whose mean rating is exactly 0 (neither class).

    Returns:
        A list, in file order, of ``{"id": str, "text": str, "rating": float,
        "label": int}`` with ``label = 1`` (positive) if ``rating > 0`` else 0.

    Raises:
        ValueError: a line does not have the three fields or the rating is no number;
            the message names the file and line.
    """
    rows = []
    for lineno, line in enumerate(_read_lines(Path(path)), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected 'id<TAB>rating<TAB>text', "
                             f"got {line[:80]!r}")
        ex_id, rating_text, text = parts
        try:
            rating = float(rating_text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: rating {rating_text!r} is not a number") from None
        if not math.isfinite(rating):
            raise ValueError(f"{path}:{lineno}: rating {rating_text!r} is not finite")
        if drop_zero and rating == 0.0:
            continue
        rows.append({"id": ex_id.strip(), "text": text.strip(), "rating": rating,
                     "label": int(rating > 0)})
    return rows


def parse_conll(path: str | Path) -> list[dict]:
    """Parse a CoNLL-style file with one ``token<TAB>tag`` per line.

    Sentences are separated by blank lines or lines holding only whitespace (the
    Twitter NER file uses a lone tab). A line without a tab falls back to splitting
    on the last run of whitespace.

    Returns:
        A list of ``{"tokens": list[str], "ner_tags": list[str]}``, one per sentence,
        in file order.

    Raises:
        ValueError: a line has no tag; the message names the file and line.
    """
    sentences: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(_read_lines(Path(path)), start=1):
        if not line.strip():
            if tokens:
                sentences.append({"tokens": tokens, "ner_tags": tags})
                tokens, tags = [], []
            continue
        if "\t" in line:
            token, tag = line.rsplit("\t", 1)
        else:
            fields = line.rsplit(None, 1)
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
            token, tag = fields
        tag = tag.strip()
        if not token or not tag:
            raise ValueError(f"{path}:{lineno}: expected 'token<TAB>tag', got {line!r}")
        tokens.append(token)
        tags.append(tag)
    if tokens:
        sentences.append({"tokens": tokens, "ner_tags": tags})
    return sentences


def ner_label_names(tags: Sequence[str]) -> list[str]:
    """Label names for BIO tags: ``"O"`` first, then ``B-x``, ``I-x`` for each entity
    type ``x`` seen (sorted), both members of a pair even if only one occurs.

    Raises:
        ValueError: a tag is neither ``O`` nor ``B-``/``I-`` prefixed (e.g. BIOES).
    """
    types = set()
    for tag in set(tags):
        if tag == "O":
            continue
        if len(tag) > 2 and tag[:2] in ("B-", "I-"):
            types.add(tag[2:])
        else:
            raise ValueError(f"Tag {tag!r} is not BIO (expected 'O', 'B-<type>' or "
                             "'I-<type>'); convert the file to the BIO scheme first.")
    names = ["O"]
    for entity in sorted(types):
        names += [f"B-{entity}", f"I-{entity}"]
    return names


def _check_splits(splits: Sequence[float]) -> tuple[float, float, float]:
    if len(splits) != 3 or any(not isinstance(f, (int, float)) or f < 0 for f in splits):
        raise ValueError(f"splits must be three non-negative fractions (train, dev, test), "
                         f"got {splits!r}")
    if abs(sum(splits) - 1.0) > 1e-6:
        raise ValueError(f"splits must sum to 1, got {splits!r} (sum {sum(splits)})")
    return tuple(float(f) for f in splits)  # type: ignore[return-value]


def split_indices(n: int, seed: int = 0, splits: Sequence[float] = (0.8, 0.1, 0.1),
                  max_examples: int | None = None) -> dict[str, list[int]]:
    """Deterministic train/dev/test indices into ``n`` examples (see module docstring).

    Returns:
        ``{"train": [...], "dev": [...], "test": [...]}``, disjoint, each sorted.
    """
    train_f, dev_f, test_f = _check_splits(splits)
    if max_examples is not None and (not isinstance(max_examples, int) or max_examples < 1):
        raise ValueError(f"max_examples must be a positive int or None, got {max_examples!r}")
    order = np.random.default_rng(seed).permutation(n)
    if max_examples is not None:
        order = order[:max_examples]
    kept = len(order)
    n_dev = int(round(kept * dev_f))
    n_test = min(int(round(kept * test_f)), kept - n_dev)
    n_train = kept - n_dev - n_test
    bounds = {"train": (0, n_train), "dev": (n_train, n_train + n_dev),
              "test": (n_train + n_dev, kept)}
    return {name: sorted(order[a:b].tolist()) for name, (a, b) in bounds.items()}


def subsample(dataset, n: int | None, seed: int = 0):
    """A seeded random subset of ``n`` examples of ``dataset`` (all of it when ``n`` is None or larger),
    kept in its order.

    The splits list their examples in file order, and the corpora's files are often grouped (the
    VADER movie file holds its positive sentences first), so the *first* ``n`` would be a biased
    slice: this takes the first ``n`` of a ``numpy.random.default_rng(seed)`` permutation instead.
    """
    if n is None or n >= len(dataset):
        return dataset
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    return dataset.select(sorted(np.random.default_rng(seed).permutation(len(dataset))[:n].tolist()))


def _to_dataset_dict(rows: list[dict], features: Features, seed: int,
                     splits: Sequence[float], max_examples: int | None) -> DatasetDict:
    parts = split_indices(len(rows), seed=seed, splits=splits, max_examples=max_examples)
    out = {}
    for name in SPLIT_NAMES:
        chosen = [rows[i] for i in parts[name]]
        columns = {key: [row[key] for row in chosen] for key in features}
        out[name] = Dataset.from_dict(columns, features=features)
    return DatasetDict(out)


def load_sentiment(domain: str = "movies", seed: int = 0,
                   splits: Sequence[float] = (0.8, 0.1, 0.1),
                   max_examples: int | None = None,
                   data_dir: str | Path | None = None) -> DatasetDict:
    """Binary sentiment from the VADER ground-truth corpora (Hutto & Gilbert, 2014).

    Examples with a mean rating of exactly 0 are dropped; ``label`` is 1 (positive)
    when the rating is above 0, else 0 (negative).

    Args:
        domain: one of ``"movies"``, ``"tweets"``, ``"amazon"``, ``"nyt"``.
        seed: seed of the split permutation (see the module docstring).
        splits: fractions for train, dev and test; must sum to 1.
        max_examples: keep only this many examples, chosen deterministically from the
            seed before splitting (for quick runs).
        data_dir: folder holding the ``*_GroundTruth.txt`` files; by default they are
            fetched once into the cache (:func:`sources.vader_dir`).

    Returns:
        ``DatasetDict`` with ``train``, ``dev``, ``test``; columns ``text`` (str),
        ``label`` (ClassLabel ``["negative", "positive"]``), ``rating`` (float) and
        ``id`` (str, the id from the file).

    Raises:
        ValueError: unknown domain or bad ``splits``/``max_examples``.
        DataSourceError: the data could not be fetched.
    """
    if domain not in SENTIMENT_DOMAINS:
        raise ValueError(f"Unknown sentiment domain {domain!r}; choose one of "
                         f"{sorted(SENTIMENT_DOMAINS)}.")
    folder = Path(data_dir) if data_dir is not None else sources.vader_dir()
    rows = parse_vader_file(folder / SENTIMENT_DOMAINS[domain])
    features = Features({
        "text": Value("string"),
        "label": ClassLabel(names=SENTIMENT_LABELS),
        "rating": Value("float64"),
        "id": Value("string"),
    })
    return _to_dataset_dict(rows, features, seed, splits, max_examples)


def load_twitter_ner(seed: int = 0, splits: Sequence[float] = (0.8, 0.1, 0.1),
                     max_examples: int | None = None,
                     path: str | Path | None = None) -> DatasetDict:
    """Twitter named-entity recognition (BIO tags over 10 entity types).

    Args:
        seed, splits, max_examples: as in :func:`load_sentiment`, over sentences.
        path: a local CoNLL-style file; by default the Twitter NER file is fetched
            once into the cache (:func:`sources.twitter_ner_file`).

    Returns:
        ``DatasetDict`` with ``train``, ``dev``, ``test``; columns ``tokens``
        (list[str]), ``ner_tags`` (``Sequence(ClassLabel)``) and ``id`` (str, the
        sentence's position in the file). The label names, ``"O"`` first then
        ``B-``/``I-`` pairs by sorted entity type, are
        ``ds["train"].features["ner_tags"].feature.names``.
    """
    source = Path(path) if path is not None else sources.twitter_ner_file()
    sentences = parse_conll(source)
    if not sentences:
        raise ValueError(f"{source} holds no sentences; expected 'token<TAB>tag' lines.")
    names = ner_label_names([tag for s in sentences for tag in s["ner_tags"]])
    to_id = {name: i for i, name in enumerate(names)}
    rows = [{"tokens": s["tokens"], "ner_tags": [to_id[t] for t in s["ner_tags"]],
             "id": str(i)} for i, s in enumerate(sentences)]
    features = Features({
        "tokens": SequenceFeature(Value("string")),
        "ner_tags": SequenceFeature(ClassLabel(names=names)),
        "id": Value("string"),
    })
    return _to_dataset_dict(rows, features, seed, splits, max_examples)
