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
over the data. ``teacher_cache_sampler: threshold`` keeps ``top_k + N`` distinct entries per position
(:func:`~distill_toolkit.losses.sampled.threshold_rows`): the first ``exact`` of them exactly, the drawn
rest all at the one value ``tau``; so only the exact ones store a log-probability:

    sampled.i.exact      (positions,)  uint16               entries kept exactly at each position
    sampled.i.threshold  (positions,)  teacher_cache_dtype  log tau (the floor where nothing is drawn)
    sampled.i.logprobs   (exact entries,)                   their log p, back to back

and a position costs ``6 + entries * 2 + exact * 2`` bytes in fp16. The draws of an example come from a
generator seeded by ``(seed, example id)``: the cache is the same whatever the batch size, the padding,
the shards or the ranks. Read back, a head is a
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
from distill_toolkit.data.cache.ragged import FLOOR, pack
from distill_toolkit.features import ModelView
from distill_toolkit.losses.logits import SparseTeacher, _log_softmax
from distill_toolkit.losses.sampled import SAMPLED_LOSSES, SAMPLERS, draw_rows

__all__ = ["MAX_ENTRIES", "SAMPLED_LOSSES", "SampledLogits", "sampled_names", "threshold_names"]

#: the most entries a position may hold (``top_k + samples``): counts are stored as uint16
MAX_ENTRIES = 65535


def sampled_names(head: int) -> tuple[str, str, str]:
    """The stored names of sampled head ``head``: counts (first: it runs over positions), indices, logprobs."""
    return f"sampled.{head}.counts", f"sampled.{head}.indices", f"sampled.{head}.logprobs"


def threshold_names(head: int) -> tuple[str, str]:
    """The extra names of a threshold-sampled head ``head``: exact entries and log tau, per position."""
    return f"sampled.{head}.exact", f"sampled.{head}.threshold"


@dataclass(frozen=True)
class SampledLogits:
    """How a sampled cache draws: ``samples`` per position from the tail, ``top_k`` kept exactly, ``seed``, and
    the ``sampler`` that chooses the entries (:data:`~distill_toolkit.losses.sampled.SAMPLERS`)."""

    samples: int
    top_k: int = 0
    seed: int = 0
    sampler: str = "multinomial"

    def __post_init__(self):
        for name, value, low in (("teacher_cache_samples", self.samples, 1), ("teacher_cache_top_k", self.top_k, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"training.{name}: must be an integer >= {low} for a sampled cache, got {value!r}")
        if self.top_k + self.samples > MAX_ENTRIES:
            raise ValueError(f"training.teacher_cache_samples: top_k + samples is {self.top_k + self.samples}, over "
                             f"{MAX_ENTRIES} entries per position. Fix: draw fewer samples (tens suffice)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"training.seed: must be an integer (it seeds the cache's draws), got {self.seed!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"training.teacher_cache_sampler: unknown {self.sampler!r}. "
                             f"Fix: use one of {', '.join(SAMPLERS)}")

    def generator(self, example_id) -> torch.Generator:
        """The generator of ``example_id``'s draws: a function of the seed and the id alone."""
        digest = hashlib.sha256(f"{self.seed}\0{example_id!r}".encode()).hexdigest()
        return torch.Generator().manual_seed(int(digest[:15], 16))

    def example(self, logits: torch.Tensor, example_id, temperature: float) -> dict[str, torch.Tensor]:
        """``{part: tensor}`` of one example's real positions ``(..., V)``: ``counts``, ``indices`` and
        ``logprobs`` (ragged, packed), and for the threshold sampler ``exact`` and ``threshold`` (module doc)."""
        vocab = logits.shape[-1]
        log_p = _log_softmax(logits.reshape(-1, vocab).float(), float(temperature))
        rows = draw_rows(log_p, self.samples, min(self.top_k, vocab), self.generator(example_id), self.sampler)
        lead = logits.shape[:-1]
        parts = {"counts": rows.counts.reshape(lead), "indices": pack(rows.indices, rows.counts)}
        if self.sampler != "threshold":
            return {**parts, "logprobs": pack(rows.logprobs, rows.counts)}
        drawn = rows.counts > rows.exact  # then entry `exact` is a drawn one, at log tau
        at = rows.exact.clamp(max=rows.logprobs.shape[-1] - 1).unsqueeze(-1)
        tau = torch.where(drawn, rows.logprobs.gather(-1, at).squeeze(-1), FLOOR)
        return {**parts, "logprobs": pack(rows.logprobs, rows.exact), "exact": rows.exact.reshape(lead),
                "threshold": tau.reshape(lead)}

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
            head = int(name.split(".")[1])
            counts, indices, logprobs = sampled_names(head)
            layouts.update({counts: dense[name], indices: {**dense[name], "ragged": counts},
                            logprobs: {**dense[name], "ragged": counts}})
            if self.sampler == "threshold":
                exact, threshold = threshold_names(head)
                layouts.update({exact: dense[name], threshold: dense[name], logprobs: {**dense[name], "ragged": exact}})
            for row, eid in enumerate(ids):
                one = compact(tensor[row:row + 1], dense[name], None if mask is None else mask[row:row + 1])[0]
                for part, value in self.example(one, eid, temperature).items():
                    columns.setdefault(f"sampled.{head}.{part}", []).append(value)
        return columns, _counts_first(layouts)


def _counts_first(layouts: Mapping) -> dict:
    """The layouts with every head's counts ahead of the rest (bytes per token count positions on them)."""
    first = {n: v for n, v in layouts.items() if n.endswith(".counts")}
    return {**first, **{n: v for n, v in layouts.items() if n not in first}}
