"""Intermediate-feature losses (registry kind ``"feature"``).

Names, arguments and values follow TextBrewer 0.2.1's ``intermediate_matches`` losses, so a
TextBrewer recipe gives the same numbers here. Every function is ``fn(feature_S, feature_T,
mask=None)`` where ``mask`` is the ``(batch, length)`` input mask (1 = real token).

TextBrewer behaviour kept on purpose, for parity:

* without a mask, the attention losses treat entries ``<= -1e-3`` as masked-out scores and
  zero them (attention probabilities are never negative, so such entries are padding);
* ``mmd``/``nst`` divides the similarity matrices by the hidden size without a mask but by the
  sequence length with one.

Where TextBrewer could not run (a 3-D attention map together with a mask), a 3-D map is
treated as a single head.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Attention scores at or below this are taken as "masked out" when no mask is given.
_MASKED_SCORE = -1e-3


def _as_heads(attention: Tensor, name: str) -> Tensor:
    """View an attention map as ``(batch, heads, length, length)``."""
    if attention.dim() == 3:
        return attention.unsqueeze(1)
    if attention.dim() == 4:
        return attention
    raise ValueError(
        f"{name}: expected attention of shape (batch, heads, length, length) or "
        f"(batch, length, length), got {tuple(attention.shape)}."
    )


def _pair_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``(batch, length)`` mask -> ``(batch, 1, length, length)`` outer product m_i * m_j."""
    m = mask.to(like.dtype)
    return (m.unsqueeze(-1) * m.unsqueeze(-2)).unsqueeze(1)


def attention_mse(attention_S: Tensor, attention_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean squared error between attention maps (TextBrewer ``attention_mse``).

    Args:
        attention_S, attention_T: ``(batch, heads, length, length)`` (or ``(batch, length, length)``).
        mask: optional ``(batch, length)``; only query/key pairs where both are kept count.
    """
    if mask is None:
        s = torch.where(attention_S <= _MASKED_SCORE, torch.zeros_like(attention_S), attention_S)
        t = torch.where(attention_T <= _MASKED_SCORE, torch.zeros_like(attention_T), attention_T)
        return F.mse_loss(s, t)
    s = _as_heads(attention_S, "attention_mse")
    t = _as_heads(attention_T, "attention_mse")
    pairs = _pair_mask(mask, s)
    sq = (s - t).pow(2) * pairs
    valid = pairs.sum() * s.size(1)  # kept (i, j) pairs, per head
    return sq.sum() / valid


def attention_mse_sum(attention_S: Tensor, attention_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Sum a 4-D attention map over heads, then :func:`attention_mse` (TextBrewer ``attention_mse_sum``)."""
    if attention_S.dim() == 4:
        attention_S = attention_S.sum(dim=1)
        attention_T = attention_T.sum(dim=1)
    return attention_mse(attention_S, attention_T, mask)


def attention_ce(attention_S: Tensor, attention_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Cross-entropy between row-softmaxed attention scores (TextBrewer ``attention_ce``).

    ``-sum_j softmax(T)_ij * log_softmax(S)_ij``, averaged over heads and query rows ``i``.
    With a mask, only kept keys ``j`` are summed and only kept queries ``i`` averaged.
    """
    probs_T = F.softmax(attention_T, dim=-1)
    log_probs_S = F.log_softmax(attention_S, dim=-1)
    if mask is None:
        probs_T = torch.where(attention_T <= _MASKED_SCORE, torch.zeros_like(probs_T), probs_T)
        return -(probs_T * log_probs_S).sum(dim=-1).mean()
    p = _as_heads(probs_T, "attention_ce")
    log_q = _as_heads(log_probs_S, "attention_ce")
    m = mask.to(p.dtype)
    row_ce = (p * log_q * m[:, None, None, :]).sum(dim=-1)  # (batch, heads, length)
    kept_rows = m.sum() * p.size(1)
    return -(row_ce * m[:, None, :]).sum() / kept_rows


def attention_ce_mean(attention_S: Tensor, attention_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Average a 4-D attention map over heads, then :func:`attention_ce` (TextBrewer ``attention_ce_mean``)."""
    if attention_S.dim() == 4:
        attention_S = attention_S.mean(dim=1)
        attention_T = attention_T.mean(dim=1)
    return attention_ce(attention_S, attention_T, mask)


def hidden_mse(state_S: Tensor, state_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mean squared error between hidden states ``(batch, length, hidden)`` over kept positions."""
    if mask is None:
        return F.mse_loss(state_S, state_T)
    m = mask.to(state_S.dtype).unsqueeze(-1)
    return ((state_S - state_T).pow(2) * m).sum() / (m.sum() * state_S.size(-1))


def cos(state_S: Tensor, state_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``mean(1 - cosine(s, t))`` over kept positions (the DistilBERT hidden-state loss)."""
    dim = state_S.size(-1)
    s = state_S.reshape(-1, dim)
    t = state_T.reshape(-1, dim)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        s, t = s[keep], t[keep]
    target = torch.ones(s.size(0), dtype=s.dtype, device=s.device)
    return F.cosine_embedding_loss(s, t, target, reduction="mean")


def pkd(state_S: Tensor, state_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """BERT-PKD loss: squared distance between L2-normalised vectors at position 0.

    Inputs are ``(batch, length, hidden)`` (position 0 is taken) or ``(batch, hidden)``.
    ``mask`` is accepted for a uniform signature and ignored.
    """
    cls_S = state_S[:, 0] if state_S.dim() == 3 else state_S
    cls_T = state_T[:, 0] if state_T.dim() == 3 else state_T
    unit_S = cls_S / cls_S.norm(dim=1, keepdim=True)
    unit_T = cls_T / cls_T.norm(dim=1, keepdim=True)
    return (unit_S - unit_T).pow(2).sum(dim=-1).mean()


def _two(states: Sequence[Tensor], name: str, side: str):
    if not isinstance(states, (list, tuple)) or len(states) != 2:
        raise ValueError(
            f"{name}: feature_{side} must be a list of two tensors (batch, length, hidden), "
            f"e.g. two layers chosen with layer_{side}=[i, j]; got {type(states).__name__}"
            + (f" of length {len(states)}" if isinstance(states, (list, tuple)) else "")
            + "."
        )
    return states[0], states[1]


def fsp(state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Optional[Tensor] = None) -> Tensor:
    """FSP-style loss: MSE between ``A^T B / length`` Gram matrices ``(batch, hidden, hidden)``.

    ``state_S`` and ``state_T`` are each a list of two ``(batch, length, hidden)`` tensors. With a
    mask, padded positions are zeroed and each example is divided by its own length.
    """
    s0, s1 = _two(state_S, "fsp", "S")
    t0, t1 = _two(state_T, "fsp", "T")
    if mask is None:
        gram_S = s0.transpose(1, 2) @ s1 / s1.size(1)
        gram_T = t0.transpose(1, 2) @ t1 / t1.size(1)
    else:
        m = mask.to(s0.dtype).unsqueeze(-1)  # (batch, length, 1)
        lengths = m.sum(dim=1, keepdim=True)  # (batch, 1, 1)
        gram_S = (s0 * m).transpose(1, 2) @ (s1 * m) / lengths
        gram_T = (t0 * m).transpose(1, 2) @ (t1 * m) / lengths
    return F.mse_loss(gram_S, gram_T)


def mmd(state_S: Sequence[Tensor], state_T: Sequence[Tensor], mask: Optional[Tensor] = None) -> Tensor:
    """NST-style loss: MSE between ``A B^T`` similarity matrices ``(batch, length, length)``.

    Student and teacher hidden sizes may differ. Without a mask each matrix is divided by its
    hidden size; with a mask both are divided by the sequence length (TextBrewer's behaviour,
    kept for parity) and only pairs of kept positions count.
    """
    s0, s1 = _two(state_S, "mmd", "S")
    t0, t1 = _two(state_T, "mmd", "T")
    if mask is None:
        gram_S = s0 @ s1.transpose(1, 2) / s1.size(2)
        gram_T = t0 @ t1.transpose(1, 2) / t1.size(2)
        return F.mse_loss(gram_S, gram_T)
    m = mask.to(s0.dtype)
    gram_S = s0 @ s1.transpose(1, 2) / s1.size(1)
    gram_T = t0 @ t1.transpose(1, 2) / t1.size(1)
    pairs = m.unsqueeze(-1) * m.unsqueeze(-2)
    return ((gram_S - gram_T).pow(2) * pairs).sum() / pairs.sum()


def minilm_value_relation(value_S: Tensor, value_T: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """MiniLM value-relation loss (Wang et al., 2020).

    For each head, the relation ``softmax(V V^T / sqrt(d_head))`` is a distribution over keys for
    every query position; the loss is ``KL(relation_T || relation_S)`` summed over keys and
    averaged over heads and (kept) query positions.

    Args:
        value_S, value_T: value vectors ``(batch, heads, length, d_head)``, or
            ``(batch, length, d)`` for a single head. Head sizes may differ between student and
            teacher; the number of heads must match.
        mask: optional ``(batch, length)``; masked keys get zero relation, masked queries are
            not averaged.
    """
    v_S = value_S.unsqueeze(1) if value_S.dim() == 3 else value_S
    v_T = value_T.unsqueeze(1) if value_T.dim() == 3 else value_T
    if v_S.dim() != 4 or v_S.shape[:3] != v_T.shape[:3]:
        raise ValueError(
            "minilm_value_relation: value_S and value_T must be (batch, heads, length, d_head) "
            f"with equal batch, heads and length; got {tuple(value_S.shape)} and {tuple(value_T.shape)}."
        )
    v_S, v_T = v_S.float(), v_T.float()
    scores_S = v_S @ v_S.transpose(-1, -2) / math.sqrt(v_S.size(-1))
    scores_T = v_T @ v_T.transpose(-1, -2) / math.sqrt(v_T.size(-1))
    if mask is not None:
        key_pad = ~mask.bool()[:, None, None, :]
        neg = torch.finfo(scores_S.dtype).min
        scores_S = scores_S.masked_fill(key_pad, neg)
        scores_T = scores_T.masked_fill(key_pad, neg)
    log_rel_S = F.log_softmax(scores_S, dim=-1)
    log_rel_T = F.log_softmax(scores_T, dim=-1)
    rel_T = log_rel_T.exp()
    row_kl = (rel_T * (log_rel_T - log_rel_S)).sum(dim=-1)  # (batch, heads, length)
    if mask is None:
        return row_kl.mean()
    q = mask.to(row_kl.dtype)[:, None, :]
    return (row_kl * q).sum() / (q.sum() * row_kl.size(1))
