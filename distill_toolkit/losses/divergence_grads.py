"""Closed-form divergences for the fused causal-LM KD (:mod:`distill_toolkit.losses.fused`).

Each divergence of the registry that compares two distributions (``forward_kl``, ``reverse_kl``,
``jsd``, ``skew_kl``, ``total_variation``, and TextBrewer's soft cross-entropy ``kd_ce``) is written
here as a function of rows of log-probabilities ``log_q`` (student) and ``log_p`` (teacher), dense
``(rows, V)`` or over the ``k + 1`` buckets of the top-k form, returning

* the per-row value, exactly the registry's expression (same ``_log_mix``, same order of terms), and
* ``A = dL / d(log q)``, the gradient with respect to the student's log-probabilities, in closed form.

With ``q = softmax(s)`` the gradient with respect to the (temperature-scaled) logits is then
``dL/ds = A - q * sum(A)`` (dense); :func:`logit_grad` applies it, and for the top-k form routes the
tail bucket's share back to the classes it pools (see its docstring). In terms of ``p``/``q``::

    forward_kl   KL(p || q)                  A = -p
    reverse_kl   KL(q || p)                  A = q (log q - log p + 1)
    jsd(beta)    beta KL(p||m) + (1-beta) KL(q||m),  m = beta p + (1-beta) q
                                             A = (1-beta) q (log q - log m)
    skew_kl(a)   KL(p || m),  m = a p + (1-a) q
                                             A = -(1-a) p q / m
    total_var.   0.5 sum |p - q|             A = 0.5 q sign(q - p)
    kd_ce        -sum p log q                A = -p

``jsd`` at ``beta = 0``/``1`` is the forward/reverse KL and ``skew_kl`` at ``alpha = 0`` the forward
KL, as in :mod:`~distill_toolkit.losses.logits`; ``skew_kl`` at ``alpha = 1`` is identically 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from distill_toolkit.losses import logits as L

#: registry function -> name of its closed form here (aliases such as ``kl``/``tv`` resolve to the same function)
FUSED_FUNCTIONS: dict[Callable, str] = {
    L.forward_kl: "forward_kl", L.reverse_kl: "reverse_kl", L.jsd: "jsd", L.skew_kl: "skew_kl",
    L.total_variation: "total_variation", L.kd_ce: "kd_ce",
}
_ARGUMENTS = {"forward_kl": {"top_k", "t2_scaling"}, "reverse_kl": {"top_k", "t2_scaling"},
              "total_variation": {"top_k", "t2_scaling"}, "jsd": {"beta", "top_k", "t2_scaling"},
              "skew_kl": {"alpha", "top_k", "t2_scaling"}, "kd_ce": set()}


@dataclass(frozen=True)
class Divergence:
    """A closed-form divergence: ``kind`` (``forward_kl``, ``reverse_kl``, ``jsd``, ``skew_kl``,
    ``total_variation``, ``kd_ce`` or ``zero``), its mixing weight (``beta``/``alpha``), ``top_k`` and
    ``t2_scaling`` as the registry's keyword arguments."""

    kind: str
    weight: float = 0.5
    top_k: Optional[int] = None
    t2_scaling: bool = False

    def rows_and_grad(self, log_q: Tensor, q: Tensor, log_p: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """``(per-row value (rows,), A = dL/dlog_q (rows, C))``; ``A`` is a new tensor (safe to modify)."""
        return _FORMS[self.kind](self, log_q, q, log_p, p)


def divergence_for(fn: Callable, name: str, kwargs: dict) -> Divergence:
    """The closed form of registry function ``fn`` (called ``name``) with its keyword arguments, checked as
    the registry checks them. ``fn`` must be one of :data:`FUSED_FUNCTIONS`."""
    kind = FUSED_FUNCTIONS[fn]
    unknown = sorted(set(kwargs) - _ARGUMENTS[kind])
    if unknown:
        raise TypeError(f"fused_lm_kd: loss {name!r} takes no argument {unknown[0]!r} (it takes "
                        f"{', '.join(sorted(_ARGUMENTS[kind])) or 'none'}); the rows are already selected, so no mask")
    top_k, t2 = kwargs.get("top_k"), bool(kwargs.get("t2_scaling", False))
    if kind in ("jsd", "skew_kl"):
        arg = "beta" if kind == "jsd" else "alpha"
        w = kwargs.get(arg, 0.5 if kind == "jsd" else 0.1)
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0.0 <= w <= 1.0:
            raise ValueError(f"{kind}: {arg} must be a number in [0, 1], got {w!r}.")
        if w == 0:
            return Divergence("forward_kl", top_k=top_k, t2_scaling=t2)
        if w == 1:
            return Divergence("reverse_kl" if kind == "jsd" else "zero", top_k=top_k, t2_scaling=t2)
        return Divergence(kind, float(w), top_k, t2)
    return Divergence(kind, top_k=top_k, t2_scaling=t2)


def _log_mix(log_p: Tensor, log_q: Tensor, w: float) -> Tensor:
    return L._log_mix(log_p, log_q, w)  # log(w p + (1 - w) q), the registry's own


def _forward(div, log_q, q, log_p, p):
    return (p * (log_p - log_q)).sum(-1), p.neg()


def _kd_ce(div, log_q, q, log_p, p):
    return -(p * log_q).sum(-1), p.neg()


def _reverse(div, log_q, q, log_p, p):
    d = log_q - log_p
    value = (q * d).sum(-1)
    return value, d.add_(1).mul_(q)


def _jsd(div, log_q, q, log_p, p):
    beta = div.weight
    log_m = _log_mix(log_p, log_q, beta)
    value = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (q * (log_q - log_m)).sum(-1)
    return value, log_m.neg_().add_(log_q).mul_(q).mul_(1 - beta)


def _skew(div, log_q, q, log_p, p):
    alpha = div.weight
    log_m = _log_mix(log_p, log_q, alpha)
    value = (p * (log_p - log_m)).sum(-1)
    return value, log_m.neg_().add_(log_q).exp_().mul_(p).mul_(-(1 - alpha))


def _total_variation(div, log_q, q, log_p, p):
    diff = q - p
    value = 0.5 * diff.abs().sum(-1)
    return value, diff.sign_().mul_(q).mul_(0.5)


def _zero(div, log_q, q, log_p, p):
    return (p * (log_p - log_p)).sum(-1), torch.zeros_like(q)


_FORMS = {"forward_kl": _forward, "reverse_kl": _reverse, "jsd": _jsd, "skew_kl": _skew,
          "total_variation": _total_variation, "kd_ce": _kd_ce, "zero": _zero}


def logit_grad(A: Tensor, q: Tensor, log_q: Optional[Tensor] = None, indices: Optional[Tensor] = None,
               log_q_top: Optional[Tensor] = None, log_q_tail: Optional[Tensor] = None) -> Tensor:
    """``dL/ds`` (rows, V) from ``A = dL/dlog Q`` and the student's softmax ``q = softmax(s)``.

    Dense (``indices=None``): ``A`` is (rows, V) and ``dL/ds = A - q sum(A)``, written into ``A``.

    Top-k form: ``A`` is (rows, k + 1) over the buckets ``Q = (q[indices], Q_tail)``, with
    ``log Q_tail = logsumexp(log q outside indices)``. Since ``dlog Q_b/ds_j = [j in b] q_j / Q_b - q_j``,
    a top class gets ``A_i - q_j sum(A)`` and a tail class ``exp(log q_j - log Q_tail) A_tail - q_j sum(A)``
    (the ratio is at most 1, so nothing overflows however small the tail is).
    """
    total = A.sum(-1, keepdim=True)
    if indices is None:
        return A.addcmul_(q, total, value=-1)
    grad = (log_q - log_q_tail.unsqueeze(-1)).exp_().mul_(A[:, -1:])  # top classes: overwritten below
    grad.addcmul_(q, total, value=-1)
    grad.scatter_(-1, indices, log_q_top.exp().mul_(total).neg_())
    return grad.scatter_add_(-1, indices, A[:, :-1].contiguous())
