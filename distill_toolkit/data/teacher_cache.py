"""Teacher outputs computed once: on disk as an Arrow dataset (HF ``datasets``), or in memory.

A teacher is frozen, so its outputs on a fixed data set never change; paying for its forward
pass on every epoch of every run is waste. :func:`build_teacher_cache` runs the teacher once over
a data set and writes, per example, the logits (dense, or top-k compressed) and the intermediate
features the configured matches read. Training then gets them through
:class:`TeacherCacheCollator` as ``batch["teacher_cache"]`` and runs no teacher forward at all:
pass the cache where the teacher would go, ``Trainer(..., teacher=TeacherCache.open(path))``,
or set ``training.teacher_cache: PATH``.

Examples are keyed by an ``id`` field (:func:`with_ids` adds the row index). Per example only the
real (non-padding) positions are stored; the collator scatters them back into the batch's own
padded layout, so the cache does not depend on batch size, padding side or padding length.

Layout on disk::

    PATH/cache_info.json     fingerprint, layout of the stored tensors, per-file sizes and sha256
    PATH/COMPLETE            written last; holds the sha256 of cache_info.json
    PATH/shards/shard-NNNNN/ one `Dataset.save_to_disk` folder per shard of examples

A build writes into ``PATH.partial/``; each finished shard is saved to a temporary folder and
renamed, then gets a ``.done`` marker. A build killed midway leaves only ``PATH.partial``, which
:meth:`TeacherCache.open` never reads; the next build with the same fingerprint keeps its finished
shards (resume), with another fingerprint it starts over. Only when every shard is written are the
manifest and ``COMPLETE`` written and ``PATH.partial`` renamed to ``PATH``. Under
``accelerate launch`` every rank writes the shards ``i % world_size == rank`` and rank 0 finishes.

The fingerprint records the teacher's weights (sha256 of its ``state_dict``), the tokenizer, the
data (a hash per example of everything but its labels, plus the collator's own fingerprint) and
the stored set (feature keys, task, top-k, temperature, dtype). :meth:`TeacherCache.check` refuses
a cache whose fingerprint does not match what it is used with, naming the difference.

Top-k compression (``top_k=k``): per position the teacher's k largest log-probabilities at the
cache temperature (fp16/bf16/fp32), their vocabulary indices (uint16 when the vocabulary fits,
else int32) and the log of the remaining mass (fp32). The logits losses of
:mod:`distill_toolkit.losses.logits` read this as a :class:`SparseTeacher`; see there for how the
tail bucket enters each divergence.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from distill_toolkit.data.sources import sha256_file
from distill_toolkit.data.tasks import batch_task
from distill_toolkit.features import ModelView, unwrap
from distill_toolkit.losses.logits import SparseTeacher, sparse_from_dense

__all__ = [
    "CACHE_DTYPES",
    "InMemoryTeacherCache",
    "SPARSE_LOSSES",
    "TeacherCache",
    "TeacherCacheCollator",
    "TeacherCacheError",
    "build_teacher_cache",
    "cached_view",
    "data_fingerprint",
    "example_hash",
    "teacher_fingerprint",
    "tokenizer_fingerprint",
    "with_ids",
]

CACHE_VERSION = 1
CACHE_DTYPES = ("float32", "float16", "bfloat16")
#: logits losses that accept a :class:`SparseTeacher` (a top-k cache)
SPARSE_LOSSES = ("forward_kl", "kl", "reverse_kl", "jsd", "skew_kl", "total_variation", "tv")
INFO_FILE = "cache_info.json"
MARKER = "COMPLETE"
BUILD_FILE = "build.json"
DONE = ".done"
HEAD_INPUT = "head_input"  # the final hidden states a causal-LM strategy would feed the head; never stored
LABEL_KEYS = ("labels", "label")  # never enter a teacher's forward, so not part of the data hash
REBUILD = ("Fix: rebuild it with `distill-toolkit cache-teacher CONFIG.yaml --overwrite` "
           "(or build_teacher_cache(..., overwrite=True) in Python)")


class TeacherCacheError(RuntimeError):
    """A teacher cache is missing, unfinished, corrupted or stale; the message names the path and the fix."""


# ----------------------------------------------------------------------------- ids


class _WithIds(Dataset):
    def __init__(self, dataset, column: str):
        self.dataset, self.column = dataset, column

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(f"with_ids: examples must be dicts, got {type(item).__name__}")
        return item if self.column in item else {**item, self.column: index}


def with_ids(dataset, column: str = "id"):
    """``dataset`` with an ``id`` per example (its row index) unless it already has one.

    A Hugging Face ``Dataset`` gets a column; any other map-style data set is wrapped.
    """
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list) and hasattr(dataset, "add_column"):
        return dataset if column in names else dataset.add_column(column, list(range(len(dataset))))
    return _WithIds(dataset, column)


def _py(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _id(value: Any):
    value = _py(value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TeacherCacheError(f"example ids must be ints or strings, got {value!r}")
    return value


def example_ids(examples: Sequence[Mapping], key: str = "id") -> list:
    """The ``id`` of every example of a batch (before collation)."""
    ids = []
    for example in examples:
        if not isinstance(example, Mapping) or key not in example:
            found = list(example) if isinstance(example, Mapping) else type(example).__name__
            raise TeacherCacheError(
                f"a teacher cache is read by example id, but an example has no {key!r} field (fields: {found}). "
                "Fix: give every example a unique id, e.g. data = with_ids(data) "
                "(from distill_toolkit.data.teacher_cache)")
        ids.append(_id(example[key]))
    return ids


def batch_ids(batch: Mapping, key: str = "id") -> list:
    """The ``id`` of every example of a collated batch."""
    if key not in batch:
        raise TeacherCacheError(
            f"training.teacher_cache_in_memory keys the teacher's outputs by example id, but the batch has no "
            f"{key!r} (keys: {sorted(batch)}). Fix: give every example a unique id, e.g. data = with_ids(data)")
    ids = batch[key]
    return [_id(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]


# ----------------------------------------------------------------------------- fingerprints


def teacher_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's class and ``state_dict`` (names, dtypes, shapes and bytes)."""
    model = unwrap(model)
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> Optional[str]:
    """sha256 of a tokenizer's vocabulary, normaliser and pre-tokeniser (None for None).

    Padding and truncation settings are left out: they change as the tokenizer is called.
    """
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
    else:
        spec = {"vocab": sorted(tokenizer.get_vocab().items())}
    spec["class"] = type(tokenizer).__name__
    spec["special"] = {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def example_hash(example: Mapping) -> str:
    """Hash of what a teacher sees of one example: every field but its labels."""
    content = {k: _py(v) for k, v in example.items() if k not in LABEL_KEYS}
    return hashlib.blake2b(json.dumps(content, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _rows(dataset):
    """Examples of a data set as dicts (HF datasets read in chunks of columns)."""
    names = getattr(dataset, "column_names", None)
    if isinstance(names, list) and hasattr(dataset, "select"):
        for start in range(0, len(dataset), 1000):
            chunk = dataset[start:start + 1000]
            for values in zip(*(chunk[k] for k in names)):
                yield dict(zip(names, values))
    else:
        for index in range(len(dataset)):
            yield dataset[index]


def _collator_fingerprint(collate_fn) -> Optional[str]:
    fingerprint = getattr(collate_fn, "fingerprint", None)
    return json.dumps(fingerprint(), sort_keys=True) if callable(fingerprint) else None


def data_fingerprint(dataset, collate_fn: Optional[Callable] = None, key: str = "id") -> tuple[str, dict]:
    """``(digest, {id: example hash})`` of a data set; the digest covers the collator's fingerprint too."""
    hashes = {}
    for example in _rows(dataset):
        (eid,) = example_ids([example], key)
        if eid in hashes:
            raise TeacherCacheError(f"example id {eid!r} occurs twice in the data; a teacher cache needs unique ids. "
                                    "Fix: data = with_ids(data) on data without an id column, or deduplicate")
        hashes[eid] = example_hash(example)
    digest = hashlib.sha256((_collator_fingerprint(collate_fn) or "").encode())
    for eid in sorted(hashes, key=lambda x: (isinstance(x, str), x)):
        digest.update(f"{eid}:{hashes[eid]};".encode())
    return digest.hexdigest(), hashes


# ----------------------------------------------------------------------------- compact / expand

def _teacher_inputs(batch: Mapping) -> Mapping:
    teacher = batch.get("teacher")
    return teacher if isinstance(teacher, Mapping) else batch


def _sequence_mask(batch: Mapping) -> Optional[torch.Tensor]:
    """``(B, L)`` mask of the teacher's real positions (all ones without an attention mask)."""
    inputs = _teacher_inputs(batch)
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
    if name.startswith(("logits.", "topk.")) and task in ("sequence_classification", "multilabel_classification"):
        return none
    if tensor.shape[1] == length:
        return {"dims": [0], "shift": False}
    if tensor.shape[1] == length - 1 and name.startswith(("logits.", "topk.")):
        return {"dims": [0], "shift": True}  # causal LM: position t predicts token t + 1
    return none


def _positions(mask: Optional[torch.Tensor], row: int, shift: bool) -> Optional[torch.Tensor]:
    if mask is None:
        return None
    m = mask[row, 1:] if shift else mask[row]
    return m.nonzero().squeeze(-1)


def _compact(tensor: torch.Tensor, layout: dict, mask) -> list[torch.Tensor]:
    """Per-example copies of ``tensor`` holding only the real positions."""
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


def _expand(records: list[torch.Tensor], layout: dict, mask, name: str, ids: list) -> torch.Tensor:
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


def _view_tensors(view: ModelView, top_k: Optional[int], temperature: float) -> dict[str, torch.Tensor]:
    """The tensors of a teacher view to store, by name."""
    named = {}
    for i, logits in enumerate(view.logits):
        if top_k:
            k = min(top_k, logits.shape[-1])
            sparse = sparse_from_dense(logits.float(), k, temperature)
            named[f"topk.{i}.logprobs"] = sparse.logprobs
            named[f"topk.{i}.indices"] = sparse.indices
            named[f"topk.{i}.tail"] = sparse.tail_logprob
        else:
            named[f"logits.{i}"] = logits
    for key, tensor in view.features.items():
        named[f"feature.{key}"] = tensor
    return named


def _layouts(named: dict, mask, task: str) -> dict:
    length = None if mask is None else mask.shape[1]
    layouts = {}
    for name, tensor in named.items():
        base = named[name.rsplit(".", 1)[0] + ".logprobs"] if name.endswith((".indices", ".tail")) else tensor
        layouts[name] = _seq_layout(name, base, length, task)
    return layouts


def assemble_payload(records: list[dict], layouts: dict, mask, ids: list) -> dict:
    """A batch's ``teacher_cache`` entry from per-example records: ``{"logits": [...], "features": {...}}``.

    A top-k head is a dict ``{"logprobs", "indices", "tail_logprob"}``.
    """
    payload: dict = {"logits": [], "features": {}}
    heads = sorted({int(n.split(".")[1]) for n in layouts if n.startswith(("logits.", "topk."))})
    for i in heads:
        if f"logits.{i}" in layouts:
            payload["logits"].append(_expand([r[f"logits.{i}"] for r in records], layouts[f"logits.{i}"], mask,
                                             f"logits.{i}", ids))
        else:
            payload["logits"].append({
                field: _expand([r[f"topk.{i}.{part}"] for r in records], layouts[f"topk.{i}.{part}"], mask,
                               f"topk.{i}.{part}", ids)
                for field, part in (("logprobs", "logprobs"), ("indices", "indices"), ("tail_logprob", "tail"))})
    for name, layout in layouts.items():
        if name.startswith("feature."):
            payload["features"][name[len("feature."):]] = _expand([r[name] for r in records], layout, mask, name, ids)
    return payload


def view_from_payload(payload: Mapping, batch: Mapping) -> ModelView:
    """The teacher's :class:`ModelView` rebuilt from a batch's cached outputs (no forward pass)."""
    logits = [SparseTeacher(h["logprobs"], h["indices"], h["tail_logprob"]) if isinstance(h, Mapping) else h
              for h in payload["logits"]]
    inputs = _teacher_inputs(batch)
    return ModelView(logits=logits, features=dict(payload["features"]), inputs_mask=inputs.get("attention_mask"),
                     task=batch_task(batch))


def cached_view(batch, role: str) -> Optional[ModelView]:
    """The view of teacher ``role`` read from ``batch["teacher_cache"]``, or None when the batch has none."""
    caches = batch.get("teacher_cache") if isinstance(batch, Mapping) else None
    if not caches:
        return None
    payload = caches.get(role)
    if payload is None and len(caches) == 1 and role.split("/")[-1].startswith("teacher"):
        payload = next(iter(caches.values()))
    return None if payload is None else view_from_payload(payload, batch)


# ----------------------------------------------------------------------------- storage dtypes

def _to_numpy(tensor: torch.Tensor, kind: str) -> np.ndarray:
    if kind == "float32":
        return tensor.float().numpy()
    if kind == "float16":
        return tensor.half().numpy()
    if kind == "bfloat16":  # Arrow has no bfloat16: its bit pattern is stored as uint16
        return tensor.bfloat16().view(torch.int16).numpy().view(np.uint16)
    if kind == "uint16":
        return tensor.to(torch.int32).numpy().astype(np.uint16)
    if kind == "int32":
        return tensor.to(torch.int32).numpy()
    raise ValueError(kind)


def _from_numpy(array: np.ndarray, kind: str) -> torch.Tensor:
    if kind == "bfloat16":
        return torch.from_numpy(array.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16).float()
    if kind in ("uint16", "int32"):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))


_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint16": 2, "int32": 4}


def _storage_kind(name: str, dtype: str, vocab: int) -> str:
    if name.endswith(".indices"):
        return "uint16" if vocab <= 65535 else "int32"
    if name.endswith(".tail"):
        return "float32"  # the tail's log mass is small and precision-sensitive
    return dtype


# ----------------------------------------------------------------------------- the cache


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class TeacherCache:
    """A finished, verified teacher cache on disk; open it with :meth:`open`.

    Attributes:
        path: the cache folder.
        info: what ``cache_info.json`` records (fingerprint, layout, sizes, ``bytes_per_token``).
        build_stats: for a cache just built, ``{"shards_written": n, "shards_reused": m}``.
    """

    def __init__(self, path: Path, info: dict, data):
        self.path = Path(path)
        self.info = info
        self.fingerprint = info["fingerprint"]
        self.layouts = info["layouts"]
        self.kinds = info["kinds"]
        self._data = data
        ids = data[:].column("id").to_pylist()
        self._row = {eid: row for row, eid in enumerate(ids)}
        self._hashes = None
        self.build_stats: dict = {}

    # ---- opening and checking -----------------------------------------------------------
    @classmethod
    def open(cls, path: Union[str, Path], *, verify: str = "full") -> "TeacherCache":
        """Open the cache at ``path`` after checking it is complete and intact.

        Args:
            verify: ``"full"`` (sha256 of every file, default), ``"size"`` (file sizes only, for very
                large caches) or ``"none"``.

        Raises:
            TeacherCacheError: no finished cache there (an unfinished write is named as such), or a file
                is missing, truncated or altered; the message names the path and the rebuild command.
        """
        import datasets

        path = Path(path)
        partial = _partial_path(path)
        if not path.is_dir():
            if partial.is_dir():
                raise TeacherCacheError(
                    f"no finished teacher cache at {path}: {partial} holds an unfinished write (killed or still "
                    "running), which is never used. Fix: run the same `distill-toolkit cache-teacher CONFIG.yaml` "
                    "(or build_teacher_cache call) again; it resumes from the shards already written")
            raise TeacherCacheError(f"no teacher cache at {path}. Fix: build it with "
                                    "`distill-toolkit cache-teacher CONFIG.yaml` (or build_teacher_cache in Python)")
        marker, info_file = path / MARKER, path / INFO_FILE
        if not marker.is_file() or not info_file.is_file():
            raise TeacherCacheError(f"{path} is not a finished teacher cache ({MARKER} or {INFO_FILE} missing). "
                                    + REBUILD)
        if verify not in ("full", "size", "none"):
            raise ValueError(f"verify must be 'full', 'size' or 'none', got {verify!r}")
        if verify != "none" and marker.read_text().strip() != sha256_file(info_file):
            raise TeacherCacheError(f"teacher cache {path} is corrupted: {INFO_FILE} does not match its checksum. "
                                    + REBUILD)
        try:
            info = json.loads(info_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TeacherCacheError(f"teacher cache {path} is corrupted: {INFO_FILE} unreadable ({err}). "
                                    + REBUILD) from err
        if info.get("version") != CACHE_VERSION:
            raise TeacherCacheError(f"teacher cache {path} has format version {info.get('version')}, this toolkit "
                                    f"reads version {CACHE_VERSION}. " + REBUILD)
        if verify != "none":
            for rel, meta in info["files"].items():
                file = path / rel
                if not file.is_file():
                    raise TeacherCacheError(f"teacher cache {path} is corrupted: {file} is missing. " + REBUILD)
                size = file.stat().st_size
                if size != meta["size"]:
                    raise TeacherCacheError(f"teacher cache {path} is corrupted: {file} has {size} bytes, "
                                            f"{meta['size']} were written (truncated?). " + REBUILD)
                if verify == "full" and sha256_file(file) != meta["sha256"]:
                    raise TeacherCacheError(f"teacher cache {path} is corrupted: {file} does not match its sha256. "
                                            + REBUILD)
        try:
            with _quiet_datasets():
                parts = [datasets.load_from_disk(str(path / s)) for s in info["shards"]]
                data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        except Exception as err:  # noqa: BLE001 - any failure to read Arrow is corruption
            raise TeacherCacheError(f"teacher cache {path} cannot be read ({type(err).__name__}: {err}). "
                                    + REBUILD) from err
        return cls(path, info, data.with_format("arrow"))

    def __len__(self) -> int:
        return len(self._row)

    @property
    def top_k(self) -> Optional[int]:
        return self.fingerprint["top_k"]

    @property
    def temperature(self) -> float:
        return self.fingerprint["temperature"]

    @property
    def feature_keys(self) -> list[str]:
        return list(self.fingerprint["features"])

    @property
    def bytes_per_token(self) -> float:
        """Stored logits bytes per real position (token) of the data, all heads together."""
        return self.info["bytes_per_token"]

    def example_hashes(self) -> dict:
        if self._hashes is None:
            table = self._data[:]
            self._hashes = dict(zip(table.column("id").to_pylist(), table.column("example_hash").to_pylist()))
        return self._hashes

    def check(self, *, teacher=None, tokenizer=None, data=None, collate_fn=None, feature_keys=None,
              distillation=None, top_k: Any = "any", dtype: Optional[str] = None) -> "TeacherCache":
        """Refuse the cache unless it was built for these (every argument given is compared).

        ``data`` may be any subset of the cached examples in any order: each example's hash is compared to
        the one cached under its id. ``feature_keys`` must all be cached. ``distillation`` checks that a
        top-k cache meets a sparse-capable ``kd_loss`` at the cache's temperature.
        """
        fp, problems = self.fingerprint, []
        if teacher is not None and teacher_fingerprint(teacher) != fp["teacher"]:
            problems.append("the teacher's weights differ from those the cache was built with")
        if tokenizer is not None and fp["tokenizer"] is not None and tokenizer_fingerprint(tokenizer) != fp["tokenizer"]:
            problems.append("the tokenizer differs")
        if collate_fn is not None and _collator_fingerprint(collate_fn) != fp["collator"]:
            problems.append("the collator's settings (tokenizers, max lengths, alignment) differ")
        if data is not None:
            _, hashes = data_fingerprint(data)
            cached = self.example_hashes()
            missing = [i for i in hashes if i not in cached]
            changed = [i for i, h in hashes.items() if i in cached and cached[i] != h]
            if missing:
                problems.append(f"{len(missing)} example id(s) are not in the cache (e.g. {missing[:3]})")
            if changed:
                problems.append(f"{len(changed)} example(s) differ from the cached ones (e.g. ids {changed[:3]})")
        if feature_keys is not None:
            absent = [k for k in feature_keys if k not in fp["features"]]
            if absent:
                problems.append(f"features {absent} are needed but not cached (cached: {fp['features']})")
        if top_k != "any" and top_k != fp["top_k"]:
            problems.append(f"it holds top_k={fp['top_k']} logits but top_k={top_k} is configured "
                            "(training.teacher_cache_top_k)")
        if dtype is not None and dtype != fp["dtype"]:
            problems.append(f"it is stored as {fp['dtype']} but {dtype} is configured (training.teacher_cache_dtype)")
        if distillation is not None and fp["top_k"]:
            if distillation.kd_loss_weight > 0 and distillation.kd_loss not in SPARSE_LOSSES:
                problems.append(f"it holds top-k logits, which distillation.kd_loss {distillation.kd_loss!r} cannot "
                                f"read; use one of {', '.join(SPARSE_LOSSES)}")
            if not math.isclose(float(distillation.temperature), float(fp["temperature"])):
                problems.append(f"its top-k log-probabilities are at temperature {fp['temperature']} but "
                                f"distillation.temperature is {distillation.temperature}")
            schedule = distillation.temperature_scheduler
            if not (schedule is None or (isinstance(schedule, str) and schedule.lower() in ("none", "constant"))):
                problems.append("distillation.temperature_scheduler must be 'constant' with a top-k cache")
        if problems:
            raise TeacherCacheError(f"stale teacher cache at {self.path}: " + "; ".join(problems)
                                    + ". It is never used for other models or data. " + REBUILD)
        return self

    # ---- reading -------------------------------------------------------------------------
    def records(self, ids: Sequence) -> list[dict]:
        """Per-example tensors (real positions only) of the examples ``ids``."""
        rows = []
        for eid in ids:
            row = self._row.get(_id(eid))
            if row is None:
                raise TeacherCacheError(f"example id {eid!r} is not in the teacher cache {self.path}: the data changed "
                                        "since it was built. " + REBUILD)
            rows.append(row)
        table = self._data[rows]
        out = [dict() for _ in rows]
        for name in self.layouts:
            kind = self.kinds[name]
            column = table.column(name).combine_chunks()
            flat = column.flatten().to_numpy(zero_copy_only=False)
            shapes = table.column(name + "#shape").to_pylist()
            start = 0
            for record, shape in zip(out, shapes):
                size = int(np.prod(shape)) if shape else 1
                record[name] = _from_numpy(flat[start:start + size], kind).reshape(shape)
                start += size
        return out

    def payload(self, ids: Sequence, mask) -> dict:
        """The batch entry ``teacher_cache[role]`` for examples ``ids`` padded like ``mask``."""
        return assemble_payload(self.records(ids), self.layouts, mask, list(ids))


def open_teacher_cache(path, **check) -> TeacherCache:
    """:meth:`TeacherCache.open` then :meth:`TeacherCache.check` with ``check``'s arguments."""
    return TeacherCache.open(path).check(**check)


class TeacherCacheCollator:
    """``collate_fn`` plus, as ``batch["teacher_cache"][role]``, the cached teacher outputs of the examples.

    Examples need an ``id`` (see :func:`with_ids`). The Trainer wraps its training collator in one of
    these when it is given a :class:`TeacherCache` as teacher; use it directly with your own DataLoader.
    """

    def __init__(self, collate_fn: Optional[Callable], caches: Union[TeacherCache, Mapping[str, TeacherCache]],
                 id_key: str = "id"):
        from torch.utils.data import default_collate

        self.collate_fn = collate_fn or default_collate
        self.caches = {"teacher": caches} if isinstance(caches, TeacherCache) else dict(caches)
        self.id_key = id_key

    def fingerprint(self):
        fingerprint = getattr(self.collate_fn, "fingerprint", None)
        return fingerprint() if callable(fingerprint) else None

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        ids = example_ids(examples, self.id_key)
        batch = self.collate_fn(examples)
        mask = _sequence_mask(batch)
        batch["teacher_cache"] = {role: cache.payload(ids, mask) for role, cache in self.caches.items()}
        return batch


class InMemoryTeacherCache:
    """TextBrewer's ``is_caching_logits``: the first epoch computes, later epochs reuse (per example id).

    Lives in the memory of each process (CPU tensors, real positions only); counts ``hits`` and ``misses``.
    """

    def __init__(self, task: str = "auto"):
        self.task = task
        self.records: dict = {}
        self.layouts: Optional[dict] = None
        self.hits = self.misses = 0

    def lookup(self, batch: Mapping) -> Optional[ModelView]:
        ids = batch_ids(batch)
        if self.layouts is None or any(i not in self.records for i in ids):
            self.misses += 1
            return None
        self.hits += 1
        mask = _sequence_mask(batch)
        payload = assemble_payload([self.records[i] for i in ids], self.layouts, None if mask is None else mask.cpu(),
                                   ids)
        device = mask.device if mask is not None else torch.device("cpu")
        payload = {"logits": [x.to(device) for x in payload["logits"]],
                   "features": {k: v.to(device) for k, v in payload["features"].items()}}
        return view_from_payload(payload, batch)

    def store(self, batch: Mapping, view: ModelView) -> None:
        if any(isinstance(x, SparseTeacher) for x in view.logits):
            return
        ids = batch_ids(batch)
        mask = _sequence_mask(batch)
        named = _view_tensors(view, None, 1.0)
        if self.layouts is None:
            self.layouts = _layouts(named, mask, self.task)
        per_name = {name: _compact(t, self.layouts[name], mask) for name, t in named.items()}
        for row, eid in enumerate(ids):
            self.records[eid] = {name: values[row] for name, values in per_name.items()}


# ----------------------------------------------------------------------------- building


def _partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class _quiet_datasets:
    """Silence ``datasets``' progress bars while saving/loading cache shards."""

    def __enter__(self):
        import datasets

        self.enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()

    def __exit__(self, *exc):
        import datasets

        if self.enabled:
            datasets.enable_progress_bars()


def _features_for(distillation, role: str) -> list[str]:
    from distill_toolkit.strategies import build_strategy

    strategy = build_strategy(distillation)
    keys = strategy.feature_keys()
    return list(keys.get(role, keys.get("teacher", [])))


def _to_device(batch, device):
    from accelerate.utils import send_to_device

    return send_to_device(batch, device)


def _write_shard(final: Path, columns: dict, kinds: dict) -> None:
    """Save one shard atomically: a temporary folder, then a rename, then the ``.done`` marker."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    arrays = {}
    for name, values in columns.items():
        if name in ("id", "example_hash"):
            arrays[name] = pa.array(values)
            continue
        flats = [_to_numpy(v, kinds[name]).reshape(-1) for v in values]
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in flats])]).astype(np.int64)
        flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.float32)
        arrays[name] = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat))
        arrays[name + "#shape"] = pa.array([list(v.shape) for v in values], pa.list_(pa.int32()))
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with _quiet_datasets():
        datasets.Dataset(InMemoryTable(pa.table(arrays))).save_to_disk(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (final / DONE).write_text("ok\n")


def build_teacher_cache(teacher: torch.nn.Module, dataset, path: Union[str, Path], *,
                        collate_fn: Optional[Callable] = None, distillation=None,
                        feature_keys: Optional[Sequence[str]] = None, role: str = "teacher",
                        task: Optional[str] = None, tokenizer=None, top_k: Optional[int] = None,
                        temperature: Optional[float] = None, dtype: str = "float32", batch_size: int = 32,
                        shard_size: int = 1024, adaptor=None, overwrite: bool = False, verify: str = "full",
                        on_shard: Optional[Callable[[int], None]] = None) -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` and write its outputs to ``path``; returns the opened cache.

    Args:
        teacher: the frozen teacher (any model the Trainer accepts).
        dataset: map-style data whose examples carry a unique ``id`` (:func:`with_ids`), batched here in
            order with ``collate_fn`` (the same collator training will use).
        distillation: a :class:`DistillationConfig`; the features its strategy reads from the teacher
            (``feature_keys``), its ``task`` and its ``temperature`` are taken from it unless given.
        tokenizer: recorded in the fingerprint (checked when training passes one too).
        top_k: store the top-k log-probabilities (+ indices + log tail mass) instead of dense logits, at
            ``temperature`` (train at the same temperature).
        dtype: storage dtype of logits/log-probs and features: ``float32``, ``float16`` or ``bfloat16``.
        shard_size: examples per shard (the unit of resumption and of the split across ranks).
        overwrite: replace a finished cache built for something else (otherwise that is an error).
        on_shard: called with the shard index after each shard is saved (progress, tests).

    Returns:
        The :class:`TeacherCache` (``build_stats`` says how many shards were written and reused).
    """
    from distill_toolkit.engine.teachers import TeacherRunner  # engine imports data: import late

    path = Path(path)
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"training.teacher_cache_dtype: unknown {dtype!r}. Fix: use one of {', '.join(CACHE_DTYPES)}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"training.teacher_cache_top_k: must be a positive integer or null, got {top_k!r}")
    if feature_keys is None:
        feature_keys = _features_for(distillation, role) if distillation is not None else []
    # strategy 'causal_lm' runs the teacher's head on its final hidden states; from a cache it reads the
    # (top-k) logits stored here instead, so those hidden states are not stored
    feature_keys = [k for k in feature_keys if k != HEAD_INPUT]
    task = task or (distillation.task if distillation is not None else "auto")
    if temperature is None:
        temperature = float(distillation.temperature) if (distillation is not None and top_k) else 1.0

    state = _process_state()
    data_digest, hashes = data_fingerprint(dataset, collate_fn)
    ids_in_order = list(hashes)
    fingerprint = {"teacher": teacher_fingerprint(teacher), "tokenizer": tokenizer_fingerprint(tokenizer),
                   "data": data_digest, "collator": _collator_fingerprint(collate_fn),
                   "features": sorted(feature_keys), "task": task, "top_k": top_k,
                   "temperature": float(temperature), "dtype": dtype, "num_examples": len(ids_in_order)}

    if path.is_dir() and (path / MARKER).is_file():
        try:
            existing = TeacherCache.open(path, verify=verify)
        except TeacherCacheError:
            existing = None  # corrupted: rebuilt below when allowed
        if existing is not None and existing.fingerprint == fingerprint:
            existing.build_stats = {"shards_written": 0, "shards_reused": len(existing.info["shards"])}
            return existing
        if not overwrite:
            what = ("is corrupted" if existing is None else "was built for " + ", ".join(
                k for k in fingerprint if existing.fingerprint.get(k) != fingerprint[k]) + " that differ")
            raise TeacherCacheError(f"a teacher cache already exists at {path} and {what}. Fix: pass overwrite=True "
                                    "(`--overwrite` on the command line) to replace it, or choose another path")
    elif path.exists() and not overwrite:
        raise TeacherCacheError(f"{path} exists and is not a finished teacher cache. Fix: remove it, pass "
                                "overwrite=True (`--overwrite`), or choose another path")

    partial = _partial_path(path)
    shard_root = partial / "shards"
    if state.is_main_process:
        previous = None
        try:
            previous = json.loads((partial / BUILD_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            pass
        if partial.exists() and previous != {"fingerprint": fingerprint, "shard_size": shard_size}:
            shutil.rmtree(partial)  # another build's leftovers: start over
        shard_root.mkdir(parents=True, exist_ok=True)
        _write_atomic(partial / BUILD_FILE, json.dumps({"fingerprint": fingerprint, "shard_size": shard_size}))
    state.wait_for_everyone()

    runner = TeacherRunner(teacher, role, list(feature_keys), task, adaptor)
    device = state.device
    runner.model.to(device)
    num_shards = max(1, math.ceil(len(ids_in_order) / shard_size))
    written = reused = 0
    layouts = kinds = None
    for shard in range(state.process_index, num_shards, state.num_processes):
        final = shard_root / f"shard-{shard:05d}"
        if (final / DONE).is_file():
            reused += 1
            continue
        start, stop = shard * shard_size, min(len(ids_in_order), (shard + 1) * shard_size)
        columns: dict = {"id": [], "example_hash": []}
        for begin in range(start, stop, batch_size):
            examples = [dataset[i] for i in range(begin, min(stop, begin + batch_size))]
            batch_ids_ = example_ids(examples)
            batch = _to_device((collate_fn or _default_collate)(examples), device)
            with torch.no_grad():
                view = runner.forward(batch)
            mask = _sequence_mask(batch)
            named = _view_tensors(view, top_k, temperature)
            if layouts is None:
                layouts = _layouts(named, mask, runner.task)
                vocab = max([0] + [int(lg.shape[-1]) for lg in view.logits])
                kinds = {n: _storage_kind(n, dtype, vocab) for n in named}
            for name, tensor in named.items():
                columns.setdefault(name, []).extend(_compact(tensor, layouts[name], mask))
            columns["id"].extend(batch_ids_)
            columns["example_hash"].extend(hashes[i] for i in batch_ids_)
        _write_atomic(shard_root / f"shard-{shard:05d}.layout.json", json.dumps({"layouts": layouts, "kinds": kinds}))
        _write_shard(final, columns, kinds)
        written += 1
        if on_shard is not None:
            on_shard(shard)
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(path, partial, fingerprint, num_shards, overwrite)
    state.wait_for_everyone()
    cache = TeacherCache.open(path, verify="size")
    cache.build_stats = {"shards_written": written, "shards_reused": reused}
    return cache


def _process_state():
    """Accelerate's process state: this process alone, or its rank under ``accelerate launch`` / torchrun
    (gloo on CPUs, NCCL on GPUs); an existing one (e.g. a Trainer's) is reused."""
    from accelerate import PartialState

    if PartialState._shared_state:
        return PartialState()
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return PartialState(cpu=cpu, **({"backend": "gloo" if cpu else "nccl"} if distributed else {}))


def _default_collate(examples):
    from torch.utils.data import default_collate

    return default_collate(examples)


def _finish(path: Path, partial: Path, fingerprint: dict, num_shards: int, overwrite: bool) -> None:
    """Check every shard, write the manifest and the marker, and move the cache into place."""
    shards = [f"shards/shard-{i:05d}" for i in range(num_shards)]
    missing = [s for s in shards if not (partial / s / DONE).is_file()]
    if missing:
        raise TeacherCacheError(f"teacher cache build at {partial}: shards {missing} were not written by any rank")
    meta = json.loads((partial / f"{shards[0]}.layout.json").read_text())
    positions = logits_bytes = 0
    import datasets

    with _quiet_datasets():
        for s in shards:
            table = datasets.load_from_disk(str(partial / s)).with_format("arrow")[:]
            for name, kind in meta["kinds"].items():
                if name.startswith(("logits.", "topk.")):  # sizes from the shapes: no need to read the values
                    sizes = [int(np.prod(shape)) for shape in table.column(name + "#shape").to_pylist()]
                    logits_bytes += sum(sizes) * _BYTES[kind]
            first = next((n for n in meta["kinds"] if n.startswith(("logits.", "topk."))), None)
            if first is not None and meta["layouts"][first]["dims"]:
                shapes = table.column(first + "#shape").to_pylist()
                positions += sum(shape[meta["layouts"][first]["dims"][0]] for shape in shapes)
            else:
                positions += table.num_rows  # sequence-level logits: one "token" per example
    files = {}
    for file in sorted(partial.rglob("*")):
        if file.is_file() and file.name not in (BUILD_FILE, INFO_FILE, MARKER):
            rel = str(file.relative_to(partial))
            files[rel] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    info = {"version": CACHE_VERSION, "fingerprint": fingerprint, "layouts": meta["layouts"], "kinds": meta["kinds"],
            "shards": shards, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "bytes_per_token": logits_bytes / max(positions, 1)}
    (partial / INFO_FILE).write_text(json.dumps(info, indent=1))
    (partial / BUILD_FILE).unlink(missing_ok=True)
    (partial / MARKER).write_text(sha256_file(partial / INFO_FILE) + "\n")
    old = None
    if path.exists():
        if not overwrite:
            raise TeacherCacheError(f"{path} appeared while the cache was being built; it is left as it is and the "
                                    f"new cache stays in {partial}")
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(partial, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- the Trainer's side


def resolve_teacher_cache(path: Union[str, Path], teacher=None) -> TeacherCache:
    """Open the cache named by ``training.teacher_cache``; a teacher model, if given, must be the one cached.

    The model is only hashed, never run (nor placed on a device).
    """
    if isinstance(teacher, TeacherCache):
        return teacher
    cache = TeacherCache.open(path)
    if isinstance(teacher, torch.nn.Module):
        cache.check(teacher=teacher)
    elif teacher is not None and not isinstance(teacher, TeacherCache):
        raise TeacherCacheError("training.teacher_cache reads one teacher's outputs; pass a single teacher model "
                                "(to check the cache against it) or teacher=None")
    return cache


def training_collator(caches: Mapping[str, TeacherCache], train_data, collate_fn, strategy,
                      distillation) -> TeacherCacheCollator:
    """Check every cache against what the run trains on, and return the collator that attaches them."""
    keys = strategy.feature_keys()
    for role, cache in caches.items():
        needed = [k for k in keys.get(role, []) if k != HEAD_INPUT]  # 'causal_lm' reads the cached logits instead
        data = train_data if isinstance(train_data, Dataset) or hasattr(train_data, "column_names") else None
        cache.check(data=data, collate_fn=collate_fn, feature_keys=needed, distillation=distillation)
    return TeacherCacheCollator(collate_fn, dict(caches))
