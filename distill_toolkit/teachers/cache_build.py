"""Building a teacher cache: the teacher runs once over the data, its outputs go to disk.

This is the one place besides :class:`~distill_toolkit.teachers.runner.TeacherRunner` itself where a
teacher forward runs for the cache; storing and reading live in :mod:`distill_toolkit.data.cache`
(see there for the on-disk layout and what the fingerprint covers).

A build writes into ``PATH.partial/``; each finished shard is saved to a temporary folder and renamed,
then gets a ``.done`` marker. A build killed midway leaves only ``PATH.partial``; the next build with the
same fingerprint keeps its finished shards (resume), with another fingerprint it starts over. Only when
every shard is written are the manifest and ``COMPLETE`` written and ``PATH.partial`` renamed to
``PATH``. Under ``accelerate launch`` every rank writes the shards ``i % world_size == rank`` and rank 0
finishes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import datasets
import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import get_int_from_env, parse_flag_from_env, send_to_device
from torch.utils.data import default_collate

from distill_toolkit.data.cache.disk import (
    BUILD_FILE,
    BYTES,
    CACHE_DTYPES,
    CACHE_VERSION,
    DONE,
    INFO_FILE,
    MARKER,
    partial_path,
    quiet_datasets,
    storage_kind,
    write_atomic,
    write_shard,
)
from distill_toolkit.data.cache.errors import TeacherCacheError
from distill_toolkit.data.cache.fingerprints import (
    collator_fingerprint,
    data_fingerprint,
    teacher_fingerprint,
    tokenizer_fingerprint,
)
from distill_toolkit.data.cache.ids import example_ids
from distill_toolkit.data.cache.layout import compact, layouts_of, sequence_mask, view_tensors
from distill_toolkit.data.cache.sampled import SAMPLED_LOSSES, SampledLogits
from distill_toolkit.data.cache.storage import TeacherCache
from distill_toolkit.data.sources import sha256_file
from distill_toolkit.features import HEAD_INPUT
from distill_toolkit.strategies import build_strategy
from distill_toolkit.teachers.runner import TeacherRunner

__all__ = ["build_teacher_cache"]

_LOGITS = ("logits.", "topk.", "sampled.")


def build_teacher_cache(teacher: torch.nn.Module, dataset, path: Union[str, Path], *,
                        collate_fn: Optional[Callable] = None, distillation=None,
                        feature_keys: Optional[Sequence[str]] = None, role: str = "teacher",
                        task: Optional[str] = None, tokenizer=None, top_k: Optional[int] = None,
                        temperature: Optional[float] = None, dtype: str = "float32", batch_size: int = 32,
                        shard_size: int = 1024, adaptor=None, overwrite: bool = False, verify: str = "full",
                        on_shard: Optional[Callable[[int], None]] = None, samples: Optional[int] = None,
                        seed: int = 0, sampler: str = "multinomial") -> TeacherCache:
    """Run ``teacher`` once over ``dataset`` and write its outputs to ``path``; returns the opened cache.

    Args:
        teacher: the frozen teacher (any model the Trainer accepts).
        dataset: map-style data whose examples carry a unique ``id`` (:func:`~distill_toolkit.data.cache.with_ids`),
            batched here in order with ``collate_fn`` (the same collator training will use).
        distillation: a :class:`DistillationConfig`; the features its strategy reads from the teacher
            (``feature_keys``), its ``task`` and its ``temperature`` are taken from it unless given.
        tokenizer: recorded in the fingerprint (checked when training passes one too).
        top_k: store the top-k log-probabilities (+ indices + log tail mass) instead of dense logits, at
            ``temperature`` (train at the same temperature).
        dtype: storage dtype of logits/log-probs and features: ``float32``, ``float16`` or ``bfloat16``.
        samples, seed: a sampled sparse teacher (:mod:`~distill_toolkit.data.cache.sampled`): the ``top_k`` (or
            none) exactly plus ``samples`` draws from the rest, seeded by ``seed`` and the example id; for forward_kl.
        sampler: how a sampled cache chooses its entries: ``multinomial`` (independent draws), ``systematic``
            (stratified, lower variance) or ``threshold`` (``top_k + samples`` distinct entries, the least noise);
            :data:`~distill_toolkit.losses.sampled.SAMPLERS`.
        shard_size: examples per shard (the unit of resumption and of the split across ranks).
        overwrite: replace a finished cache built for something else (otherwise that is an error).
        on_shard: called with the shard index after each shard is saved (progress, tests).

    Returns:
        The :class:`TeacherCache` (``build_stats`` says how many shards were written and reused).
    """
    path = Path(path)
    _check_settings(dtype, top_k)
    sampling = _sampling(samples, top_k, seed, distillation, sampler)
    feature_keys, task, temperature = _stored_set(distillation, feature_keys, role, task, top_k or samples, temperature)
    state = _process_state()
    data_digest, hashes = data_fingerprint(dataset, collate_fn)
    fingerprint = {"teacher": teacher_fingerprint(teacher), "tokenizer": tokenizer_fingerprint(tokenizer),
                   "data": data_digest, "collator": collator_fingerprint(collate_fn),
                   "features": sorted(feature_keys), "task": task, "top_k": top_k,
                   "temperature": float(temperature), "dtype": dtype, "num_examples": len(hashes)}
    if sampling is not None:  # only then: the fingerprints of dense and top-k caches are unchanged
        fingerprint.update(samples=sampling.samples, sample_seed=sampling.seed)
        if sampling.sampler != "multinomial":  # only then: caches built before the option keep their fingerprint
            fingerprint["sampler"] = sampling.sampler
    existing = _existing_cache(path, fingerprint, verify, overwrite)
    if existing is not None:
        return existing

    partial = partial_path(path)
    _start_partial(state, partial, {"fingerprint": fingerprint, "shard_size": shard_size})
    runner = TeacherRunner(teacher, role, list(feature_keys), task, adaptor)
    runner.model.to(state.device)
    writer = _ShardWriter(runner, dataset, collate_fn or default_collate, hashes, top_k, temperature, dtype,
                          batch_size, state.device, sampling=sampling)
    num_shards = max(1, math.ceil(len(hashes) / shard_size))
    written, reused = writer.write_all(partial, state, num_shards, shard_size, on_shard)
    state.wait_for_everyone()
    if state.is_main_process:
        _finish(path, partial, fingerprint, num_shards, overwrite)
    state.wait_for_everyone()
    cache = TeacherCache.open(path, verify="size")
    cache.build_stats = {"shards_written": written, "shards_reused": reused}
    return cache


def _check_settings(dtype: str, top_k: Optional[int]) -> None:
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"training.teacher_cache_dtype: unknown {dtype!r}. Fix: use one of {', '.join(CACHE_DTYPES)}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"training.teacher_cache_top_k: must be a positive integer or null, got {top_k!r}")


def _sampling(samples: Optional[int], top_k: Optional[int], seed: int, distillation,
              sampler: str) -> Optional[SampledLogits]:
    """The draws of a sampled cache (None without ``samples``); its loss is checked before the teacher runs."""
    if samples is None:
        return None
    if distillation is not None and distillation.kd_loss_weight > 0 and distillation.kd_loss not in SAMPLED_LOSSES:
        raise ValueError(f"training.teacher_cache_samples: a sampled teacher estimates the forward-KL gradient "
                         f"without bias, but distillation.kd_loss is {distillation.kd_loss!r}. Fix: use kd_loss: "
                         "forward_kl, or a top-k cache (teacher_cache_top_k alone) for other divergences")
    return SampledLogits(samples, top_k or 0, seed, sampler)


def _stored_set(distillation, feature_keys, role: str, task: Optional[str], top_k: Optional[int],
                temperature: Optional[float]) -> tuple[list[str], str, float]:
    """The feature keys, task and temperature to cache: as given, else from ``distillation``."""
    if feature_keys is None:
        feature_keys = _features_for(distillation, role) if distillation is not None else []
    # strategy 'causal_lm' runs the teacher's head on its final hidden states; from a cache it reads the
    # (top-k) logits stored here instead, so those hidden states are not stored
    feature_keys = [k for k in feature_keys if k != HEAD_INPUT]
    task = task or (distillation.task if distillation is not None else "auto")
    if temperature is None:
        temperature = float(distillation.temperature) if (distillation is not None and top_k) else 1.0
    return feature_keys, task, temperature


def _features_for(distillation, role: str) -> list[str]:
    """The teacher features the strategy of ``distillation`` reads for ``role`` (or for ``teacher``)."""
    keys = build_strategy(distillation).feature_keys()
    return list(keys.get(role, keys.get("teacher", [])))


def _process_state() -> PartialState:
    """Accelerate's process state: this process alone, or its rank under ``accelerate launch`` / torchrun
    (gloo on CPUs, NCCL on GPUs); an existing one (e.g. a Trainer's) is reused."""
    if PartialState._shared_state:
        return PartialState()
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    distributed = get_int_from_env(["WORLD_SIZE"], 1) > 1
    return PartialState(cpu=cpu, **({"backend": "gloo" if cpu else "nccl"} if distributed else {}))


def _existing_cache(path: Path, fingerprint: dict, verify: str, overwrite: bool) -> Optional[TeacherCache]:
    """The finished cache at ``path`` when it was built for ``fingerprint``; None when it is to be (re)built."""
    if path.is_dir() and (path / MARKER).is_file():
        try:
            existing = TeacherCache.open(path, verify=verify)
        except TeacherCacheError:
            existing = None  # corrupted: rebuilt when allowed
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
    return None


def _start_partial(state: PartialState, partial: Path, build: dict) -> None:
    """Keep ``partial`` when an earlier build of the same ``build`` settings left it (resume); else start over."""
    if state.is_main_process:
        previous = None
        try:
            previous = json.loads((partial / BUILD_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            pass
        if partial.exists() and previous != build:
            shutil.rmtree(partial)  # another build's leftovers: start over
        (partial / "shards").mkdir(parents=True, exist_ok=True)
        write_atomic(partial / BUILD_FILE, json.dumps(build))
    state.wait_for_everyone()


def _shard_name(index: int) -> str:
    return f"shards/shard-{index:05d}"


@dataclass
class _ShardWriter:
    """Runs the teacher over the examples of one shard and saves what it produced.

    The layouts and storage kinds are taken from the first batch this process runs and kept for the rest.
    """

    runner: TeacherRunner
    dataset: Any
    collate_fn: Callable
    hashes: dict
    top_k: Optional[int]
    temperature: float
    dtype: str
    batch_size: int
    device: Any
    layouts: Optional[dict] = None
    kinds: Optional[dict] = None
    sampling: Optional[SampledLogits] = None

    def write_all(self, partial: Path, state: PartialState, num_shards: int, shard_size: int,
                  on_shard: Optional[Callable[[int], None]]) -> tuple[int, int]:
        """Write this process's shards (``i % num_processes == process_index``) not yet done; ``(written, reused)``."""
        written = reused = 0
        for shard in range(state.process_index, num_shards, state.num_processes):
            if (partial / _shard_name(shard) / DONE).is_file():
                reused += 1
                continue
            self.write(partial, shard, shard * shard_size, min(len(self.hashes), (shard + 1) * shard_size))
            written += 1
            if on_shard is not None:
                on_shard(shard)
        return written, reused

    def write(self, partial: Path, shard: int, start: int, stop: int) -> None:
        """Run examples ``start:stop`` and save them as shard ``shard`` (its layout file first)."""
        columns = self.columns(start, stop)
        meta = json.dumps({"layouts": self.layouts, "kinds": self.kinds})
        write_atomic(partial / f"{_shard_name(shard)}.layout.json", meta)
        write_shard(partial / _shard_name(shard), columns, self.kinds)

    def columns(self, start: int, stop: int) -> dict:
        """``{"id": [...], "example_hash": [...], NAME: [per-example tensor, ...]}`` for examples ``start:stop``."""
        columns: dict = {"id": [], "example_hash": []}
        for begin in range(start, stop, self.batch_size):
            examples = [self.dataset[i] for i in range(begin, min(stop, begin + self.batch_size))]
            ids = example_ids(examples)
            batch = send_to_device(self.collate_fn(examples), self.device)
            with torch.no_grad():
                view = self.runner.forward(batch)
            mask = sequence_mask(batch)
            if self.sampling is not None:  # drawn example by example, stored ragged (data/cache/sampled.py)
                self._add_sampled(columns, view, mask, ids)
                named = {}
            else:
                named = view_tensors(view, self.top_k, self.temperature)
            if self.layouts is None and named:
                self._set_layouts(layouts_of(named, mask, self.runner.task), view)
            for name, tensor in named.items():
                columns.setdefault(name, []).extend(compact(tensor, self.layouts[name], mask))
            columns["id"].extend(ids)
            columns["example_hash"].extend(self.hashes[i] for i in ids)
        return columns

    def _set_layouts(self, layouts: dict, view) -> None:
        """The stored layout and storage kind of each column, fixed by the first batch."""
        self.layouts = layouts
        vocab = max([0] + [_vocab_size(lg, self.runner.model) for lg in view.logits])
        self.kinds = {n: storage_kind(n, self.dtype, vocab) for n in layouts}

    def _add_sampled(self, columns: dict, view, mask, ids: list) -> None:
        """Append a batch's sampled heads and features to ``columns`` (layouts and kinds from the first batch)."""
        per_example, layouts = self.sampling.batch(view, mask, ids, self.runner.task, self.temperature)
        if self.layouts is None:
            self._set_layouts(layouts, view)
        for name, values in per_example.items():
            columns.setdefault(name, []).extend(values)


def _vocab_size(logits, model) -> int:
    """Classes of a head's output: the last dimension of dense logits; for a ``SparseTeacher`` (a served teacher
    gives no dense logits) the teacher's ``vocab_size``."""
    shape = getattr(logits, "shape", None)
    return int(shape[-1]) if shape is not None else int(getattr(model, "vocab_size", 0))


def _bytes_per_token(partial: Path, shards: list[str], meta: dict) -> float:
    """Stored logits bytes per real position (token) over all shards, read from the stored shapes only."""
    positions = logits_bytes = 0
    first = next((n for n in meta["kinds"] if n.startswith(_LOGITS)), None)
    with quiet_datasets():
        for s in shards:
            table = datasets.load_from_disk(str(partial / s)).with_format("arrow")[:]
            for name, kind in meta["kinds"].items():
                if name.startswith(_LOGITS):  # sizes from the shapes: no need to read the values
                    sizes = [int(np.prod(shape)) for shape in table.column(name + "#shape").to_pylist()]
                    logits_bytes += sum(sizes) * BYTES[kind]
            if first is not None and meta["layouts"][first]["dims"]:
                shapes = table.column(first + "#shape").to_pylist()
                positions += sum(shape[meta["layouts"][first]["dims"][0]] for shape in shapes)
            else:
                positions += table.num_rows  # sequence-level logits: one "token" per example
    return logits_bytes / max(positions, 1)


def _finish(path: Path, partial: Path, fingerprint: dict, num_shards: int, overwrite: bool) -> None:
    """Check every shard, write the manifest and the marker, and move the cache into place."""
    shards = [_shard_name(i) for i in range(num_shards)]
    missing = [s for s in shards if not (partial / s / DONE).is_file()]
    if missing:
        raise TeacherCacheError(f"teacher cache build at {partial}: shards {missing} were not written by any rank")
    meta = json.loads((partial / f"{shards[0]}.layout.json").read_text())
    bytes_per_token = _bytes_per_token(partial, shards, meta)
    files = {}
    for file in sorted(partial.rglob("*")):
        if file.is_file() and file.name not in (BUILD_FILE, INFO_FILE, MARKER):
            files[str(file.relative_to(partial))] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    info = {"version": CACHE_VERSION, "fingerprint": fingerprint, "layouts": meta["layouts"], "kinds": meta["kinds"],
            "shards": shards, "files": files, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "bytes_per_token": bytes_per_token}
    (partial / INFO_FILE).write_text(json.dumps(info, indent=1))
    (partial / BUILD_FILE).unlink(missing_ok=True)
    (partial / MARKER).write_text(sha256_file(partial / INFO_FILE) + "\n")
    _move_into_place(path, partial, overwrite)


def _move_into_place(path: Path, partial: Path, overwrite: bool) -> None:
    """Rename the finished ``partial`` to ``path``, replacing an old cache there only when ``overwrite``."""
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
