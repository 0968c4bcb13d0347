"""Per-example records and the batch payload: real positions only on the way in, re-padded on the way out.

A cache stores, per example, only the teacher's real (non-padding) positions; :func:`compact` cuts them
out of a batch and :func:`expand` scatters them back into another batch's padded layout, so a cache does
not depend on batch size, padding side or padding length. Tensors are named ``logits.i`` (dense head
``i``), ``topk.i.logprobs`` / ``topk.i.indices`` / ``topk.i.tail`` (top-k head ``i``) and
``feature.KEY``; a *layout* says which dims of a name run over positions and whether they are shifted
by one (causal LM: position t predicts token t + 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch

from distill_toolkit.batch import TEACHER, TEACHER_CACHE, batch_task, model_inputs
from distill_toolkit.data.cache.errors import REBUILD, TeacherCacheError
from distill_toolkit.data.cache.ragged import FLOOR, unpack, width
from distill_toolkit.features import ModelView
from distill_toolkit.losses.logits import SparseTeacher, sparse_from_dense

__all__ = ["assemble_payload", "cached_view", "compact", "expand", "layouts_of", "sequence_mask",
           "view_from_payload", "view_tensors"]

_LOGITS = ("logits.", "topk.", "sampled.")
_SEQUENCE_LEVEL_TASKS = ("sequence_classification", "multilabel_classification")
#: top-k head fields: (name in the payload, suffix of the stored tensor)
_TOPK_PARTS = (("logprobs", "logprobs"), ("indices", "indices"), ("tail_logprob", "tail"))


def sequence_mask(batch: Mapping) -> Optional[torch.Tensor]:
    """``(B, L)`` mask of the teacher's real positions (all ones without an attention mask)."""
    inputs = model_inputs(batch, TEACHER)
    mask = inputs.get("attention_mask")
    if mask is not None:
        return mask.bool()
    ids = inputs.get("input_ids")
    return None if not isinstance(ids, torch.Tensor) or ids.dim() != 2 else torch.ones_like(ids, dtype=torch.bool)


def _seq_layout(name: str, tensor: torch.Tensor, length: Optional[int], task: str) -> dict:
    """Which dims of a per-example tensor run over positions, and whether they are shifted (causal LM)."""
    none = {"dims": [], "shift": False}
    if length is None or tensor.dim() < 2:
        return none
    if name.startswith("feature.attention:"):
        return {"dims": [1, 2], "shift": False} if tensor.dim() == 4 and tensor.shape[2] == length else none
    if name.startswith(("feature.query:", "feature.key:", "feature.value:")):  # (B, heads, L, head_dim)
        return {"dims": [1], "shift": False} if tensor.dim() == 4 and tensor.shape[2] == length else none
    if name.startswith(_LOGITS) and task in _SEQUENCE_LEVEL_TASKS:
        return none
    if tensor.shape[1] == length:
        return {"dims": [0], "shift": False}
    if tensor.shape[1] == length - 1 and name.startswith(_LOGITS):
        return {"dims": [0], "shift": True}  # causal LM: position t predicts token t + 1
    return none


def layouts_of(named: Mapping[str, torch.Tensor], mask: Optional[torch.Tensor], task: str) -> dict:
    """The layout of every named tensor of a batch (a top-k head's indices and tail follow its logprobs)."""
    length = None if mask is None else mask.shape[1]
    layouts = {}
    for name, tensor in named.items():
        base = named[name.rsplit(".", 1)[0] + ".logprobs"] if name.endswith((".indices", ".tail")) else tensor
        layouts[name] = _seq_layout(name, base, length, task)
    return layouts


def _positions(mask: Optional[torch.Tensor], row: int, shift: bool) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    m = mask[row, 1:] if shift else mask[row]
    return m.nonzero().squeeze(-1)


def compact(tensor: torch.Tensor, layout: dict, mask: Optional[torch.Tensor]) -> list[torch.Tensor]:
    """Per-example CPU copies of a batch's ``tensor`` holding only the real positions."""
    tensor = tensor.detach().cpu()
    mask = None if mask is None else mask.cpu()
    out = []
    for row in range(tensor.shape[0]):
        x = tensor[row]
        if layout["dims"]:
            pos = _positions(mask, row, layout["shift"])
            for d in layout["dims"]:
                x = x.index_select(d, pos)
        out.append(x.clone())  # owns its memory: never a view of the batch's tensors
    return out


def expand(records: list[torch.Tensor], layout: dict, mask: Optional[torch.Tensor], name: str,
           ids: list) -> torch.Tensor:
    """Stack per-example tensors, scattering their positions into the batch's padded layout."""
    if not layout["dims"]:
        shapes = {tuple(x.shape) for x in records}
        if len(shapes) > 1:
            raise TeacherCacheError(f"cached {name} has shapes {sorted(shapes)} across the batch and cannot be stacked; "
                                    "batches need an attention_mask to re-pad cached positions")
        return torch.stack(records)
    length = mask.shape[1] - (1 if layout["shift"] else 0)
    out = []
    for row, x in enumerate(records):
        pos = _positions(mask, row, layout["shift"]).to(x.device)
        if x.shape[layout["dims"][0]] != len(pos):
            raise TeacherCacheError(
                f"cached {name} of example {ids[row]!r} has {x.shape[layout['dims'][0]]} positions but the batch has "
                f"{len(pos)}: the data or the collator changed since the cache was built. {REBUILD}")
        for d in layout["dims"]:
            shape = list(x.shape)
            shape[d] = length
            x = x.new_zeros(shape).index_copy_(d, pos, x)
        out.append(x)
    return torch.stack(out)


def view_tensors(view: ModelView, top_k: Optional[int], temperature: float) -> dict[str, torch.Tensor]:
    """The tensors of a teacher view to store, by name (top-k heads at ``temperature`` when ``top_k``)."""
    named = {}
    for i, logits in enumerate(view.logits):
        if isinstance(logits, SparseTeacher) or top_k:  # a SparseTeacher (served teacher) is already at temperature
            sparse = logits if isinstance(logits, SparseTeacher) else sparse_from_dense(
                logits.float(), min(top_k, logits.shape[-1]), temperature)
            named[f"topk.{i}.logprobs"] = sparse.logprobs
            named[f"topk.{i}.indices"] = sparse.indices
            named[f"topk.{i}.tail"] = sparse.tail_logprob
        else:
            named[f"logits.{i}"] = logits
    for key, tensor in view.features.items():
        named[f"feature.{key}"] = tensor
    return named


def assemble_payload(records: list[dict], layouts: dict, mask: Optional[torch.Tensor], ids: list) -> dict:
    """A batch's ``teacher_cache`` entry from per-example records: ``{"logits": [...], "features": {...}}``.

    A top-k head is a dict ``{"logprobs", "indices", "tail_logprob"}``, and so is a sampled one (its tail is
    empty: the sampled entries carry all the mass).
    """
    def stacked(name: str) -> torch.Tensor:
        return expand([r[name] for r in records], layouts[name], mask, name, ids)

    payload: dict = {"logits": [], "features": {}}
    heads = sorted({int(n.split(".")[1]) for n in layouts if n.startswith(_LOGITS)})
    for i in heads:
        if f"logits.{i}" in layouts:
            payload["logits"].append(stacked(f"logits.{i}"))
        elif f"sampled.{i}.counts" in layouts:
            payload["logits"].append(_sampled_head(records, layouts, mask, ids, i))
        else:
            payload["logits"].append({field: stacked(f"topk.{i}.{part}") for field, part in _TOPK_PARTS})
    for name in layouts:
        if name.startswith("feature."):
            payload["features"][name[len("feature."):]] = stacked(name)
    return payload


def _sampled_head(records: list[dict], layouts: dict, mask: Optional[torch.Tensor], ids: list, head: int) -> dict:
    """A sampled head (:mod:`~distill_toolkit.data.cache.sampled`) as a top-k one: its ragged entries padded to
    the batch's widest position with probability-0 entries, and an empty tail bucket."""
    name = f"sampled.{head}.counts"
    counts = [r[name] for r in records]
    columns = max(width(c) for c in counts)
    indices = [unpack(r[f"sampled.{head}.indices"], c, columns, indices=True) for r, c in zip(records, counts)]
    if f"sampled.{head}.exact" in layouts:  # threshold-sampled: only the exact entries carry their own value
        logprobs = [_threshold_logprobs(r, head, c, columns) for r, c in zip(records, counts)]
    else:
        logprobs = [unpack(r[f"sampled.{head}.logprobs"], c, columns, indices=False) for r, c in zip(records, counts)]
    out = {"indices": expand(indices, layouts[name], mask, f"sampled.{head}.indices", ids),
           "logprobs": expand(logprobs, layouts[name], mask, f"sampled.{head}.logprobs", ids)}
    out["tail_logprob"] = torch.full(out["logprobs"].shape[:-1], FLOOR, dtype=out["logprobs"].dtype,
                                     device=out["logprobs"].device)
    return out


def _threshold_logprobs(record: dict, head: int, counts: torch.Tensor, columns: int) -> torch.Tensor:
    """One example's padded log-probabilities of a threshold-sampled head: the exact entries as stored, the
    drawn ones (columns ``exact`` to ``counts``) at the position's ``log tau``, the floor after them."""
    exact = record[f"sampled.{head}.exact"]
    out = unpack(record[f"sampled.{head}.logprobs"], exact, columns, indices=False)
    column = torch.arange(columns, device=out.device)
    drawn = (column >= exact.unsqueeze(-1)) & (column < counts.unsqueeze(-1))
    return torch.where(drawn, record[f"sampled.{head}.threshold"].to(out.dtype).unsqueeze(-1), out)


def view_from_payload(payload: Mapping, batch: Mapping) -> ModelView:
    """The teacher's :class:`ModelView` rebuilt from a batch's cached outputs (no forward pass)."""
    logits = [SparseTeacher(h["logprobs"], h["indices"], h["tail_logprob"]) if isinstance(h, Mapping) else h
              for h in payload["logits"]]
    inputs = model_inputs(batch, TEACHER)
    return ModelView(logits=logits, features=dict(payload["features"]), inputs_mask=inputs.get("attention_mask"),
                     task=batch_task(batch))


def cached_view(batch, role: str) -> Optional[ModelView]:
    """The view of teacher ``role`` read from ``batch["teacher_cache"]``, or None when the batch has none."""
    caches = batch.get(TEACHER_CACHE) if isinstance(batch, Mapping) else None
    if not caches:
        return None
    payload = caches.get(role)
    if payload is None and len(caches) == 1 and role.split("/")[-1].startswith("teacher"):
        payload = next(iter(caches.values()))
    return None if payload is None else view_from_payload(payload, batch)
