"""Memory-safe KD over a large vocabulary: logits built and reduced a chunk of positions at a time.

The naive route materialises ``[positions, vocab]`` fp32 logits for both models, plus their
log-softmaxes and gradients (several GB for a 50k vocabulary and a few thousand tokens).
:func:`chunked_lm_kd` takes the *inputs of the output heads* (the final hidden states) instead,
and for each chunk of positions computes the two heads' logits, the divergence and its sum. Each
chunk runs under activation checkpointing, so only the hidden states are kept for backward and the
chunk's logits are recomputed there: peak memory holds one ``[chunk, vocab]`` block per model.

The teacher side may also be given as rows that are already distributions (dense logits, or a
top-k :class:`~distill_toolkit.losses.logits.SparseTeacher` read from a teacher cache), and a
ZeRO-3-partitioned teacher head is gathered once per call by :func:`materialised_head`.

Per-row temperatures (``flsw``/``cwsm`` schedules) are passed as an ``(N,)`` tensor; their
statistic over all rows is gathered a chunk at a time, without gradients, by
:func:`chunked_row_map`. ``shift_labels`` applies TextBrewer's probability shift to each chunk's
teacher logits.

Chunk size: by default as many positions as fit a memory budget, ``chunk_bytes`` (default
:data:`DEFAULT_CHUNK_BYTES`, 512 MiB) for the ``[chunk, vocab]`` temporaries of one chunk (about
eight fp32 blocks are alive at a time: both models' logits, log-probabilities, probabilities and
the gradient), so the chunk shrinks as the vocabulary grows (:func:`chunk_rows`); ``chunk_size``
(a number of positions) overrides it.

This is the reference route; :func:`~distill_toolkit.losses.fused.fused_lm_kd` computes the same
sums and gradients in one pass, with no recomputation in backward, and is the causal-LM default.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from distill_toolkit.losses.logits import SparseTeacher, probability_shift
from distill_toolkit.losses.registry import get


#: default memory budget for the ``[chunk, vocab]`` temporaries of one chunk (bytes)
DEFAULT_CHUNK_BYTES = 512 * 2**20
#: ``[chunk, vocab]`` blocks assumed alive at a time when sizing a chunk by ``chunk_bytes``
LIVE_BLOCKS = 8


def chunk_rows(vocab: int, chunk_size: Optional[int] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
               itemsize: int = 4) -> int:
    """Positions per chunk: ``chunk_size`` when given, else as many as fit ``chunk_bytes``.

    A chunk of ``c`` positions holds about :data:`LIVE_BLOCKS` ``[c, vocab]`` blocks of ``itemsize``
    bytes (fp32: 4), so ``c = chunk_bytes // (LIVE_BLOCKS * itemsize * vocab)``, at least 1. E.g. the
    default 512 MiB gives 341 positions for a 49,152-token vocabulary and 130 for 128,256.
    """
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size must be a positive number of positions or None (sized by chunk_bytes), "
                             f"got {chunk_size!r}")
        return chunk_size
    if isinstance(chunk_bytes, bool) or not isinstance(chunk_bytes, int) or chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be a positive number of bytes, got {chunk_bytes!r}; e.g. "
                         f"{DEFAULT_CHUNK_BYTES} (512 MiB)")
    return max(1, chunk_bytes // (LIVE_BLOCKS * itemsize * max(int(vocab), 1)))


def head_vocab(head: Callable[[Tensor], Tensor], hidden: Tensor) -> int:
    """Number of classes ``head`` produces: its ``out_features`` or weight rows, else one probe row's logits."""
    size = getattr(head, "out_features", None)
    if isinstance(size, int):
        return size
    weight = getattr(head, "weight", None)
    if isinstance(weight, Tensor) and weight.dim() == 2:
        return weight.shape[0]
    if hidden.shape[0] == 0:
        return 1
    with torch.no_grad():
        return head(hidden[:1]).shape[-1]


def _num_rows(x: Union[Tensor, SparseTeacher]) -> int:
    return (x.logprobs if isinstance(x, SparseTeacher) else x).shape[0]


def _slice(x: Union[Tensor, SparseTeacher], rows: slice):
    if isinstance(x, SparseTeacher):
        return SparseTeacher(*(None if t is None else t[rows] for t in x))
    return x[rows]


def _is_dtensor(x) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(x, DTensor)


@contextmanager
def materialised_head(head: nn.Module) -> Iterator[Callable[[Tensor], Tensor]]:
    """``head`` itself, or, when DeepSpeed ZeRO-3 or FSDP2 shards its parameters, a function over a full copy.

    A sharded head holds only its shard outside its owner's forward, and the chunked loss calls it
    a varying number of times per rank (once per chunk, again in backward). So its parameters are
    gathered once, here, on every rank together (a collective: call it once per micro-batch on all
    ranks), and copied, so that the recomputation in backward still finds them.
    """
    params = list(head.parameters())
    if any(_is_dtensor(p) for p in params):  # FSDP2: a sharded DTensor between forwards
        with torch.no_grad():
            full = {name: p.full_tensor() if _is_dtensor(p) else p.detach() for name, p in head.named_parameters()}
        yield lambda hidden: torch.nn.functional.linear(hidden, full["weight"], full.get("bias"))
        return
    if not any(hasattr(p, "ds_id") for p in params):
        yield head
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        weight = head.weight.detach().clone()
        bias = getattr(head, "bias", None)
        bias = None if bias is None else bias.detach().clone()
    yield lambda hidden: torch.nn.functional.linear(hidden, weight, bias)


def _chunk_logits(h_S: Tensor, head_S: Callable[[Tensor], Tensor], h_T, head_T: Optional[Callable[[Tensor], Tensor]],
                  shift: Optional[Tensor]):
    """The two heads' fp32 logits on one chunk (the teacher's without gradients), the teacher's probability-shifted."""
    logits_S = head_S(h_S).float()
    if head_T is None:
        logits_T = h_T if isinstance(h_T, SparseTeacher) else h_T.float()
    else:
        with torch.no_grad():
            logits_T = head_T(h_T).float()
    if shift is not None:
        logits_T = probability_shift(logits_T, shift)
    return logits_S, logits_T


def _check_rows(hidden_S: Tensor, hidden_T, temperature, shift_labels: Optional[Tensor], fn: str) -> None:
    n = hidden_S.shape[0]
    if n != _num_rows(hidden_T):
        raise ValueError(f"{fn}: student has {n} rows and teacher {_num_rows(hidden_T)}; both must be the same "
                         "positions")
    if isinstance(temperature, Tensor) and tuple(temperature.shape) != (n,):
        raise ValueError(f"{fn}: temperature tensor has shape {tuple(temperature.shape)}; give a float or one "
                         f"temperature per row, shape ({n},)")
    if shift_labels is not None and isinstance(hidden_T, SparseTeacher):
        raise ValueError(f"{fn}: shift_labels (probability shift) needs the teacher's full logits, but the teacher "
                         "is a top-k SparseTeacher. Fix: use dense teacher logits, or no probability shift")


def chunked_row_map(hidden_S: Tensor, head_S: Callable[[Tensor], Tensor], hidden_T: Union[Tensor, SparseTeacher],
                    head_T: Optional[Callable[[Tensor], Tensor]], fn: Callable[[Tensor, Any], Tensor], *,
                    chunk_size: Optional[int] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    shift_labels: Optional[Tensor] = None) -> Tensor:
    """``fn(logits_S, logits_T)``, one value per row, computed chunk by chunk without gradients: shape ``(N,)``.

    The per-row statistic of a temperature schedule over all ``N`` rows (e.g.
    :meth:`~distill_toolkit.schedulers.CentredTemperature.weights`), holding one chunk of logits at a
    time; arguments as :func:`chunked_lm_kd`.
    """
    _check_rows(hidden_S, hidden_T, 1.0, shift_labels, "chunked_row_map")
    step = chunk_rows(head_vocab(head_S, hidden_S), chunk_size, chunk_bytes)
    out = []
    with torch.no_grad():
        for start in range(0, hidden_S.shape[0], step):
            rows = slice(start, start + step)
            shift = None if shift_labels is None else shift_labels[rows]
            out.append(fn(*_chunk_logits(hidden_S[rows], head_S, _slice(hidden_T, rows), head_T, shift)))
    return torch.cat(out) if out else hidden_S.new_zeros(0, dtype=torch.float32)


def chunked_lm_kd(hidden_S: Tensor, head_S: Callable[[Tensor], Tensor], hidden_T: Union[Tensor, SparseTeacher],
                  head_T: Optional[Callable[[Tensor], Tensor]], *, loss: str = "forward_kl",
                  temperature: Union[float, Tensor] = 1.0, chunk_size: Optional[int] = None,
                  chunk_bytes: int = DEFAULT_CHUNK_BYTES, labels: Optional[Tensor] = None,
                  shift_labels: Optional[Tensor] = None, **loss_kwargs) -> tuple[Tensor, Tensor]:
    """Sum over positions of ``loss(head_S(hidden_S), head_T(hidden_T))``, chunk by chunk.

    Args:
        hidden_S, hidden_T: ``(N, H_S)`` and ``(N, H_T)`` rows, already restricted to the positions
            that count (e.g. completion tokens, shifted for next-token prediction).
        head_S, head_T: the output heads (e.g. ``model.get_output_embeddings()``). The teacher's
            runs without gradients. ``head_T=None``: ``hidden_T`` already holds the teacher's
            distribution per row, as logits ``(N, V)`` or a top-k ``SparseTeacher`` (teacher cache).
        loss: a logits loss from the registry (``forward_kl``, ``reverse_kl``, ``jsd``, ...).
        temperature: a float, or one temperature per row ``(N,)`` (a ``flsw``/``cwsm`` schedule's,
            whose statistics :func:`chunked_row_map` gathers over all rows, so the value does not
            depend on ``chunk_size``).
        chunk_size, chunk_bytes: positions per chunk, or (``chunk_size=None``) a memory budget for
            one chunk's ``[chunk, vocab]`` temporaries (see :func:`chunk_rows`).
        labels: optional ``(N,)`` target ids; then the student's cross-entropy sum is returned too.
        shift_labels: optional ``(N,)`` true target ids: each row's teacher logits get the
            probability shift (top logit swapped with the label's; see
            :func:`~distill_toolkit.losses.probability_shift`) before the loss. Dense teachers only.
        loss_kwargs: passed to the loss (e.g. ``beta`` for ``jsd``, ``top_k``).

    Returns:
        ``(kd_sum, ce_sum)``: sums over the ``N`` rows (``ce_sum`` is 0 without labels). Divide by
        the number of tokens of the whole batch (all micro-batches and ranks) for the mean.
    """
    _check_rows(hidden_S, hidden_T, temperature, shift_labels, "chunked_lm_kd")
    loss_fn = get(loss)

    def chunk_loss(h_S: Tensor, h_T, t, shift: Optional[Tensor], y: Optional[Tensor]) -> Tensor:
        logits_S, logits_T = _chunk_logits(h_S, head_S, h_T, head_T, shift)
        value = loss_fn(logits_S, logits_T, t, **loss_kwargs) * h_S.shape[0]
        ce = (torch.nn.functional.cross_entropy(logits_S, y, reduction="sum") if y is not None
              else logits_S.new_zeros(()))
        return torch.stack([value, ce])

    step = chunk_rows(head_vocab(head_S, hidden_S), chunk_size, chunk_bytes)
    total = hidden_S.new_zeros(2, dtype=torch.float32)
    for start in range(0, hidden_S.shape[0], step):
        rows = slice(start, start + step)
        args = (hidden_S[rows], _slice(hidden_T, rows), temperature[rows] if isinstance(temperature, Tensor)
                else temperature, None if shift_labels is None else shift_labels[rows],
                None if labels is None else labels[rows])
        if torch.is_grad_enabled() and hidden_S.requires_grad:
            total = total + checkpoint(chunk_loss, *args, use_reentrant=False)
        else:
            total = total + chunk_loss(*args)
    return total[0], total[1]
