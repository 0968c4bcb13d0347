"""What every task with a label head shares: label names read from the data and checked, label ids."""

from __future__ import annotations

from typing import Optional, Sequence

from distill_toolkit.config import ConfigError, DataSpec
from distill_toolkit.data.loading import DataError
from distill_toolkit.models import LabelsFromValues
from distill_toolkit.tasks.base import Task


class LabeledTask(Task):
    """A task whose models end in a label head (classification, tagging)."""

    has_labels = True

    # ---- labels of the data --------------------------------------------------------------
    def label_names(self, splits, spec: DataSpec) -> list[str]:
        """Label names in id order: ``data.label_names``, a ``ClassLabel`` feature's names (the two must
        agree), else the values found (sorted names, which a model's saved order may reorder, or
        ``LABEL_i`` for ids ``0..max``, which a model's saved names may name)."""
        column = spec.label_column
        require_columns(splits, [column], "set data.label_column to the data's label column")
        feature = _inner_feature(splits["train"].features.get(column))
        names = list(getattr(feature, "names", None) or [])
        if spec.label_names and names and [str(n) for n in spec.label_names] != names:
            raise ConfigError("data.label_names", f"{spec.label_names} differ from the data's ClassLabel names {names}",
                              "remove data.label_names (they are read from the data) or make them equal")
        if spec.label_names or names:
            return [str(n) for n in (spec.label_names or names)]
        values = sorted({v for part in splits.values() for v in _flat(part[column])}, key=_sort_key)
        if values and all(isinstance(v, str) for v in values):
            return LabelsFromValues(str(v) for v in values)
        bad = [v for v in values if not (isinstance(v, int) and not isinstance(v, bool)) or v < 0]
        if bad:
            raise DataError(f"data.label_column {column!r}: labels must be class ids >= 0 or names, found "
                            f"{bad[:5]}. Fix: give integer ids 0..n-1, or label names")
        return [f"LABEL_{i}" for i in range(int(max(values)) + 1 if values else 0)]

    def check_label_ids(self, splits, column: str, count: int) -> None:
        """Every integer label of every split lies in ``0 .. count - 1`` (``-100`` excepted)."""
        for split, part in splits.items():
            for row, value in enumerate(part[column]):
                for v in _flat([value]):
                    if isinstance(v, int) and v != -100 and not 0 <= v < count:
                        raise DataError(f"data: split {split!r}, row {row}: label {v} is outside the label set "
                                        f"0..{count - 1}. Fix: correct the label, or name the labels")


def _inner_feature(feature):
    """The ``ClassLabel`` inside a ``Sequence`` feature (token tags), or the feature itself."""
    return getattr(feature, "feature", feature)


def _flat(values) -> list:
    out = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, (list, tuple)) else [v])
    return out


def _sort_key(value):
    return (isinstance(value, str), value)


def labels_to_ids(splits, column: str, names: Sequence[str]):
    """Replace label names by their ids (a no-op for integer labels)."""
    first = _flat(splits["train"][column][:1])
    if not first or not isinstance(first[0], str):
        return splits
    # Written to a new column, then renamed: a map that returns a column under its own name keeps its
    # feature type where it can (a CSV's `large_string` labels would stay strings: '0', '1', ...).
    ids = splits.map(_to_ids, fn_kwargs={"column": column, "index": {n: i for i, n in enumerate(names)}},
                     remove_columns=[column], desc="Label ids")
    return ids.rename_column(_IDS, column)


_IDS = "__distill_toolkit_label_ids__"


def _to_ids(example: dict, column: str, index: dict) -> dict:
    def convert(value):
        if isinstance(value, list):
            return [convert(v) for v in value]
        if value not in index:
            raise DataError(f"data.label_column {column!r}: label {value!r} is not one of the label names "
                            f"{list(index)}. Fix: correct the label, or add it to data.label_names")
        return index[value]

    return {_IDS: convert(example[column])}


def require_columns(splits, columns: Sequence[str], fix: str) -> None:
    """Every split has ``columns`` and at least one row; else a :class:`ConfigError` naming them."""
    for split, part in splits.items():
        missing = [c for c in columns if c and c not in part.column_names]
        if missing:
            raise ConfigError(f"data.{split}", f"column(s) {missing} missing (found {part.column_names})", fix)
        if len(part) == 0:
            raise DataError(f"data: split {split!r} is empty. Fix: give it at least one example")
