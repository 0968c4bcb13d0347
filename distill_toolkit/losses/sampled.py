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

__all__ = ["SAMPLED_LOSSES", "SAMPLERS", "SampledRows", "draw_rows", "draw_uniforms", "sample_rows",
           "sampled_from_dense", "threshold_rows"]

#: the logits losses for which a sampled teacher gives an unbiased gradient
SAMPLED_LOSSES = ("forward_kl", "kl")

#: how a row's entries are chosen: ``multinomial`` and ``systematic`` place ``N`` draws on the tail's CDF
#: (:func:`draw_uniforms`); ``threshold`` keeps ``top_k + N`` distinct entries (:func:`threshold_rows`)
SAMPLERS = ("multinomial", "systematic", "threshold")


class SampledRows(NamedTuple):
    """Per row: ``counts`` (R,) entries, then ``indices``/``logprobs`` (R, W) padded to the widest row; the
    first ``exact`` (R,) entries of a row are kept exactly, the others drawn."""

    indices: Tensor
    logprobs: Tensor
    counts: Tensor
    exact: Tensor


def _check(samples: int, top_k: int, vocab: int) -> None:
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"sampled sparse teacher: samples must be a positive integer, got {samples!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= vocab:
        raise ValueError(f"sampled sparse teacher: top_k must be an integer in [0, {vocab}], got {top_k!r}")


def draw_uniforms(rows: int, samples: int, generator: Optional[torch.Generator] = None,
                  sampler: str = "multinomial") -> Tensor:
    """``(rows, samples)`` float64 points in (0, 1] (never 0, so a draw never lands on a class of mass 0).

    ``multinomial``: independent uniforms (``N`` draws with replacement). ``systematic``: one uniform ``u`` per
    row and the points ``(i + u) / N``, one in each of ``N`` equal strata of the CDF. A class of tail mass
    ``w`` then comes up ``floor(N w)`` or ``ceil(N w)`` times, ``N w`` on average: the estimate stays unbiased
    with far less variance (every class of mass over ``1 / N`` is always drawn), at the same storage.
    """
    if sampler not in ("multinomial", "systematic"):
        raise ValueError(f"training.teacher_cache_sampler: unknown {sampler!r} for draws on the CDF. "
                         "Fix: use multinomial or systematic (threshold draws through threshold_rows)")
    if sampler == "multinomial":
        return 1.0 - torch.rand(rows, samples, generator=generator, dtype=torch.float64)
    offset = 1.0 - torch.rand(rows, 1, generator=generator, dtype=torch.float64)
    return (torch.arange(samples, dtype=torch.float64) + offset) / samples


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
    top_lp, top_idx = log_p.topk(top_k, dim=-1) if top_k else (log_p[:, :0], log_p[:, :0].long())
    exact = torch.full((rows,), top_k, dtype=torch.long, device=log_p.device)
    draws = torch.full((rows,), samples, dtype=torch.long, device=log_p.device)
    return _with_tail(log_p, top_lp, top_idx, exact, draws, uniforms)


def threshold_rows(log_p: Tensor, entries: int, top_k: int, offsets: Tensor) -> SampledRows:
    """``entries`` distinct tokens per row: every token above a threshold exactly, the rest drawn systematically.

    With ``S_k`` the mass of a row's ``k`` most likely tokens, the row keeps exactly its smallest ``k >= top_k``
    most likely tokens such that the next one is below ``tau = (1 - S_k) / (entries - k)``, and draws the other
    ``n = entries - k`` systematically from the rest (points ``(i + offset) / n`` on its CDF). No token of the
    rest has mass over ``tau``, so none is drawn twice, and each drawn one stands for ``p_hat = tau``: token
    ``j`` of the rest comes up with probability ``p_j / tau``, so ``E[p_hat_j] = p_j`` (unbiased, as
    :func:`sample_rows`), while no entry is spent on a repeat and no heavy token carries sampling noise.

    Args:
        log_p: ``(R, V)`` normalised log-probabilities.
        entries: tokens kept per row (fewer only where fewer than that have mass).
        top_k: the fewest kept exactly (0: as the threshold decides).
        offsets: ``(R,)`` numbers in (0, 1], the only randomness.
    """
    rows, vocab = log_p.shape
    _check(entries, top_k, vocab)
    if top_k > entries:
        raise ValueError(f"threshold sampler: top_k ({top_k}) is over the entries per row ({entries}). "
                         "Fix: entries = top_k + samples, with samples >= 1")
    if tuple(offsets.shape) != (rows,):
        raise ValueError(f"threshold_rows: offsets must have shape ({rows},), got {tuple(offsets.shape)}")
    log_p = log_p.float()
    width = min(entries, vocab)
    top_lp, top_idx = log_p.topk(width, dim=-1)
    top_p = top_lp.double().exp()
    before = top_p.cumsum(-1) - top_p  # S_k: the mass above the k-th most likely token
    k = torch.arange(width, device=log_p.device, dtype=torch.float64)
    below = (top_p * (entries - k) < 1.0 - before) & (k >= top_k)
    # the first k where the next token falls below tau; none: every one of the `width` kept exactly
    exact = torch.where(below.any(-1), below.double().argmax(-1), torch.full((rows,), width, device=log_p.device))
    exact = exact.long()
    draws = torch.where(exact < width, entries - exact, 0)
    points = (torch.arange(max(entries - top_k, 1), dtype=torch.float64, device=log_p.device)
              + offsets.double().unsqueeze(-1)) / draws.clamp(min=1).double().unsqueeze(-1)
    return _with_tail(log_p, top_lp, top_idx, exact, draws, points)


def _with_tail(log_p: Tensor, top_lp: Tensor, top_idx: Tensor, exact: Tensor, draws: Tensor,
               points: Tensor) -> SampledRows:
    """Rows of the first ``exact[r]`` of ``top_*`` plus ``draws[r]`` draws (``points[r, :draws[r]]`` on the CDF)
    from the rest, each distinct token drawn at ``tail_mass * count / draws``."""
    rows, vocab = log_p.shape
    floor = _neg_floor(log_p.dtype)
    column = torch.arange(top_idx.shape[1], device=log_p.device)
    kept = column.unsqueeze(0) < exact.unsqueeze(-1)  # (R, K): the exact part of each row
    rest = log_p.scatter(-1, top_idx, torch.where(kept, float("-inf"), top_lp)) if top_idx.shape[1] else log_p
    tail_lse = rest.logsumexp(-1)  # log of the tail mass; -inf when there is none (top_k = V, or it underflows)
    has_tail = torch.isfinite(tail_lse) & (tail_lse > floor) & (draws > 0)
    weights = torch.where(has_tail.unsqueeze(-1), (rest - tail_lse.unsqueeze(-1)).exp(), 1.0).double()
    cdf = weights.cumsum(-1)
    drawn = torch.searchsorted(cdf, points.to(cdf.device) * cdf[:, -1:]).clamp_(max=vocab - 1)
    row_of = torch.arange(rows, device=log_p.device).unsqueeze(-1).expand_as(drawn)
    used = has_tail.unsqueeze(-1) & (torch.arange(drawn.shape[1], device=log_p.device) < draws.unsqueeze(-1))
    keys = (row_of * vocab + drawn)[used]
    unique, count = torch.unique(keys, sorted=True, return_counts=True)
    u_row, u_idx = unique // vocab, unique % vocab
    per_row = torch.bincount(u_row, minlength=rows)
    counts = exact + per_row
    width = max(int(counts.max()) if rows else 0, 1)
    indices = torch.zeros(rows, width, dtype=torch.long, device=log_p.device)
    logprobs = torch.full((rows, width), floor, dtype=log_p.dtype, device=log_p.device)
    head = min(top_idx.shape[1], width)
    indices[:, :head] = torch.where(kept[:, :head], top_idx[:, :head], 0)
    logprobs[:, :head] = torch.where(kept[:, :head], top_lp[:, :head].clamp(min=floor), floor)
    starts = torch.cumsum(per_row, 0) - per_row
    slot = exact[u_row] + torch.arange(len(unique), device=log_p.device) - starts[u_row]
    indices[u_row, slot] = u_idx
    logprobs[u_row, slot] = tail_lse[u_row] + count.float().log() - draws[u_row].float().log()
    pad = torch.arange(width, device=log_p.device).unsqueeze(0) >= counts.unsqueeze(-1)
    indices = torch.where(pad, indices[:, :1], indices)  # padding points at the row's first entry, mass 0
    return SampledRows(indices, logprobs, counts, exact)


def draw_rows(log_p: Tensor, samples: int, top_k: int, generator: Optional[torch.Generator] = None,
              sampler: str = "multinomial") -> SampledRows:
    """The rows of ``sampler`` (:data:`SAMPLERS`) for ``(R, V)`` log-probabilities: :func:`sample_rows` with
    :func:`draw_uniforms`, or :func:`threshold_rows` with ``top_k + samples`` entries."""
    if sampler not in SAMPLERS:
        raise ValueError(f"training.teacher_cache_sampler: unknown {sampler!r}. Fix: use one of {', '.join(SAMPLERS)}")
    if sampler == "threshold":
        _check(samples, top_k, log_p.shape[-1])
        offsets = 1.0 - torch.rand(log_p.shape[0], generator=generator, dtype=torch.float64)
        return threshold_rows(log_p, top_k + samples, top_k, offsets)
    return sample_rows(log_p, samples, top_k, draw_uniforms(log_p.shape[0], samples, generator, sampler))


def sampled_from_dense(logits_T: Tensor, samples: int, top_k: int = 0, temperature: Temperature = 1,
                       generator: Optional[torch.Generator] = None, sampler: str = "multinomial") -> SparseTeacher:
    """An unbiased sparse estimate of the teacher's distribution at ``temperature`` (module docstring).

    Args:
        logits_T: ``(..., V)`` teacher logits.
        samples: tokens drawn per position (with replacement) from the teacher's tail.
        top_k: the most likely classes kept exactly per position (0: the whole estimate is sampled).
        temperature: as in :func:`~distill_toolkit.losses.logits.sparse_from_dense`: applied before sampling,
            so train at the same temperature (the student alone is divided by it then).
        generator: a ``torch.Generator`` (CPU) for reproducible draws.
        sampler: ``multinomial`` (independent draws), ``systematic`` (stratified; :func:`draw_uniforms`) or
            ``threshold`` (``top_k + samples`` distinct entries; :func:`threshold_rows`).

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
    rows = draw_rows(log_p, samples, top_k, generator, sampler)
    width = rows.indices.shape[-1]
    tail = torch.full(lead, _neg_floor(log_p.dtype), dtype=log_p.dtype, device=log_p.device)
    return SparseTeacher(rows.logprobs.reshape(*lead, width), rows.indices.reshape(*lead, width), tail)
