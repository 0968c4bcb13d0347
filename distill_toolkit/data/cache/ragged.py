"""Ragged rows on disk: a sampled head stores, per position, a variable number of entries.

A sampled sparse head (:mod:`distill_toolkit.data.cache.sampled`) keeps ``counts[r]`` entries at
position ``r``; on disk they are stored back to back (``pack``), with no padding, so the bytes per token
are the entries actually kept. On the way out they are padded again (``unpack``) to the widest row of the
batch: a padded entry has log-probability at the floor (probability 0) and the index of its row's first
entry, which adds exactly 0 to the forward KL and its gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from distill_toolkit.losses.logits import _neg_floor

__all__ = ["FLOOR", "pack", "unpack", "width"]

#: the log-probability of a padded entry (probability exactly 0 once exponentiated)
FLOOR = _neg_floor(torch.float32)


def _keep(counts: Tensor, columns: int) -> Tensor:
    return torch.arange(columns, device=counts.device).unsqueeze(0) < counts.reshape(-1, 1)


def pack(padded: Tensor, counts: Tensor) -> Tensor:
    """The first ``counts[r]`` entries of each row of ``padded`` (``(..., W)``), back to back, as ``(M,)``."""
    rows = padded.reshape(-1, padded.shape[-1])
    return rows[_keep(counts, rows.shape[-1])]


def width(counts: Tensor) -> int:
    """The widest row of ``counts`` (at least 1)."""
    return max(1, int(counts.max())) if counts.numel() else 1


def unpack(flat: Tensor, counts: Tensor, columns: int, indices: bool) -> Tensor:
    """``(*counts.shape, columns)`` from the packed entries: padded with the floor (log-probabilities) or with
    the row's first index (``indices=True``)."""
    rows = counts.numel()
    keep = _keep(counts, columns)
    if int(keep.sum()) != flat.numel():
        raise ValueError(f"ragged entries: counts add up to {int(keep.sum())} entries but {flat.numel()} are stored")
    fill = 0 if indices else FLOOR
    out = torch.full((rows, columns), fill, dtype=flat.dtype, device=flat.device)
    out[keep] = flat
    if indices and rows:
        out = torch.where(keep, out, out[:, :1])
    return out.reshape(*counts.shape, columns)
