"""Logits losses between models with different vocabularies (cross-tokenizer KD).

Two published answers, both registered as ``logits`` losses:

``uld`` - Universal Logit Distillation (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation:
the Universal Logit Distillation Loss"). Per pair of positions, both probability vectors are sorted
in decreasing order, the shorter vocabulary is padded with zeros, and the loss is the L1 distance of
the sorted vectors summed over the vocabulary (the Wasserstein-1 distance between the two sorted
distributions under the paper's uniform cost). It needs no map between the vocabularies; it
only compares the *shapes* of the two distributions. Positions are paired by order (the ``k``-th
counted position of the student with the ``k``-th of the teacher, the longer sequence truncated),
as in the paper: :func:`pair_by_order`.

``aligned_kd`` - offset-aligned token-level KD (in the manner of DSKD and TRL's GOLD). The two
tokenisations of one text are grouped into *spans* that both sides cover exactly (built by the
collator from character offsets: :mod:`distill_toolkit.data.token_alignment`), and per span:

- the **distribution** term compares, at the position that predicts the span's *first* token on each
  side, the two next-token distributions. Both condition on exactly the same text (every earlier span),
  and both are proper distributions, so divergences are well defined. The product rule (the
  probability of a whole multi-token span) is known only for the span's actual tokens, not as a
  distribution over alternatives, so it goes into the span term below instead. On the *shared*
  vocabulary (token pairs whose strings are equal, mapped by id: ``shared_S[i]`` <-> ``shared_T[i]``)
  the term is the forward KL over the shared tokens plus one bucket holding each side's remaining mass
  (as the top-k tail bucket of :mod:`~distill_toolkit.losses.logits`); on the rest of each vocabulary
  (its probabilities, not renormalised) it is ULD;
- the **span** term compares the probabilities of the span's actual text, each the product of its
  tokens' next-token probabilities (``span_logp``: the sum of their log-probabilities), as a binary
  KL between ``Bernoulli(p_T(span))`` and ``Bernoulli(p_S(span))``.

``per_span = shared_weight * KL_shared + uld_weight * ULD_rest + span_weight * KL_span``; the
weights come from ``distillation.kd_loss_kwargs``. Rows are reduced as every logits loss of the
toolkit: mean over the kept rows (``reduction="sum"`` for sums).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CROSS_TOKENIZER_LOSSES", "SpanPairs", "aligned_kd", "pair_by_order", "sorted_l1", "span_pairs", "uld"]

#: the registry names of the losses that compare models with different vocabularies
CROSS_TOKENIZER_LOSSES = ("uld", "aligned_kd")
_TINY = 1e-12


def _reduce(per_row: Tensor, mask: Optional[Tensor], reduction: str) -> Tensor:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if mask is not None:
        if mask.shape != per_row.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but the rows have {tuple(per_row.shape)}")
        per_row = per_row[mask.bool()]
    if reduction == "sum":
        return per_row.sum()
    return per_row.sum() / max(per_row.numel(), 1)


def sorted_l1(p_S: Tensor, p_T: Tensor) -> Tensor:
    """Per row, ``sum_i |sort(p_S)_i - sort(p_T)_i|`` with both sorted decreasingly and the shorter
    last dimension padded with zeros. ``p_S`` ``(..., V_S)``, ``p_T`` ``(..., V_T)``: shape ``(...)``."""
    width = max(p_S.shape[-1], p_T.shape[-1])
    s = F.pad(p_S.sort(dim=-1, descending=True).values, (0, width - p_S.shape[-1]))
    t = F.pad(p_T.sort(dim=-1, descending=True).values, (0, width - p_T.shape[-1]))
    return (s - t).abs().sum(-1)


def uld(logits_S: Tensor, logits_T: Tensor, temperature: float = 1.0, *, mask: Optional[Tensor] = None,
        reduction: str = "mean") -> Tensor:
    """Universal Logit Distillation: :func:`sorted_l1` of the two softmaxes at ``temperature``.

    Args:
        logits_S: ``(..., V_S)`` student logits; logits_T: ``(..., V_T)`` teacher logits, the same rows
            (pair positions first, e.g. with :func:`pair_by_order`). The vocabularies may differ.
        mask: optional keep-mask of the rows ``(...)``.
        reduction: ``"mean"`` over kept rows (default) or ``"sum"``.
    """
    if logits_S.shape[:-1] != logits_T.shape[:-1]:
        raise ValueError(f"uld: the student has rows {tuple(logits_S.shape[:-1])} and the teacher "
                         f"{tuple(logits_T.shape[:-1])}; pair positions first (pair_by_order)")
    p_S = torch.softmax(logits_S.float() / temperature, dim=-1)
    p_T = torch.softmax(logits_T.float() / temperature, dim=-1)
    return _reduce(sorted_l1(p_S, p_T), mask, reduction)


def pair_by_order(mask_S: Tensor, mask_T: Tensor) -> tuple[Tensor, Tensor]:
    """``(keep_S, keep_T)``: per row, the first ``min(n_S, n_T)`` counted positions of each side.

    ``mask_S`` ``(B, L_S)`` and ``mask_T`` ``(B, L_T)`` mark the counted positions (e.g. answer tokens).
    ``x_S[keep_S]`` and ``x_T[keep_T]`` then hold the same number of rows, paired in order.
    """
    mask_S, mask_T = mask_S.bool(), mask_T.bool()
    n = torch.minimum(mask_S.sum(1), mask_T.sum(1))[:, None]
    keep_S = mask_S & (mask_S.long().cumsum(1) <= n)
    keep_T = mask_T & (mask_T.long().cumsum(1) <= n)
    return keep_S, keep_T


class SpanPairs(NamedTuple):
    """Spans present and wholly counted on both sides. ``row`` (N,): the example; ``first_S`` / ``first_T``
    (N,): the position of the span's first token on each side; ``index_S`` ``(B, L_S)`` / ``index_T``
    ``(B, L_T)``: for each token, the pair it belongs to (``-1``: none)."""

    row: Tensor
    first_S: Tensor
    first_T: Tensor
    index_S: Tensor
    index_T: Tensor


def _span_table(spans: Tensor, counted: Tensor, size: int):
    """Per key ``row * width + span``: present, wholly counted, and the first token's position."""
    B, L = spans.shape
    width = size // B
    key = torch.arange(B, device=spans.device)[:, None] * width + spans.clamp(min=0)
    member = spans >= 0
    flat_key = key[member]
    present = torch.zeros(size, dtype=torch.bool, device=spans.device)
    present[flat_key] = True
    bad = torch.zeros(size, dtype=torch.long, device=spans.device)
    bad.index_add_(0, flat_key, (~counted[member]).long())
    positions = torch.arange(L, device=spans.device).expand(B, L)[member]
    first = torch.full((size,), L, dtype=torch.long, device=spans.device)
    first.scatter_reduce_(0, flat_key, positions, reduce="amin")
    return present & (bad == 0), first, key, member


def span_pairs(spans_S: Tensor, spans_T: Tensor, counted_S: Tensor, counted_T: Tensor) -> SpanPairs:
    """Pair the spans of an alignment (see :class:`SpanPairs`).

    ``spans_S`` ``(B, L_S)`` / ``spans_T`` ``(B, L_T)``: each token's span id within its example (``-1``:
    none, e.g. special tokens or padding). ``counted_*``: which tokens are learnt (a real token whose
    label is not ``-100`` and that has a predecessor). A span counts when each side has tokens in it
    and all of them are counted.
    """
    B = spans_S.shape[0]
    width = int(max(spans_S.max(), spans_T.max(), 0)) + 1
    ok_S, first_S, key_S, member_S = _span_table(spans_S, counted_S.bool(), B * width)
    ok_T, first_T, key_T, member_T = _span_table(spans_T, counted_T.bool(), B * width)
    keys = torch.nonzero(ok_S & ok_T).squeeze(-1)
    pair_of = torch.full((B * width,), -1, dtype=torch.long, device=spans_S.device)
    pair_of[keys] = torch.arange(len(keys), device=spans_S.device)
    index_S = torch.where(member_S, pair_of[key_S], -1)
    index_T = torch.where(member_T, pair_of[key_T], -1)
    return SpanPairs(keys // width, first_S[keys], first_T[keys], index_S, index_T)


def _log1m_exp(log_p: Tensor) -> Tensor:
    """``log(1 - exp(log_p))`` for ``log_p <= 0``, floored so that an exhausted mass stays finite."""
    return torch.log((-torch.expm1(log_p.clamp(max=0))).clamp(min=_TINY))


def _shared_kl(lp_S: Tensor, lp_T: Tensor, shared_S: Tensor, shared_T: Tensor) -> Tensor:
    """Forward KL over the shared tokens plus one bucket for each side's mass outside them."""
    a_S, a_T = lp_S[..., shared_S], lp_T[..., shared_T]
    rest_S, rest_T = _log1m_exp(torch.logsumexp(a_S, -1)), _log1m_exp(torch.logsumexp(a_T, -1))
    return (a_T.exp() * (a_T - a_S)).sum(-1) + rest_T.exp() * (rest_T - rest_S)


def _rest_uld(lp_S: Tensor, lp_T: Tensor, shared_S: Tensor, shared_T: Tensor) -> Tensor:
    keep_S = torch.ones(lp_S.shape[-1], dtype=torch.bool, device=lp_S.device)
    keep_S[shared_S] = False
    keep_T = torch.ones(lp_T.shape[-1], dtype=torch.bool, device=lp_T.device)
    keep_T[shared_T] = False
    return sorted_l1(lp_S[..., keep_S].exp(), lp_T[..., keep_T].exp())


def _binary_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(Bernoulli(p) || Bernoulli(q))`` from log-probabilities."""
    return log_p.exp() * (log_p - log_q) + (-torch.expm1(log_p.clamp(max=0))) * (_log1m_exp(log_p) - _log1m_exp(log_q))


def aligned_kd(logits_S: Tensor, logits_T: Tensor, temperature: float = 1.0, *, shared_S: Optional[Tensor] = None,
               shared_T: Optional[Tensor] = None, span_logp_S: Optional[Tensor] = None,
               span_logp_T: Optional[Tensor] = None, mask: Optional[Tensor] = None, shared_weight: float = 1.0,
               uld_weight: float = 1.0, span_weight: float = 1.0, reduction: str = "mean") -> Tensor:
    """Offset-aligned token-level KD over spans (module docstring).

    Args:
        logits_S: ``(N, V_S)``, logits_T: ``(N, V_T)``: the next-token logits at the position predicting
            each span's first token, on each side (rows paired by :func:`span_pairs`).
        shared_S, shared_T: ``(M,)`` ids of the shared vocabulary, ``shared_S[i]`` and ``shared_T[i]``
            being the same string (:func:`distill_toolkit.data.token_alignment.shared_vocabulary`).
        span_logp_S, span_logp_T: ``(N,)`` log-probabilities of each span's actual tokens (at T = 1);
            without them there is no span term.
        mask: optional keep-mask ``(N,)``. shared_weight, uld_weight, span_weight: the terms' weights.
        temperature: applies to the distributions (not to the span probabilities, which are the models').
    """
    if shared_S is None or shared_T is None:
        raise ValueError("aligned_kd needs the shared vocabulary (shared_S, shared_T), which the cross-tokenizer "
                         "collator puts in batch['alignment']. Fix: use strategy causal_lm with "
                         "distill_toolkit.data.CrossTokenizerLMCollator, or kd_loss: uld (needs no vocabulary map)")
    if shared_S.shape != shared_T.shape:
        raise ValueError(f"aligned_kd: shared_S {tuple(shared_S.shape)} and shared_T {tuple(shared_T.shape)} "
                         "must pair ids one to one")
    lp_S = torch.log_softmax(logits_S.float() / temperature, dim=-1)
    lp_T = torch.log_softmax(logits_T.float() / temperature, dim=-1)
    per_row = lp_S.new_zeros(lp_S.shape[:-1])
    if shared_weight:
        per_row = per_row + shared_weight * _shared_kl(lp_S, lp_T, shared_S, shared_T)
    if uld_weight:
        per_row = per_row + uld_weight * _rest_uld(lp_S, lp_T, shared_S, shared_T)
    if span_weight and span_logp_S is not None and span_logp_T is not None:
        per_row = per_row + span_weight * _binary_kl(span_logp_T.float(), span_logp_S.float())
    return _reduce(per_row, mask, reduction)
