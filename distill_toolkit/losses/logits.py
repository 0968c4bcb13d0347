"""Logits losses (registry kind ``"logits"``).

Every loss is ``fn(logits_S, logits_T, temperature=1, *, mask=None, ...)``:

* ``logits_S``, ``logits_T``: ``(..., num_classes)``, e.g. ``(batch, classes)`` or
  ``(batch, length, vocab)``.
* ``temperature``: a positive float, or a tensor of shape ``logits.shape[:-1]`` (one temperature
  per position, as the ``flsw``/``cwsm`` schedules produce). Both sides are divided by it.
* ``mask``: optional, shape ``logits.shape[:-1]``; 1/True keeps a position. Build one from
  labels with :func:`mask_from_labels`. The loss is a mean over kept positions ("rows"); masked
  rows do not enter the computation at all, so padding may hold anything (even NaN). With no
  kept row the loss is 0 (still attached to the graph).

Divergences are computed in fp32 (fp64 stays fp64) from log-softmax outputs, so large logits
and ``-inf`` logits (e.g. a padded vocabulary) give finite values and gradients.

Sparse (top-k) form
-------------------
The divergences (:func:`forward_kl`, :func:`reverse_kl`, :func:`jsd`, :func:`skew_kl`,
:func:`total_variation`) accept ``top_k=k``: the teacher's ``k`` most likely classes are kept
per row and everything else is pooled into one tail bucket (teacher tail = its remaining mass,
student tail = the student's mass outside those ``k`` classes). The divergence is then taken
over these ``k + 1`` buckets; with ``k == num_classes`` it equals the dense loss.

The teacher may also be passed as a :class:`SparseTeacher` (what a top-k teacher cache stores),
built with :func:`sparse_from_dense`. Its log-probabilities already include the temperature:
cache at the temperature you train with (or at T=1 and train at T=1); ``temperature`` is then
applied to the student only.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

Temperature = Union[float, Tensor]


class SparseTeacher(NamedTuple):
    """Top-k teacher distribution per position.

    Attributes:
        logprobs: ``(..., k)`` log-probabilities of the teacher's top-k classes (at the
            training temperature).
        indices: ``(..., k)`` class indices of those entries (int64).
        tail_logprob: ``(...)`` log of the remaining probability mass, or ``None`` to derive
            it as ``log(1 - sum(exp(logprobs)))`` (less accurate when the tail is tiny: the
            ``1 - sum`` cancels, so store the tail when you can).
    """

    logprobs: Tensor
    indices: Tensor
    tail_logprob: Optional[Tensor] = None


Teacher = Union[Tensor, SparseTeacher]


# ----------------------------------------------------------------------------- helpers


def mask_from_labels(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Bool mask that is True where ``labels != ignore_index`` (e.g. not ``-100`` padding)."""
    return labels != ignore_index


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _neg_floor(dtype: torch.dtype) -> float:
    # Finite stand-in for log(0): exp() of it is exactly 0, yet it keeps every
    # subtraction and gradient finite (log(0) = -inf would give NaNs).
    return torch.finfo(dtype).min


def _check_temperature(temperature: Temperature, row_shape: torch.Size, fn: str):
    """Return the temperature as a float or a tensor of ``row_shape``."""
    if isinstance(temperature, Tensor):
        if temperature.dim() == 0:
            return temperature
        if temperature.shape != row_shape:
            raise ValueError(
                f"{fn}: temperature tensor has shape {tuple(temperature.shape)}; it must be a "
                f"scalar or have the logits' shape without the class dimension {tuple(row_shape)}."
            )
        return temperature
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"{fn}: temperature must be a positive number or a tensor, got {temperature!r}.")
    return float(temperature)


def _check_mask(mask: Optional[Tensor], row_shape: torch.Size, fn: str) -> Optional[Tensor]:
    if mask is None:
        return None
    if mask.shape != row_shape:
        raise ValueError(
            f"{fn}: mask has shape {tuple(mask.shape)}; it must have the logits' shape without the "
            f"class dimension {tuple(row_shape)} (1/True = keep). For labels use mask_from_labels(labels)."
        )
    return mask.bool()


def _rows(x: Tensor, mask: Optional[Tensor], row_dims: int) -> Tensor:
    """Flatten the first ``row_dims`` dims of ``x`` into rows, keeping only masked-in rows."""
    if mask is not None:
        return x[mask]
    return x.reshape((-1,) + tuple(x.shape[row_dims:]))


def _prepare(logits_S: Tensor, temperature: Temperature, mask: Optional[Tensor], fn: str):
    """Validate shapes; return (row_shape, mask, temperature as float or (rows, 1) tensor)."""
    row_shape = logits_S.shape[:-1]
    mask = _check_mask(mask, row_shape, fn)
    temperature = _check_temperature(temperature, row_shape, fn)
    if isinstance(temperature, Tensor):
        if temperature.dim() == 0:
            temperature = temperature.to(_compute_dtype(logits_S))
        else:
            temperature = _rows(temperature, mask, len(row_shape)).to(_compute_dtype(logits_S)).unsqueeze(-1)
    return row_shape, mask, temperature


def _reduce(per_row: Tensor, anchor: Tensor) -> Tensor:
    """Mean over rows; 0 (attached to ``anchor``'s graph) when there is no row."""
    if per_row.numel() == 0:
        return anchor.sum() * 0.0
    return per_row.mean()


def _t2(per_row: Tensor, temperature) -> Tensor:
    if isinstance(temperature, Tensor):
        t = temperature.squeeze(-1) if temperature.dim() > 0 else temperature
        return per_row * t.pow(2)
    return per_row * temperature**2


def _log_softmax(logits: Tensor, temperature) -> Tensor:
    logp = F.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1)
    return logp.clamp(min=_neg_floor(logp.dtype))


def _log1m_exp_sum(logprobs: Tensor) -> Tensor:
    """``log(1 - sum(exp(logprobs)))`` over the last dim; a sum that rounds to >= 1 gives log(0)."""
    total = logprobs.logsumexp(dim=-1).exp().clamp(max=1.0)
    return torch.log1p(-total).clamp(min=_neg_floor(logprobs.dtype))


def _complement_logsumexp(logprobs: Tensor, indices: Tensor) -> Tensor:
    """Log of the mass of ``logprobs`` outside ``indices`` (exact: no ``1 - sum`` cancellation)."""
    rest = logprobs.scatter(-1, indices, _neg_floor(logprobs.dtype))
    return rest.logsumexp(dim=-1).clamp(min=_neg_floor(logprobs.dtype))


# ----------------------------------------------------------------------------- sparse teacher


def sparse_from_dense(logits_T: Tensor, k: int, temperature: Temperature = 1) -> SparseTeacher:
    """Top-k sparsify a teacher: keep the ``k`` largest log-probabilities at ``temperature``.

    Args:
        logits_T: ``(..., num_classes)`` teacher logits.
        k: number of classes kept per position (``1 <= k <= num_classes``).
        temperature: float or tensor of shape ``logits_T.shape[:-1]``; applied *before*
            sparsifying, so store the result at the temperature you will train with.

    Returns:
        ``SparseTeacher(logprobs (..., k), indices (..., k), tail_logprob (...))`` where the tail
        is the log of the teacher mass outside the top-k (a large negative number when it is 0).
    """
    num_classes = logits_T.size(-1)
    if not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ValueError(f"sparse_from_dense: k (top_k) must be an int in [1, {num_classes}], got {k!r}.")
    temperature = _check_temperature(temperature, logits_T.shape[:-1], "sparse_from_dense")
    if isinstance(temperature, Tensor) and temperature.dim() > 0:
        temperature = temperature.unsqueeze(-1)
    return _sparsify(_log_softmax(logits_T, temperature), k)


def _sparsify(log_p_T: Tensor, k: int) -> SparseTeacher:
    top_logprobs, top_indices = log_p_T.topk(k, dim=-1)
    return SparseTeacher(top_logprobs, top_indices, _complement_logsumexp(log_p_T, top_indices))


def _bucketize(log_p_S: Tensor, teacher: SparseTeacher) -> Tuple[Tensor, Tensor]:
    """Student/teacher log-probs over the teacher's k classes plus one tail bucket: (rows, k+1)."""
    dtype = log_p_S.dtype
    t_logprobs = teacher.logprobs.to(dtype).clamp(min=_neg_floor(dtype))
    indices = teacher.indices.long()
    if teacher.tail_logprob is None:
        t_tail = _log1m_exp_sum(t_logprobs)
    else:
        t_tail = teacher.tail_logprob.to(dtype).clamp(min=_neg_floor(dtype))
    s_top = log_p_S.gather(-1, indices)
    s_tail = _complement_logsumexp(log_p_S, indices)
    log_T = torch.cat([t_logprobs, t_tail.unsqueeze(-1)], dim=-1)
    log_S = torch.cat([s_top, s_tail.unsqueeze(-1)], dim=-1)
    return log_S, log_T


def _log_distributions(logits_S, logits_T, temperature, mask, top_k, fn):
    """Shared front end: rows of normalised student/teacher log-probs (dense or k+1 buckets)."""
    row_shape, mask, temp = _prepare(logits_S, temperature, mask, fn)
    row_dims = len(row_shape)
    s_rows = _rows(logits_S, mask, row_dims)
    log_p_S = _log_softmax(s_rows, temp)

    if isinstance(logits_T, SparseTeacher):
        k = logits_T.logprobs.size(-1)
        if logits_T.logprobs.shape[:-1] != row_shape or logits_T.indices.shape != logits_T.logprobs.shape:
            raise ValueError(
                f"{fn}: SparseTeacher logprobs/indices must have shape {tuple(row_shape)} + (k,), got "
                f"{tuple(logits_T.logprobs.shape)} and {tuple(logits_T.indices.shape)}."
            )
        if top_k is not None and top_k != k:
            raise ValueError(
                f"{fn}: top_k={top_k} but the SparseTeacher holds k={k} classes per position; "
                "pass top_k=None (or the cached k) when giving a SparseTeacher."
            )
        tail = logits_T.tail_logprob
        teacher = SparseTeacher(
            _rows(logits_T.logprobs, mask, row_dims),
            _rows(logits_T.indices, mask, row_dims),
            None if tail is None else _rows(tail, mask, row_dims),
        )
        return (*_bucketize(log_p_S, teacher), temp, s_rows)

    if logits_T.shape != logits_S.shape:
        raise ValueError(
            f"{fn}: logits_S {tuple(logits_S.shape)} and logits_T {tuple(logits_T.shape)} must have the "
            "same shape (different vocabularies need a vocabulary mapping first)."
        )
    t_rows = _rows(logits_T, mask, row_dims)
    if top_k is None:
        return log_p_S, _log_softmax(t_rows, temp), temp, s_rows
    num_classes = logits_S.size(-1)
    if not isinstance(top_k, int) or not 1 <= top_k <= num_classes:
        raise ValueError(f"{fn}: top_k must be None or an int in [1, {num_classes}], got {top_k!r}.")
    teacher = _sparsify(_log_softmax(t_rows, temp), top_k)
    return (*_bucketize(log_p_S, teacher), temp, s_rows)


def _kl_rows(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``KL(p || q)`` per row from log-probs; classes with p == 0 contribute exactly 0.

    Log-probs here are clamped to a finite floor (never -inf), so ``p * (log_p - log_q)`` is
    ``0 * finite`` where p == 0, and its gradient is finite too.
    """
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _log_mix(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """``log(weight_p * p + (1 - weight_p) * q)`` for ``0 < weight_p < 1``."""
    w = torch.tensor(weight_p, dtype=log_p.dtype, device=log_p.device)
    return torch.logaddexp(log_p + w.log(), log_q + torch.log1p(-w))


def _divergence_loss(per_row_fn: Callable[[Tensor, Tensor], Tensor], fn: str):
    """Build a public loss from a per-row divergence ``f(log_p_S, log_p_T) -> (rows,)``."""

    def loss(logits_S, logits_T, temperature=1, *, mask=None, top_k=None, t2_scaling=False):
        log_S, log_T, temp, s_rows = _log_distributions(logits_S, logits_T, temperature, mask, top_k, fn)
        per_row = per_row_fn(log_S, log_T)
        if t2_scaling:
            per_row = _t2(per_row, temp)
        return _reduce(per_row, s_rows)

    return loss


# ----------------------------------------------------------------------------- TextBrewer's


def kd_ce(logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, *, mask: Optional[Tensor] = None) -> Tensor:
    """Soft-target cross-entropy ``-sum_c p_T log p_S`` at ``temperature`` (TextBrewer ``kd_ce_loss``).

    Averaged over kept rows. Equals TextBrewer's value on the rows its ``logits_mask`` selects.
    """
    row_shape, mask, temp = _prepare(logits_S, temperature, mask, "kd_ce")
    s_rows = _rows(logits_S, mask, len(row_shape))
    t_rows = _rows(logits_T, mask, len(row_shape))
    p_T = _log_softmax(t_rows, temp).exp()
    per_row = -(p_T * _log_softmax(s_rows, temp)).sum(dim=-1)
    return _reduce(per_row, s_rows)


def kd_mse(logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, *, mask: Optional[Tensor] = None) -> Tensor:
    """MSE between temperature-scaled logits (TextBrewer ``kd_mse_loss``).

    The mean runs over kept rows x classes, as ``F.mse_loss`` on the selected rows does.
    """
    row_shape, mask, temp = _prepare(logits_S, temperature, mask, "kd_mse")
    dtype = _compute_dtype(logits_S)
    s_rows = _rows(logits_S, mask, len(row_shape)).to(dtype)
    t_rows = _rows(logits_T, mask, len(row_shape)).to(dtype)
    per_row = (s_rows / temp - t_rows / temp).pow(2).mean(dim=-1)
    return _reduce(per_row, s_rows)


# ----------------------------------------------------------------------------- divergences


_forward_kl = _divergence_loss(lambda log_S, log_T: _kl_rows(log_T, log_S), "forward_kl")
_reverse_kl = _divergence_loss(lambda log_S, log_T: _kl_rows(log_S, log_T), "reverse_kl")
_total_variation = _divergence_loss(
    lambda log_S, log_T: 0.5 * (log_T.exp() - log_S.exp()).abs().sum(dim=-1), "total_variation"
)


def forward_kl(
    logits_S: Tensor,
    logits_T: Teacher,
    temperature: Temperature = 1,
    *,
    mask: Optional[Tensor] = None,
    top_k: Optional[int] = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Forward KL ``KL(p_T || p_S)`` at ``temperature``: sum over classes, mean over kept rows.

    Args:
        logits_S: student logits ``(..., C)``.
        logits_T: teacher logits ``(..., C)`` or a :class:`SparseTeacher`.
        temperature: float or per-position tensor ``logits.shape[:-1]``.
        mask: optional keep-mask ``logits.shape[:-1]``.
        top_k: keep the teacher's top-k classes plus one tail bucket (see module docs).
        t2_scaling: multiply by ``T**2`` (Hinton et al.) so gradient size does not shrink with T.
    """
    return _forward_kl(logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling)


def reverse_kl(
    logits_S: Tensor,
    logits_T: Teacher,
    temperature: Temperature = 1,
    *,
    mask: Optional[Tensor] = None,
    top_k: Optional[int] = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Reverse KL ``KL(p_S || p_T)`` (mode-seeking, as in MiniLLM); arguments as :func:`forward_kl`."""
    return _reverse_kl(logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling)


def jsd(
    logits_S: Tensor,
    logits_T: Teacher,
    temperature: Temperature = 1,
    *,
    beta: float = 0.5,
    mask: Optional[Tensor] = None,
    top_k: Optional[int] = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024).

    With ``M = beta * p_T + (1 - beta) * p_S``::

        jsd = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)

    ``beta = 0.5`` is the symmetric JSD. The expression is identically 0 at ``beta = 0`` and
    ``beta = 1``; there, as in TRL's ``GKDTrainer`` and Liger's JSD, ``beta = 0`` returns the
    forward KL ``KL(p_T || p_S)`` and ``beta = 1`` the reverse KL ``KL(p_S || p_T)`` (for small
    ``beta``, ``jsd ~ beta * KL(p_T || p_S)``). Other arguments as :func:`forward_kl`.
    """
    if not isinstance(beta, (int, float)) or not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd: beta must be a number in [0, 1], got {beta!r}.")
    if beta == 0:
        return forward_kl(logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling)
    if beta == 1:
        return reverse_kl(logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling)

    def per_row(log_S, log_T):
        log_M = _log_mix(log_T, log_S, beta)
        return beta * _kl_rows(log_T, log_M) + (1 - beta) * _kl_rows(log_S, log_M)

    return _divergence_loss(per_row, "jsd")(
        logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling
    )


def skew_kl(
    logits_S: Tensor,
    logits_T: Teacher,
    temperature: Temperature = 1,
    *,
    alpha: float = 0.1,
    mask: Optional[Tensor] = None,
    top_k: Optional[int] = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Skew forward KL of DistiLLM (Ko et al., 2024): ``KL(p_T || alpha * p_T + (1 - alpha) * p_S)``.

    ``alpha = 0`` is the forward KL; ``alpha = 1`` is 0. Other arguments as :func:`forward_kl`.
    """
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"skew_kl: alpha must be a number in [0, 1], got {alpha!r}.")

    def per_row(log_S, log_T):
        if alpha == 0:
            log_mix = log_S
        elif alpha == 1:
            log_mix = log_T
        else:
            log_mix = _log_mix(log_T, log_S, alpha)
        return _kl_rows(log_T, log_mix)

    return _divergence_loss(per_row, "skew_kl")(
        logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling
    )


def total_variation(
    logits_S: Tensor,
    logits_T: Teacher,
    temperature: Temperature = 1,
    *,
    mask: Optional[Tensor] = None,
    top_k: Optional[int] = None,
    t2_scaling: bool = False,
) -> Tensor:
    """Total variation distance ``0.5 * sum_c |p_T - p_S|``; arguments as :func:`forward_kl`."""
    return _total_variation(logits_S, logits_T, temperature, mask=mask, top_k=top_k, t2_scaling=t2_scaling)


# ----------------------------------------------------------------------------- multi-label


def multilabel_kd(
    logits_S: Tensor, logits_T: Tensor, temperature: Temperature = 1, *, mask: Optional[Tensor] = None
) -> Tensor:
    """KD for multi-label outputs (independent sigmoids, one per label).

    Binary cross-entropy of ``sigmoid(logits_S / T)`` against the teacher's probabilities
    ``sigmoid(logits_T / T)``, averaged over labels and kept rows. Note the value includes the
    teacher's own binary entropy, so it is not 0 when the student matches the teacher.
    """
    row_shape, mask, temp = _prepare(logits_S, temperature, mask, "multilabel_kd")
    if logits_T.shape != logits_S.shape:
        raise ValueError(
            f"multilabel_kd: logits_S {tuple(logits_S.shape)} and logits_T {tuple(logits_T.shape)} "
            "must have the same shape."
        )
    dtype = _compute_dtype(logits_S)
    s_rows = _rows(logits_S, mask, len(row_shape)).to(dtype)
    t_rows = _rows(logits_T, mask, len(row_shape)).to(dtype)
    target = torch.sigmoid(t_rows / temp)
    per_row = F.binary_cross_entropy_with_logits(s_rows / temp, target, reduction="none").mean(dim=-1)
    return _reduce(per_row, s_rows)


# ----------------------------------------------------------------------------- teacher transforms


def probability_shift(logits_T: Tensor, labels: Tensor) -> Tensor:
    """Swap the teacher's top logit with the true label's, so the teacher's argmax is the label (TextBrewer).

    Works on rows ``(N, C)`` with labels ``(N,)``; labels ``< 0`` (ignored positions) are left unchanged.
    Returns a new tensor; ``logits_T`` is not modified.
    """
    logits_T = logits_T.clone()
    rows = torch.arange(logits_T.size(0), device=logits_T.device)
    top = logits_T.argmax(dim=-1)
    target = torch.where(labels < 0, top, labels)
    top_value = logits_T[rows, top].clone()
    target_value = logits_T[rows, target].clone()
    logits_T[rows, top] = target_value
    logits_T[rows, target] = top_value
    return logits_T
