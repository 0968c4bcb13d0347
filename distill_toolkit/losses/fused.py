"""Fused output head + divergence for causal-LM KD: logits, loss and gradients in one pass.

:func:`fused_lm_kd` computes what :func:`~distill_toolkit.losses.chunked.chunked_lm_kd` computes (the
sum over positions of a registry divergence between the two heads' distributions, and the student's
next-token cross-entropy sum) from the final hidden states, a chunk of positions at a time, but
differentiates each chunk *while it is in memory*: per chunk it builds the student's logits
``x_S @ W_S^T (+ b)`` and the teacher's (without gradients), the divergence, its gradient with respect
to the student's logits in closed form (:mod:`~distill_toolkit.losses.divergence_grads`; the
cross-entropy's is ``softmax - onehot``), and from it ``d/dx_S = dz @ W_S`` for the chunk's rows and
``d/dW_S += dz^T @ x_S`` (``d/db += sum dz``). A ``torch.autograd.Function`` keeps only these
gradients, ``grad_hidden (N, H)`` and ``grad_W (V, H)`` (and ``grad_b``), and its backward multiplies
them by the incoming gradient: no activation checkpointing, no recomputation of the logits in
backward, one ``[chunk, V]`` block per quantity alive at a time.

Weights of the two terms: with ``weights=(w_kd, w_ce)`` (what ``KDObjective.token_kd`` passes, the
scheduled weights of the step) one combined gradient ``w_kd * dKD + w_ce * dCE`` is stored, and the
backward expects the incoming gradients of ``(kd_sum, ce_sum)`` to be proportional to
``(w_kd, w_ce)`` (a loss ``w_kd * kd + w_ce * ce``, scaled by anything): anything else is an error,
not a silent wrong gradient. Without ``weights`` each term keeps its own gradients (twice the memory
with labels), and the two outputs can be used freely.

Precision: the logits are computed in the head's dtype (or autocast's) and every divergence in fp32
(fp64 when the head is fp64), as the registry does; ``grad_W`` accumulates in fp32 (fp64).

Only the student head needs its weight: the teacher head may be any callable (a module, or the
gathered copy that :func:`~distill_toolkit.losses.chunked.materialised_head` gives for a ZeRO-3/FSDP2
teacher), or ``None`` with the teacher's rows given (dense logits or a top-k ``SparseTeacher``). The
student head must be a plain ``nn.Linear``; its ``weight`` Parameter is an input of the Function, so
when it is tied to the input embeddings autograd adds the head's share to the embedding's gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from distill_toolkit.losses import logits as L
from distill_toolkit.losses.chunked import DEFAULT_CHUNK_BYTES, _check_rows, _slice, chunk_rows
from distill_toolkit.losses.divergence_grads import FUSED_FUNCTIONS, Divergence, divergence_for, logit_grad
from distill_toolkit.losses.logits import SparseTeacher, probability_shift
from distill_toolkit.losses.registry import get

IGNORE_INDEX = -100


def fused_supported(loss: str, head_S) -> bool:
    """Whether :func:`fused_lm_kd` can compute ``loss`` with ``head_S``: a registry divergence with a closed
    form here (``forward_kl``/``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``total_variation``/``tv``,
    ``kd_ce``; not a user's loss registered over one of these names) and a plain ``nn.Linear`` head without
    forward hooks, whose weight is a whole tensor (not a ZeRO-3 or FSDP2 shard)."""
    try:
        fn = get(loss)
    except (KeyError, ValueError):
        return False
    if fn not in FUSED_FUNCTIONS or type(head_S) is not nn.Linear:
        return False
    if head_S._forward_hooks or head_S._forward_pre_hooks or hasattr(head_S, "_hf_hook"):
        return False  # something changes what the head computes: call it (the chunked route)
    weight = head_S.weight
    return not hasattr(weight, "ds_id") and type(weight) in (Tensor, nn.Parameter)


@dataclass
class _Plan:
    """Everything the chunk loop reads besides the student's inputs."""

    hidden_T: Union[Tensor, SparseTeacher]
    head_T: Optional[Callable[[Tensor], Tensor]]
    divergence: Divergence
    temperature: Union[float, Tensor]  # a float, or (N, 1) in ``dtype``
    labels: Optional[Tensor]
    shift_labels: Optional[Tensor]
    rows: int
    weights: Optional[tuple[float, float]]
    dtype: torch.dtype

    def terms(self) -> int:
        """How many gradients are stored: one combined, or one per term (KD, and CE with labels)."""
        return 1 if self.weights is not None or self.labels is None else 2


def fused_lm_kd(hidden_S: Tensor, head_S: nn.Linear, hidden_T: Union[Tensor, SparseTeacher],
                head_T: Optional[Callable[[Tensor], Tensor]], *, loss: str = "forward_kl",
                temperature: Union[float, Tensor] = 1.0, chunk_size: Optional[int] = None,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES, labels: Optional[Tensor] = None,
                shift_labels: Optional[Tensor] = None, weights: Optional[tuple[float, float]] = None,
                **loss_kwargs) -> tuple[Tensor, Tensor]:
    """``(kd_sum, ce_sum)`` as :func:`~distill_toolkit.losses.chunked.chunked_lm_kd`, with fused gradients.

    Args:
        hidden_S: ``(N, H_S)`` student rows (the positions that count).
        head_S: the student's output head, an ``nn.Linear`` (``model.get_output_embeddings()``).
        hidden_T, head_T: the teacher's ``(N, H_T)`` rows and its head (any callable, run without
            gradients), or ``head_T=None`` and the teacher's rows as logits ``(N, V)`` or a ``SparseTeacher``.
        loss: ``forward_kl``/``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``total_variation``/``tv`` or
            ``kd_ce`` (see :func:`fused_supported`); ``loss_kwargs`` as the registry's (``beta``, ``alpha``,
            ``top_k``, ``t2_scaling``).
        temperature: a float, or one temperature per row ``(N,)``; not differentiated.
        chunk_size, chunk_bytes: positions per chunk, or a budget for one chunk's ``[chunk, V]``
            temporaries (:func:`~distill_toolkit.losses.chunked.chunk_rows`).
        labels: optional ``(N,)`` next tokens (``-100`` ignored): then ``ce_sum`` is the student's CE sum.
        shift_labels: optional ``(N,)`` true tokens for the probability shift (dense teachers only).
        weights: optional ``(w_kd, w_ce)``: store one combined gradient (see the module docstring).

    Returns:
        ``(kd_sum, ce_sum)`` (``ce_sum`` is 0 without labels), fp32 (fp64 for an fp64 head).
    """
    _check_rows(hidden_S, hidden_T, temperature, shift_labels, "fused_lm_kd")
    if not fused_supported(loss, head_S):
        raise ValueError(f"fused_lm_kd: cannot fuse loss {loss!r} with a {type(head_S).__name__} student head; it "
                         "needs one of forward_kl, reverse_kl, jsd, skew_kl, total_variation, kd_ce and a plain, "
                         "unsharded nn.Linear. Fix: use distill_toolkit.losses.chunked.chunked_lm_kd")
    divergence = divergence_for(get(loss), loss, loss_kwargs)
    weight, bias = head_S.weight, head_S.bias
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    _check_teacher(hidden_T, head_T, divergence, weight.shape[0], labels, hidden_S.shape[0])
    plan = _Plan(hidden_T, head_T, divergence, _temperature(temperature, dtype), labels, shift_labels,
                 chunk_rows(weight.shape[0], chunk_size, chunk_bytes, torch.finfo(dtype).bits // 8),
                 None if weights is None else (float(weights[0]), float(weights[1])), dtype)
    inputs = (hidden_S, weight, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        values = _FusedHeadKD.apply(hidden_S, weight, bias, plan)
    else:
        with torch.no_grad():
            values, _ = _sweep(plan, hidden_S, weight, bias, (False, False, False))
    return values[0], values[1]


def _temperature(temperature, dtype: torch.dtype) -> Union[float, Tensor]:
    if isinstance(temperature, Tensor):
        return temperature.detach().to(dtype).unsqueeze(-1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ValueError(f"fused_lm_kd: temperature must be a positive number or a tensor, got {temperature!r}.")
    return float(temperature)


def _check_teacher(hidden_T, head_T, divergence: Divergence, vocab: int, labels, n: int) -> None:
    """The teacher's rows against the loss and the vocabulary, as the registry checks them."""
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"fused_lm_kd: labels have shape {tuple(labels.shape)}; give one next token per row, ({n},)")
    if isinstance(hidden_T, SparseTeacher):
        k = hidden_T.logprobs.shape[-1]
        if divergence.kind == "kd_ce":
            raise ValueError("fused_lm_kd: kd_ce needs the teacher's full logits, not a top-k SparseTeacher. "
                             "Fix: use forward_kl (the same gradient), or a dense teacher")
        if hidden_T.logprobs.dim() != 2 or hidden_T.indices.shape != hidden_T.logprobs.shape:
            raise ValueError(f"fused_lm_kd: SparseTeacher logprobs/indices must both be (N, k), got "
                             f"{tuple(hidden_T.logprobs.shape)} and {tuple(hidden_T.indices.shape)}.")
        if divergence.top_k is not None and divergence.top_k != k:
            raise ValueError(f"fused_lm_kd: top_k={divergence.top_k} but the SparseTeacher holds k={k} classes per "
                             "position; pass top_k=None (or the cached k) when giving a SparseTeacher.")
        return
    if head_T is None and hidden_T.shape[-1] != vocab:
        raise ValueError(f"fused_lm_kd: teacher logits have {hidden_T.shape[-1]} classes and the student head "
                         f"{vocab}; they must be the same vocabulary")
    top_k = divergence.top_k
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab):
        raise ValueError(f"fused_lm_kd: top_k must be None or an int in [1, {vocab}], got {top_k!r}.")


class _FusedHeadKD(torch.autograd.Function):
    """``(kd_sum, ce_sum)`` of ``(hidden_S, weight, bias)``; the forward stores the gradients, the
    backward scales them by the incoming gradient."""

    @staticmethod
    def forward(ctx, hidden_S: Tensor, weight: Tensor, bias: Optional[Tensor], plan: _Plan) -> Tensor:
        """``(kd_sum, ce_sum)``; the gradients of the inputs that need one are kept on ``ctx``."""
        need = tuple(ctx.needs_input_grad[:3])
        values, ctx.grads = _sweep(plan, hidden_S, weight, bias, need)
        ctx.weights, ctx.has_ce = plan.weights, plan.labels is not None
        ctx.dtypes = (hidden_S.dtype, weight.dtype, None if bias is None else bias.dtype)
        return values

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values: Tensor):
        """The stored gradients times the incoming ones (no recomputation), scaled in place and handed over
        to autograd (so it can keep them as ``.grad`` without a copy): a second backward is an error."""
        if ctx.grads is None:
            raise RuntimeError("fused_lm_kd: backward ran twice through the same loss; its stored gradients were "
                               "handed over the first time. Fix: compute the loss again for a second backward "
                               "(retain_graph does not keep them)")
        scales = _scales(grad_values, ctx.weights, ctx.has_ce)
        grads, ctx.grads = ctx.grads, None
        out = []
        for i, dtype in enumerate(ctx.dtypes):
            parts = [term[i] for term in grads]
            out.append(None if parts[0] is None else _scaled_sum(parts, scales, dtype))
        del grads, parts
        return (*out, None)


def _scales(grad_values: Tensor, weights, has_ce: bool) -> list[float]:
    """The factor of each stored gradient, from the incoming gradients of ``(kd_sum, ce_sum)``."""
    g_kd, g_ce = grad_values.detach().double().tolist()
    if weights is None:
        return [g_kd, g_ce] if has_ce else [g_kd]
    a, b = weights[0], (weights[1] if has_ce else 0.0)
    norm = a * a + b * b
    if norm == 0:
        return [0.0]
    s = (a * g_kd + b * g_ce) / norm
    residual = abs(g_kd - s * a) + (abs(g_ce - s * b) if has_ce else 0.0)
    if residual > 1e-5 * (abs(g_kd) + abs(g_ce)) + 1e-30:
        raise RuntimeError(
            f"fused_lm_kd was given weights=({a}, {b}) and stored the gradient of {a} * kd + {b} * ce only, but "
            f"backward received gradients ({g_kd}, {g_ce}) for (kd, ce), not proportional to them. Fix: "
            "differentiate a loss weight_kd * kd + weight_ce * ce with the weights passed, or pass weights=None")
    return [s]


def _scaled_sum(parts: list, scales: list, dtype: torch.dtype) -> Tensor:
    """``sum(scale * part)`` in ``dtype``, written into the first part (no new ``vocab x hidden`` block)."""
    out = parts[0] if scales[0] == 1.0 else parts[0].mul_(scales[0])
    for part, scale in zip(parts[1:], scales[1:]):
        out.add_(part, alpha=scale)
    return out.to(dtype)


def _sweep(plan: _Plan, x: Tensor, weight: Tensor, bias: Optional[Tensor], need: tuple) -> tuple[Tensor, list]:
    """The chunk loop: ``(values (2,), [(grad_hidden, grad_W, grad_b) per stored term])``."""
    acc = plan.dtype if weight.dtype == torch.float64 else torch.float32
    terms = [(torch.empty_like(x) if need[0] else None,
              torch.zeros(weight.shape, dtype=acc, device=weight.device) if need[1] else None,
              torch.zeros(bias.shape, dtype=acc, device=bias.device) if need[2] else None)
             for _ in range(plan.terms())]
    total = torch.zeros(2, dtype=plan.dtype, device=x.device)
    for start in range(0, x.shape[0], plan.rows):
        rows = slice(start, start + plan.rows)
        z = F.linear(x[rows], weight, bias)
        mm_dtype = z.dtype
        kd, ce, dz_kd, dz_ce = _chunk(plan, rows, z.to(plan.dtype))
        total += torch.stack([kd, ce])
        if any(need):
            for term, dz in zip(terms, _term_grads(plan, dz_kd, dz_ce)):
                _accumulate(term, dz, mm_dtype, x[rows], weight, rows)
    return total, terms


def _term_grads(plan: _Plan, dz_kd: Tensor, dz_ce: Optional[Tensor]) -> list[Tensor]:
    """``d/dlogits`` of each stored term: ``[KD, CE]`` apart, or ``w_kd * KD + w_ce * CE`` combined."""
    if plan.weights is None:
        return [dz_kd] if dz_ce is None else [dz_kd, dz_ce]
    a, b = plan.weights
    if a != 1.0:
        dz_kd.mul_(a)
    if dz_ce is not None and b != 0.0:
        dz_kd.add_(dz_ce, alpha=b)
    return [dz_kd]


def _accumulate(term: tuple, dz: Tensor, mm_dtype: torch.dtype, x: Tensor, weight: Tensor, rows: slice) -> None:
    """Add one chunk's ``dz`` (rows, V) to the stored gradients: ``dz @ W`` for the rows, ``dz^T @ x``, ``sum dz``."""
    g_h, g_W, g_b = term
    if g_b is not None:
        g_b.add_(dz.sum(0).to(g_b.dtype))
    dz = dz.to(mm_dtype)
    if g_h is not None:
        g_h[rows] = (dz @ weight).to(g_h.dtype)
    if g_W is not None:
        if g_W.dtype == dz.dtype == x.dtype:
            g_W.addmm_(dz.t(), x)
        else:  # bf16/fp16 (or autocast) matmul, fp32 accumulation
            g_W.add_(dz.t() @ x)


def _chunk(plan: _Plan, rows: slice, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
    """One chunk from the student's logits ``z`` (rows, V), in ``plan.dtype`` and owned here (modified in
    place): ``(kd_sum, ce_sum, dKD/dz, dCE/dz or None)``."""
    t = plan.temperature
    t = t[rows] if isinstance(t, Tensor) else t
    unit = isinstance(t, float) and t == 1.0
    y = None if plan.labels is None else plan.labels[rows]
    ce, dz_ce = z.new_zeros(()), None
    if y is not None and not unit:  # the CE is at T = 1: take it before scaling the logits
        ce, dz_ce = _cross_entropy(z - z.logsumexp(-1, keepdim=True), y)
    s = z if unit else z.div_(t)
    log_q = s.sub_(s.logsumexp(-1, keepdim=True))  # in place: no copy of the logits
    q = log_q.exp()
    if y is not None and unit:
        ce, dz_ce = _cross_entropy(log_q, y, q.clone())
    kd, dz_kd = _kd(plan, rows, log_q, q, t)
    return kd, ce, dz_kd, dz_ce


def _cross_entropy(log_q: Tensor, y: Tensor, q: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """CE sum over rows whose label is not -100, and its gradient ``softmax - onehot`` (0 on ignored rows).
    ``q`` is a copy of ``exp(log_q)`` to write the gradient into; without it ``log_q`` itself is used."""
    valid = y != IGNORE_INDEX
    target = y.masked_fill(~valid, 0).long().unsqueeze(-1)
    keep = valid.to(log_q.dtype).unsqueeze(-1)
    ce = -(log_q.gather(-1, target) * keep).sum()
    grad = log_q.exp_() if q is None else q
    grad.scatter_add_(-1, target, -keep)
    if not bool(valid.all()):
        grad.mul_(keep)
    return ce, grad


def _kd(plan: _Plan, rows: slice, log_q: Tensor, q: Tensor, t) -> tuple[Tensor, Tensor]:
    """The divergence's sum over the chunk's rows and its gradient with respect to the raw logits."""
    div = plan.divergence
    teacher = _teacher_rows(plan, rows, t)
    if isinstance(teacher, SparseTeacher):
        indices, (log_p_top, log_p_tail) = teacher.indices, (teacher.logprobs, teacher.tail_logprob)
        log_q_top = log_q.gather(-1, indices)
        log_q_tail = L._complement_logsumexp(log_q, indices)
        log_Q = torch.cat([log_q_top, log_q_tail.unsqueeze(-1)], dim=-1)
        log_P = torch.cat([log_p_top, log_p_tail.unsqueeze(-1)], dim=-1)
        per_row, A = div.rows_and_grad(log_Q, log_Q.exp(), log_P, log_P.exp())
        grad = logit_grad(A, q, log_q, indices, log_q_top, log_q_tail)
    else:
        per_row, A = div.rows_and_grad(log_q, q, teacher, teacher.exp())
        grad = logit_grad(A, q)
    if isinstance(t, float) and t == 1.0:
        return per_row.sum(), grad
    if div.t2_scaling:  # value * T^2; d/dz = d/ds / T * T^2
        return (per_row * (t.squeeze(-1) ** 2 if isinstance(t, Tensor) else t ** 2)).sum(), grad.mul_(t)
    return per_row.sum(), grad.div_(t)


def _teacher_rows(plan: _Plan, rows: slice, t) -> Union[Tensor, SparseTeacher]:
    """The chunk's teacher: dense log-probabilities at ``t`` (rows, V), or top-k buckets as a ``SparseTeacher``
    of (rows, k) log-probs, int64 indices and the (rows,) tail, in ``plan.dtype`` with the registry's floors."""
    floor = L._neg_floor(plan.dtype)
    h_T = _slice(plan.hidden_T, rows)
    if isinstance(h_T, SparseTeacher):  # already at the training temperature (a cache): the student's alone
        top = h_T.logprobs.to(plan.dtype).clamp(min=floor)
        tail = (L._log1m_exp_sum(top) if h_T.tail_logprob is None
                else h_T.tail_logprob.to(plan.dtype).clamp(min=floor))
        return SparseTeacher(top, h_T.indices.long(), tail)
    with torch.no_grad():
        logits_T = (h_T if plan.head_T is None else plan.head_T(h_T)).to(plan.dtype)
    if plan.shift_labels is not None:
        logits_T = probability_shift(logits_T, plan.shift_labels[rows])
    unit = isinstance(t, float) and t == 1.0
    # the floor only turns log(0) (a -inf teacher logit, e.g. a padded vocabulary) into a finite number, as the
    # registry does, so that 0 * log 0 terms are 0; finite logits are untouched
    log_p = F.log_softmax(logits_T if unit else logits_T / t, dim=-1).clamp_(min=floor)
    if plan.divergence.top_k is None:
        return log_p
    return L._sparsify(log_p, plan.divergence.top_k)
