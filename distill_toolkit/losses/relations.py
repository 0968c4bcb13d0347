"""Self-attention relation losses of MiniLM (Wang et al., 2020) and MiniLMv2 (Wang et al., 2021).

Both compare *distributions over keys*, one per query position, so the student may be narrower than
the teacher; every loss is ``KL(teacher || student)`` summed over keys and averaged over heads and
kept query positions (the mask is the ``(batch, length)`` input mask: masked keys get no probability,
masked queries are not averaged).

- :func:`minilmv2_relation` (MiniLMv2's multi-head self-attention relations): the queries (or keys,
  or values) of a block, ``(batch, heads, length, head_dim)``, are concatenated back to
  ``(batch, length, hidden)`` and split into ``relation_heads`` relation heads of size
  ``d_r = hidden / relation_heads``; the relation is ``softmax(A_r A_r^T / sqrt(d_r))``. Teacher and
  student may differ in hidden size and in head count: only ``relation_heads`` is shared.
  Query-query, key-key and value-value relations are three matches reading ``query:i``, ``key:i`` and
  ``value:i`` (MiniLMv2 uses one late teacher layer and the student's last layer).
- :func:`minilm_attention` (MiniLM's attention-distribution transfer): the attention probabilities of
  the last layer, head by head, so student and teacher need the same number of heads.
- MiniLM's value relation is :func:`distill_toolkit.losses.features.minilm_value_relation` (per
  attention head, equal head counts); it equals :func:`minilmv2_relation` on values with
  ``relation_heads`` equal to that head count.

Register-by-name: ``minilmv2_relation``, ``minilm_attention`` (and ``minilm_value_relation``); in a
config, ``{feature: query, teacher_layer: 10, student_layer: 5, loss: minilmv2_relation,
loss_kwargs: {relation_heads: 12}}``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["merge_heads", "minilm_attention", "minilmv2_relation", "relation_log_probs", "relation_scores"]


def merge_heads(states: Tensor, name: str = "relation") -> Tensor:
    """``(batch, heads, length, head_dim)`` -> ``(batch, length, heads * head_dim)``; 3-D passes through."""
    if states.dim() == 3:
        return states
    if states.dim() != 4:
        raise ValueError(f"{name}: expected (batch, heads, length, head_dim) or (batch, length, hidden), "
                         f"got {tuple(states.shape)}")
    batch, heads, length, dim = states.shape
    return states.transpose(1, 2).reshape(batch, length, heads * dim)


def relation_scores(states: Tensor, relation_heads: int) -> Tensor:
    """Scaled dot products ``A_r A_r^T / sqrt(d_r)`` over ``relation_heads`` relation heads.

    Args:
        states: ``(batch, length, hidden)``; ``hidden`` must be a multiple of ``relation_heads``.
        relation_heads: the number of relation heads ``R``; each has ``d_r = hidden / R`` dims.

    Returns:
        ``(batch, R, length, length)`` float32 scores.
    """
    batch, length, width = states.shape
    if width % relation_heads:
        raise ValueError(f"relation_heads {relation_heads} does not divide the hidden size {width}")
    head_dim = width // relation_heads
    split = states.float().view(batch, length, relation_heads, head_dim).transpose(1, 2)
    return split @ split.transpose(-1, -2) / math.sqrt(head_dim)


def relation_log_probs(scores: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Log-softmax of ``(batch, heads, length, length)`` scores over keys; masked keys get no probability."""
    if mask is not None:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def _mean_row_kl(log_T: Tensor, log_S: Tensor, mask: Optional[Tensor], probs_T: Optional[Tensor] = None) -> Tensor:
    """``sum_j p_T (log p_T - log p_S)`` per (head, query), averaged over heads and kept queries."""
    terms = (log_T.exp() if probs_T is None else probs_T) * (log_T - log_S)
    if mask is not None:
        terms = terms.masked_fill(~mask.bool()[:, None, None, :], 0.0)
    row_kl = terms.sum(dim=-1)  # (batch, heads, length)
    if mask is None:
        return row_kl.mean()
    queries = mask.to(row_kl.dtype)[:, None, :]
    return (row_kl * queries).sum() / (queries.sum() * row_kl.size(1))


def _relation_heads(width_S: int, width_T: int, relation_heads: Optional[int], heads_T: int) -> int:
    wanted = heads_T if relation_heads is None else relation_heads
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ValueError(f"minilmv2_relation: relation_heads must be an integer >= 1, got {relation_heads!r}. "
                         "Fix: set e.g. `loss_kwargs: {relation_heads: 12}`")
    if width_S % wanted or width_T % wanted:
        common = math.gcd(width_S, width_T)
        example = max(d for d in range(1, min(common, max(heads_T, 1)) + 1) if common % d == 0)
        raise ValueError(
            f"minilmv2_relation: {wanted} relation heads must divide both the student's width {width_S} and the "
            f"teacher's {width_T}. Fix: set `loss_kwargs: {{relation_heads: N}}` with N dividing both, e.g. {example}")
    return wanted


def minilmv2_relation(feature_S: Tensor, feature_T: Tensor, mask: Optional[Tensor] = None,
                      relation_heads: Optional[int] = None) -> Tensor:
    """MiniLMv2 self-attention relation loss between student and teacher queries, keys or values.

    ``KL(R_T || R_S)`` with ``R = softmax(A_r A_r^T / sqrt(d_r))`` per relation head ``r`` (see the
    module docstring), summed over keys, averaged over relation heads and kept query positions.

    Args:
        feature_S, feature_T: ``(batch, heads, length, head_dim)`` (features ``query:i``, ``key:i``,
            ``value:i``) or ``(batch, length, hidden)``; batch and length must agree, widths and head
            counts may differ.
        mask: optional ``(batch, length)`` input mask.
        relation_heads: the number of relation heads ``R`` (must divide both widths); default: the
            teacher's head count (1 for a 3-D teacher feature).
    """
    heads_T = feature_T.size(1) if feature_T.dim() == 4 else 1
    states_S, states_T = merge_heads(feature_S, "minilmv2_relation"), merge_heads(feature_T, "minilmv2_relation")
    if states_S.shape[:2] != states_T.shape[:2]:
        raise ValueError(f"minilmv2_relation: student and teacher must share batch and length, got "
                         f"{tuple(feature_S.shape)} and {tuple(feature_T.shape)}. Fix: feed both the same batch")
    heads = _relation_heads(states_S.size(-1), states_T.size(-1), relation_heads, heads_T)
    log_S = relation_log_probs(relation_scores(states_S, heads), mask)
    log_T = relation_log_probs(relation_scores(states_T, heads), mask)
    return _mean_row_kl(log_T, log_S, mask)


def minilm_attention(attention_S: Tensor, attention_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """MiniLM attention-distribution transfer: ``KL(A_T || A_S)`` per head, over keys.

    Summed over keys, averaged over heads and kept query positions. Probabilities are clamped at the
    smallest normal float before the log, so a zero student probability costs a large finite amount.

    Args:
        attention_S, attention_T: attention probabilities ``(batch, heads, length, length)`` (feature
            ``attention:i``, usually the last layer of each model), with equal head counts.
        mask: optional ``(batch, length)`` input mask.
    """
    if attention_S.dim() != 4 or attention_S.shape != attention_T.shape:
        heads = "" if attention_S.dim() != 4 or attention_T.dim() != 4 or attention_S.size(1) == attention_T.size(1) \
            else f" (student {attention_S.size(1)} heads, teacher {attention_T.size(1)})"
        raise ValueError(
            f"minilm_attention compares attention distributions head by head, so both maps must have one shape "
            f"(batch, heads, length, length); got {tuple(attention_S.shape)} and {tuple(attention_T.shape)}{heads}. "
            "Fix: give the student the teacher's num_attention_heads (student.config), or use loss "
            "minilmv2_relation on feature query/key/value, whose relation_heads work across head counts")
    tiny = torch.finfo(torch.float32).tiny
    log_S = attention_S.float().clamp_min(tiny).log()
    log_T = attention_T.float().clamp_min(tiny).log()
    return _mean_row_kl(log_T, log_S, mask, probs_T=attention_T.float())
