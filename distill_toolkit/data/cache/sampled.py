"""Sampled sparse logits in a teacher cache: exact top-k plus a sampled tail, stored ragged.

``training.teacher_cache_samples: N`` (``build_teacher_cache(..., samples=N)``) stores, per position, the
teacher's ``teacher_cache_top_k`` most likely tokens exactly (none when it is unset) and the distinct
tokens of ``N`` draws from the rest of its distribution at the cache temperature, each with the estimate
``p_hat = tail mass * count / N`` (:func:`~distill_toolkit.losses.sampled.sampled_from_dense`, Sparse Logit
Sampling, Anshumann et al. 2025). The forward-KL gradient it gives the student is an unbiased estimate of
the dense teacher's.

Stored tensors per head ``i`` (positions as the dense logits would be, e.g. shifted for a causal LM):

    sampled.i.counts     (positions,)  uint16   entries kept at each position (top_k + distinct draws)
    sampled.i.indices    (entries,)    uint16 (int32 for a vocabulary over 65,535)   token ids, back to back
    sampled.i.logprobs   (entries,)    teacher_cache_dtype                           log p_hat, back to back

so a position costs ``2 + entries * (2 + 2)`` bytes in fp16, and ``bytes_per_token`` is the exact mean
over the data. The draws of an example come from a generator seeded by ``(seed, example id)``: the cache
is the same whatever the batch size, the padding, the shards or the ranks. Read back, a head is a
:class:`~distill_toolkit.losses.logits.SparseTeacher` padded to the batch's widest position
(:mod:`~distill_toolkit.data.cache.ragged`) with an empty tail bucket; train it with ``forward_kl``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import torch

from distill_toolkit.data.cache.errors import TeacherCacheError
from distill_toolkit.data.cache.layout import compact, layouts_of, view_tensors
from distill_toolkit.data.cache.ragged import pack
from distill_toolkit.features import ModelView
from distill_toolkit.losses.logits import SparseTeacher, _log_softmax
from distill_toolkit.losses.sampled import SAMPLED_LOSSES, draw_uniforms, sample_rows

__all__ = ["MAX_ENTRIES", "SAMPLED_LOSSES", "SampledLogits", "sampled_names"]

#: the most entries a position may hold (``top_k + samples``): counts are stored as uint16
MAX_ENTRIES = 65535


def sampled_names(head: int) -> tuple[str, str, str]:
    """The stored names of sampled head ``head``: counts (first: it runs over positions), indices, logprobs."""
    return f"sampled.{head}.counts", f"sampled.{head}.indices", f"sampled.{head}.logprobs"


@dataclass(frozen=True)
class SampledLogits:
    """How a sampled cache draws: ``samples`` per position from the tail, ``top_k`` kept exactly, ``seed``."""

    samples: int
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        for name, value, low in (("teacher_cache_samples", self.samples, 1), ("teacher_cache_top_k", self.top_k, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"training.{name}: must be an integer >= {low} for a sampled cache, got {value!r}")
        if self.top_k + self.samples > MAX_ENTRIES:
            raise ValueError(f"training.teacher_cache_samples: top_k + samples is {self.top_k + self.samples}, over "
                             f"{MAX_ENTRIES} entries per position. Fix: draw fewer samples (tens suffice)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"training.seed: must be an integer (it seeds the cache's draws), got {self.seed!r}")

    def generator(self, example_id) -> torch.Generator:
        """The generator of ``example_id``'s draws: a function of the seed and the id alone."""
        digest = hashlib.sha256(f"{self.seed}\0{example_id!r}".encode()).hexdigest()
        return torch.Generator().manual_seed(int(digest[:15], 16))

    def example(self, logits: torch.Tensor, example_id, temperature: float) -> tuple[torch.Tensor, ...]:
        """``(counts, indices, logprobs)`` of one example's real positions ``(..., V)`` (ragged, packed)."""
        vocab = logits.shape[-1]
        log_p = _log_softmax(logits.reshape(-1, vocab).float(), float(temperature))
        uniforms = draw_uniforms(log_p.shape[0], self.samples, self.generator(example_id))
        rows = sample_rows(log_p, self.samples, min(self.top_k, vocab), uniforms)
        counts = rows.counts.reshape(logits.shape[:-1])
        return counts, pack(rows.indices, rows.counts), pack(rows.logprobs, rows.counts)

    def batch(self, view: ModelView, mask: Optional[torch.Tensor], ids: list, task: str,
              temperature: float) -> tuple[dict, dict]:
        """``({name: [per-example tensor, ...]}, {name: layout})`` of a teacher batch: features compacted as
        usual, every logits head sampled example by example (one example's logits copied at a time)."""
        if any(isinstance(lg, SparseTeacher) for lg in view.logits):
            raise TeacherCacheError("training.teacher_cache_samples draws from the teacher's whole distribution, "
                                    "but this teacher gives only its top-k log-probabilities (a served teacher). "
                                    "Fix: use teacher_cache_top_k alone with it, or an in-process teacher")
        named = view_tensors(view, None, 1.0)
        dense = layouts_of(named, mask, task)
        columns: dict = {}
        layouts: dict = {}
        for name, tensor in named.items():
            if not name.startswith("logits."):
                layouts[name] = dense[name]
                columns[name] = compact(tensor, dense[name], mask)
                continue
            counts, indices, logprobs = sampled_names(int(name.split(".")[1]))
            layouts.update({counts: dense[name], indices: {**dense[name], "ragged": counts},
                            logprobs: {**dense[name], "ragged": counts}})
            for row, eid in enumerate(ids):
                one = compact(tensor[row:row + 1], dense[name], None if mask is None else mask[row:row + 1])[0]
                for key, value in zip((counts, indices, logprobs), self.example(one, eid, temperature)):
                    columns.setdefault(key, []).append(value)
        return columns, _counts_first(layouts)


def _counts_first(layouts: Mapping) -> dict:
    """The layouts with every head's counts ahead of the rest (bytes per token count positions on them)."""
    first = {n: v for n, v in layouts.items() if n.endswith(".counts")}
    return {**first, **{n: v for n, v in layouts.items() if n not in first}}
