"""Example ids: a teacher cache is keyed by each example's ``id`` field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distill_toolkit.batch import ID
from distill_toolkit.data.cache.errors import TeacherCacheError

__all__ = ["as_id", "batch_ids", "example_ids", "to_python", "with_ids"]


class _WithIds(Dataset):
    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(f"with_ids: examples must be dicts, got {type(item).__name__}")
        return item if self.column in item else {**item, self.column: index}


def with_ids(dataset, column: str = ID):
    """``dataset`` with an ``id`` per example (its row index) unless it already has one.

    A Hugging Face ``Dataset`` gets a column; any other map-style data set is wrapped.
    """
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list) and hasattr(dataset, "add_column"):
        return dataset if column in names else dataset.add_column(column, list(range(len(dataset))))
    return _WithIds(dataset, column)


def to_python(value: Any) -> Any:
    """``value`` as plain Python (lists and scalars) when it is a tensor or a numpy value; else as it is."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def as_id(value: Any):
    """``value`` as an example id (an int or a string); anything else is a :class:`TeacherCacheError`."""
    value = to_python(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TeacherCacheError(f"example ids must be ints or strings, got {value!r}")
    return value


def example_ids(examples: Sequence[Mapping], key: str = ID) -> list:
    """The ``id`` of every example of a batch (before collation)."""
    ids = []
    for example in examples:
        if not isinstance(example, Mapping) or key not in example:
            found = list(example) if isinstance(example, Mapping) else type(example).__name__
            raise TeacherCacheError(
                f"a teacher cache is read by example id, but an example has no {key!r} field (fields: {found}). "
                "Fix: give every example a unique id, e.g. data = with_ids(data) "
                "(from distill_toolkit.data.cache)")
        ids.append(as_id(example[key]))
    return ids


def batch_ids(batch: Mapping, key: str = ID) -> list:
    """The ``id`` of every example of a collated batch."""
    if key not in batch:
        raise TeacherCacheError(
            f"training.teacher_cache_in_memory keys the teacher's outputs by example id, but the batch has no "
            f"{key!r} (keys: {sorted(batch)}). Fix: give every example a unique id, e.g. data = with_ids(data)")
    ids = batch[key]
    return [as_id(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
