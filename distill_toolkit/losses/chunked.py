"""Memory-safe KD over a large vocabulary: logits built and reduced a chunk of positions at a time.

The naive route materialises ``[positions, vocab]`` fp32 logits for both models, plus their
log-softmaxes and gradients (several GB for a 50k vocabulary and a few thousand tokens).
:func:`chunked_lm_kd` takes the *inputs of the output heads* (the final hidden states) instead,
and for each chunk of positions computes the two heads' logits, the divergence and its sum. Each
chunk runs under activation checkpointing, so only the hidden states are kept for backward and the
chunk's logits are recomputed there: peak memory holds one ``[chunk, vocab]`` block per model.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from distill_toolkit.losses.registry import get


def chunked_lm_kd(hidden_S: Tensor, head_S: Callable[[Tensor], Tensor], hidden_T: Tensor,
                  head_T: Callable[[Tensor], Tensor], *, loss: str = "forward_kl", temperature: float = 1.0,
                  chunk_size: int = 1024, labels: Optional[Tensor] = None, **loss_kwargs) -> tuple[Tensor, Tensor]:
    """Sum over positions of ``loss(head_S(hidden_S), head_T(hidden_T))``, chunk by chunk.

    Args:
        hidden_S, hidden_T: ``(N, H_S)`` and ``(N, H_T)`` rows, already restricted to the positions
            that count (e.g. completion tokens, shifted for next-token prediction).
        head_S, head_T: the output heads (e.g. ``model.get_output_embeddings()``). The teacher's
            runs without gradients.
        loss: a logits loss from the registry (``forward_kl``, ``reverse_kl``, ``jsd``, ...).
        labels: optional ``(N,)`` target ids; then the student's cross-entropy sum is returned too.
        loss_kwargs: passed to the loss (e.g. ``beta`` for ``jsd``, ``top_k``).

    Returns:
        ``(kd_sum, ce_sum)``: sums over the ``N`` rows (``ce_sum`` is 0 without labels). Divide by
        the number of tokens of the whole batch (all micro-batches and ranks) for the mean.
    """
    if hidden_S.shape[0] != hidden_T.shape[0]:
        raise ValueError(f"chunked_lm_kd: student has {hidden_S.shape[0]} rows and teacher {hidden_T.shape[0]}; "
                         "both must be the same positions")
    loss_fn = get(loss)

    def chunk_loss(h_S: Tensor, h_T: Tensor, y: Optional[Tensor]) -> Tensor:
        logits_S = head_S(h_S).float()
        with torch.no_grad():
            logits_T = head_T(h_T).float()
        value = loss_fn(logits_S, logits_T, temperature, **loss_kwargs) * h_S.shape[0]
        ce = (torch.nn.functional.cross_entropy(logits_S, y, reduction="sum") if y is not None
              else logits_S.new_zeros(()))
        return torch.stack([value, ce])

    total = hidden_S.new_zeros(2, dtype=torch.float32)
    for start in range(0, hidden_S.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        y = labels[rows] if labels is not None else None
        if torch.is_grad_enabled() and hidden_S.requires_grad:
            total = total + checkpoint(chunk_loss, hidden_S[rows], hidden_T[rows], y, use_reentrant=False)
        else:
            total = total + chunk_loss(hidden_S[rows], hidden_T[rows], y)
    return total[0], total[1]
