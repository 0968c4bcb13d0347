"""Teacher outputs kept in memory: the first epoch computes them, later epochs reuse them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
from accelerate.utils import send_to_device

from distill_toolkit.data.cache.ids import batch_ids
from distill_toolkit.data.cache.layout import (
    assemble_payload,
    compact,
    layouts_of,
    sequence_mask,
    view_from_payload,
    view_tensors,
)
from distill_toolkit.features import ModelView
from distill_toolkit.losses.logits import SparseTeacher

__all__ = ["InMemoryTeacherCache"]


class InMemoryTeacherCache:
    """TextBrewer's ``is_caching_logits``: the first epoch computes, later epochs reuse (per example id).

    Lives in the memory of each process (CPU tensors, real positions only); counts ``hits`` and ``misses``.
    """

    def __init__(self, task: str = "auto"):
        self.task = task
        self.records: dict = {}
        self.layouts: Optional[dict] = None
        self.hits = self.misses = 0

    def lookup(self, batch: Mapping) -> Optional[ModelView]:
        """The teacher's view of ``batch`` when every one of its examples was stored; else None (a miss)."""
        ids = batch_ids(batch)
        if self.layouts is None or any(i not in self.records for i in ids):
            self.misses += 1
            return None
        self.hits += 1
        mask = sequence_mask(batch)
        payload = assemble_payload([self.records[i] for i in ids], self.layouts, None if mask is None else mask.cpu(),
                                   ids)
        device = mask.device if mask is not None else torch.device("cpu")
        return view_from_payload(send_to_device(payload, device), batch)

    def store(self, batch: Mapping, view: ModelView) -> None:
        """Keep the real positions of ``view`` per example of ``batch`` (a top-k view is not kept)."""
        if any(isinstance(x, SparseTeacher) for x in view.logits):
            return
        ids = batch_ids(batch)
        mask = sequence_mask(batch)
        named = view_tensors(view, None, 1.0)
        if self.layouts is None:
            self.layouts = layouts_of(named, mask, self.task)
        per_name = {name: compact(t, self.layouts[name], mask) for name, t in named.items()}
        for row, eid in enumerate(ids):
            self.records[eid] = {name: values[row] for name, values in per_name.items()}
