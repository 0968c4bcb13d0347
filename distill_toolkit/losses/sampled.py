"""Sampled sparse teacher: exact top-k plus a sampled tail, an unbiased estimate of the teacher distribution.

Sparse Logit Sampling (Anshumann et al., 2025, "Sparse Logit Sampling: Accelerating Knowledge Distillation
in LLMs") replaces the teacher's full distribution ``p`` by a few tokens drawn from it: with ``c_j`` the
number of times token ``j`` comes up in ``N`` draws with replacement, ``p_hat_j = c_j / N`` has
``E[p_hat] = p``. The forward-KL (soft cross-entropy) gradient with respect to the student's logits is
``q - p`` (``q`` the student's softmax); it is linear in ``p``, so ``q - p_hat`` is an *unbiased* estimate
of it, unlike plain top-k, whose tail bucket always pulls the student's mass outside the kept classes
towards the teacher's tail mass without saying where it goes.

:func:`sampled_from_dense` combines both: the teacher's ``top_k`` most likely classes are kept exactly
(``top_k = 0``: none), and ``samples`` draws from the rest (the tail renormalised) spread the tail mass
``m`` over the tokens drawn, ``p_hat_j = m * c_j / N``. The estimate is still unbiased (the exact part has
no variance, the tail's is that of ``N`` draws from a distribution of total mass ``m``), sums to exactly 1,
and is returned as a :class:`~distill_toolkit.losses.logits.SparseTeacher` whose tail bucket is empty
(``tail_logprob`` at the floor, i.e. probability 0), so every sparse route reads it: the registry's
:func:`~distill_toolkit.losses.logits.forward_kl`, the chunked and the fused causal-LM KD.

Rows have different numbers of distinct entries; they are padded to the widest row with probability-0
entries (log-probability at the floor, index of the row's first entry). Such entries add exactly 0 to the
forward KL and its gradient. Only the forward KL (``forward_kl``/``kl``) is unbiased this way; reverse
KL, JSD, skew KL and total variation are not linear in ``p`` (and would count a padded entry's student
mass twice), so teacher caches built this way refuse them (:data:`SAMPLED_LOSSES`). The *value* of the
loss is not an unbiased estimate of the KL (it holds the entropy of ``p_hat``, not of ``p``); the gradient is.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from distill_toolkit.losses.logits import SparseTeacher, Temperature, _check_temperature, _log_softmax, _neg_floor

__all__ = ["SAMPLED_LOSSES", "SampledRows", "draw_uniforms", "sample_rows", "sampled_from_dense"]

#: the logits losses for which a sampled teacher gives an unbiased gradient
SAMPLED_LOSSES = ("forward_kl", "kl")


class SampledRows(NamedTuple):
    """Per row: ``counts`` (R,) entries, then ``indices``/``logprobs`` (R, W) padded to the widest row."""

    indices: Tensor
    logprobs: Tensor
    counts: Tensor


def _check(samples: int, top_k: int, vocab: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sampled sparse teacher: samples must be a positive integer, got {samples!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise ValueError(f"sampled sparse teacher: top_k must be an integer in [0, {vocab}], got {top_k!r}")


def draw_uniforms(rows: int, samples: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``(rows, samples)`` float64 uniforms in (0, 1] (never 0, so a draw never lands on a class of mass 0)."""
    return 1.0 - torch.rand(rows, samples, generator=generator, dtype=torch.float64)


def sample_rows(log_p: Tensor, samples: int, top_k: int, uniforms: Tensor) -> SampledRows:
    """Top-``top_k`` exactly plus ``samples`` draws from the rest, for rows of teacher log-probabilities.

    Args:
        log_p: ``(R, V)`` normalised log-probabilities (at the temperature to train with).
        samples: draws per row from the tail (everything outside the top-k), with replacement.
        top_k: classes kept exactly per row (0: all of the estimate is sampled).
        uniforms: ``(R, samples)`` numbers in (0, 1] (:func:`draw_uniforms`), the only randomness: the same
            uniforms give the same draws (inverse-CDF sampling, in float64).

    Returns:
        :class:`SampledRows`: per row the top-k first (in decreasing order), then the distinct tail tokens
        drawn (in increasing id), ``p_hat = tail_mass * count / samples``; padded entries carry the floor.
    """
    rows, vocab = log_p.shape
    _check(samples, top_k, vocab)
    if tuple(uniforms.shape) != (rows, samples):
        raise ValueError(f"sample_rows: uniforms must have shape ({rows}, {samples}), got {tuple(uniforms.shape)}")
    log_p = log_p.float()
    floor = _neg_floor(log_p.dtype)
    top_lp, top_idx = log_p.topk(top_k, dim=-1) if top_k else (log_p[:, :0], log_p[:, :0].long())
    rest = log_p.scatter(-1, top_idx, float("-inf")) if top_k else log_p
    tail_lse = rest.logsumexp(-1)  # log of the tail mass; -inf when there is none (top_k = V, or it underflows)
    has_tail = torch.isfinite(tail_lse) & (tail_lse > floor)
    weights = torch.where(has_tail.unsqueeze(-1), (rest - tail_lse.unsqueeze(-1)).exp(), 1.0).double()
    cdf = weights.cumsum(-1)
    drawn = torch.searchsorted(cdf, uniforms.to(cdf.device) * cdf[:, -1:]).clamp_(max=vocab - 1)
    row_of = torch.arange(rows, device=log_p.device).unsqueeze(-1).expand_as(drawn)
    keys = (row_of * vocab + drawn)[has_tail]
    unique, count = torch.unique(keys, sorted=True, return_counts=True)
    u_row, u_idx = unique // vocab, unique % vocab
    per_row = torch.bincount(u_row, minlength=rows)
    width = top_k + int(per_row.max()) if rows else top_k
    indices = torch.zeros(rows, max(width, 1), dtype=torch.long, device=log_p.device)
    logprobs = torch.full((rows, max(width, 1)), floor, dtype=log_p.dtype, device=log_p.device)
    if top_k:
        indices[:, :top_k], logprobs[:, :top_k] = top_idx, top_lp.clamp(min=floor)
    starts = torch.cumsum(per_row, 0) - per_row
    slot = top_k + torch.arange(len(unique), device=log_p.device) - starts[u_row]
    indices[u_row, slot] = u_idx
    logprobs[u_row, slot] = tail_lse[u_row] + count.float().log() - math.log(samples)
    counts = top_k + per_row
    pad = torch.arange(indices.shape[1], device=log_p.device).unsqueeze(0) >= counts.unsqueeze(-1)
    indices = torch.where(pad, indices[:, :1], indices)  # padding points at the row's first entry, mass 0
    return SampledRows(indices, logprobs[:, :max(width, 1)], counts)


def sampled_from_dense(logits_T: Tensor, samples: int, top_k: int = 0, temperature: Temperature = 1,
                       generator: Optional[torch.Generator] = None) -> SparseTeacher:
    """An unbiased sparse estimate of the teacher's distribution at ``temperature`` (module docstring).

    Args:
        logits_T: ``(..., V)`` teacher logits.
        samples: tokens drawn per position (with replacement) from the teacher's tail.
        top_k: the most likely classes kept exactly per position (0: the whole estimate is sampled).
        temperature: as in :func:`~distill_toolkit.losses.logits.sparse_from_dense`: applied before sampling,
            so train at the same temperature (the student alone is divided by it then).
        generator: a ``torch.Generator`` (CPU) for reproducible draws.

    Returns:
        ``SparseTeacher(logprobs (..., W), indices (..., W), tail_logprob (...) at the floor)``; ``W`` is the
        widest position's number of entries, narrower positions are padded with probability-0 entries.
        Use it with ``forward_kl`` (:data:`SAMPLED_LOSSES`).
    """
    temperature = _check_temperature(temperature, logits_T.shape[:-1], "sampled_from_dense")
    if isinstance(temperature, Tensor) and temperature.dim() > 0:
        temperature = temperature.unsqueeze(-1)
    lead, vocab = logits_T.shape[:-1], logits_T.shape[-1]
    log_p = _log_softmax(logits_T.float(), temperature).reshape(-1, vocab)
    rows = sample_rows(log_p, samples, top_k, draw_uniforms(log_p.shape[0], samples, generator))
    width = rows.indices.shape[-1]
    tail = torch.full(lead, _neg_floor(log_p.dtype), dtype=log_p.dtype, device=log_p.device)
    return SparseTeacher(rows.logprobs.reshape(*lead, width), rows.indices.reshape(*lead, width), tail)
