"""Reading a finished teacher cache: :class:`TeacherCache` opens, verifies, checks and serves it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import datasets
import numpy as np
import torch

from distill_toolkit.data.cache.disk import CACHE_VERSION, INFO_FILE, MARKER, from_numpy, partial_path, quiet_datasets
from distill_toolkit.data.cache.errors import REBUILD, TeacherCacheError
from distill_toolkit.data.cache.fingerprints import (
    collator_fingerprint,
    data_fingerprint,
    teacher_fingerprint,
    tokenizer_fingerprint,
)
from distill_toolkit.data.cache.ids import as_id
from distill_toolkit.data.cache.layout import assemble_payload
from distill_toolkit.data.cache.sampled import SAMPLED_LOSSES
from distill_toolkit.data.sources import sha256_file

__all__ = ["SPARSE_LOSSES", "TeacherCache", "open_teacher_cache", "resolve_teacher_cache"]

#: logits losses that accept a :class:`~distill_toolkit.losses.logits.SparseTeacher` (a top-k cache)
SPARSE_LOSSES = ("forward_kl", "kl", "reverse_kl", "jsd", "skew_kl", "total_variation", "tv")
_VERIFY = ("full", "size", "none")


def _read_info(path: Path, verify: str) -> dict:
    """``cache_info.json`` of a finished cache at ``path``, checked against ``COMPLETE`` unless ``verify='none'``."""
    partial = partial_path(path)
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
    if verify not in _VERIFY:
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
    return info


def _verify_files(path: Path, info: dict, verify: str) -> None:
    """Every file the manifest lists is there with its size (and, for ``verify='full'``, its sha256)."""
    if verify == "none":
        return
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


def _load_shards(path: Path, info: dict):
    """The cache's shards as one Arrow-formatted ``datasets.Dataset``."""
    try:
        with quiet_datasets():
            parts = [datasets.load_from_disk(str(path / s)) for s in info["shards"]]
            data = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    except Exception as err:  # noqa: BLE001 - any failure to read Arrow is corruption
        raise TeacherCacheError(f"teacher cache {path} cannot be read ({type(err).__name__}: {err}). "
                                + REBUILD) from err
    return data.with_format("arrow")


def _data_problems(data, cached: dict) -> list[str]:
    """What differs between ``data`` (any subset of the cached examples) and the cached example hashes."""
    _, hashes = data_fingerprint(data)
    missing = [i for i in hashes if i not in cached]
    changed = [i for i, h in hashes.items() if i in cached and cached[i] != h]
    problems = []
    if missing:
        problems.append(f"{len(missing)} example id(s) are not in the cache (e.g. {missing[:3]})")
    if changed:
        problems.append(f"{len(changed)} example(s) differ from the cached ones (e.g. ids {changed[:3]})")
    return problems


def _distillation_problems(distillation, fp: dict) -> list[str]:
    """Why a top-k (or sampled) cache cannot serve ``distillation`` (kd_loss, temperature and its schedule)."""
    problems = []
    if fp.get("samples"):
        problems += _sampled_problems(distillation)
    elif distillation.kd_loss_weight > 0 and distillation.kd_loss not in SPARSE_LOSSES:
        problems.append(f"it holds top-k logits, which distillation.kd_loss {distillation.kd_loss!r} cannot "
                        f"read; use one of {', '.join(SPARSE_LOSSES)}")
    if not math.isclose(float(distillation.temperature), float(fp["temperature"])):
        problems.append(f"its top-k log-probabilities are at temperature {fp['temperature']} but "
                        f"distillation.temperature is {distillation.temperature}")
    schedule = distillation.temperature_scheduler
    if not (schedule is None or (isinstance(schedule, str) and schedule.lower() in ("none", "constant"))):
        problems.append("distillation.temperature_scheduler must be 'constant' with a top-k cache")
    return problems


def _sampled_problems(distillation) -> list[str]:
    """Why a sampled cache cannot serve ``distillation``: only the forward KL's gradient is unbiased with it."""
    problems = []
    if distillation.kd_loss_weight > 0 and distillation.kd_loss not in SAMPLED_LOSSES:
        problems.append(f"it holds sampled sparse logits, whose forward-KL gradient is unbiased, but "
                        f"distillation.kd_loss is {distillation.kd_loss!r}; use forward_kl (or a top-k cache)")
    if (distillation.kd_loss_kwargs or {}).get("top_k") is not None:
        problems.append("distillation.kd_loss_kwargs.top_k is set, but a sampled cache has a varying number of "
                        "entries per position; remove it")
    return problems


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
        path = Path(path)
        info = _read_info(path, verify)
        _verify_files(path, info, verify)
        return cls(path, info, _load_shards(path, info))

    def __len__(self) -> int:
        return len(self._row)

    @property
    def top_k(self) -> Optional[int]:
        """``k`` of a top-k cache; None when the logits are stored dense."""
        return self.fingerprint["top_k"]

    @property
    def samples(self) -> Optional[int]:
        """Draws per position of a sampled cache (:mod:`~distill_toolkit.data.cache.sampled`); None otherwise."""
        return self.fingerprint.get("samples")

    @property
    def sampler(self) -> Optional[str]:
        """How a sampled cache chose its entries (``multinomial``, ``systematic`` or ``threshold``); None for
        other caches."""
        return self.fingerprint.get("sampler", "multinomial") if self.samples else None

    @property
    def temperature(self) -> float:
        """The temperature of the stored top-k log-probabilities (1.0 for dense logits)."""
        return self.fingerprint["temperature"]

    @property
    def feature_keys(self) -> list[str]:
        """The teacher features stored (``hidden:i``, ``attention:i``, ``module:NAME``)."""
        return list(self.fingerprint["features"])

    @property
    def bytes_per_token(self) -> float:
        """Stored logits bytes per real position (token) of the data, all heads together."""
        return self.info["bytes_per_token"]

    def example_hashes(self) -> dict:
        """``{id: example hash}`` of every cached example (read once, then kept)."""
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
        if collate_fn is not None and collator_fingerprint(collate_fn) != fp["collator"]:
            problems.append("the collator's settings (tokenizers, max lengths, alignment) differ")
        if data is not None:
            problems += _data_problems(data, self.example_hashes())
        if feature_keys is not None:
            absent = [k for k in feature_keys if k not in fp["features"]]
            if absent:
                problems.append(f"features {absent} are needed but not cached (cached: {fp['features']})")
        if top_k != "any" and top_k != fp["top_k"]:
            problems.append(f"it holds top_k={fp['top_k']} logits but top_k={top_k} is configured "
                            "(training.teacher_cache_top_k)")
        if dtype is not None and dtype != fp["dtype"]:
            problems.append(f"it is stored as {fp['dtype']} but {dtype} is configured (training.teacher_cache_dtype)")
        if distillation is not None and (fp["top_k"] or fp.get("samples")):
            problems += _distillation_problems(distillation, fp)
        if problems:
            raise TeacherCacheError(f"stale teacher cache at {self.path}: " + "; ".join(problems)
                                    + ". It is never used for other models or data. " + REBUILD)
        return self

    # ---- reading -------------------------------------------------------------------------
    def records(self, ids: Sequence) -> list[dict]:
        """Per-example tensors (real positions only) of the examples ``ids``."""
        rows = []
        for eid in ids:
            row = self._row.get(as_id(eid))
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
                record[name] = from_numpy(flat[start:start + size], kind).reshape(shape)
                start += size
        return out

    def payload(self, ids: Sequence, mask: Optional[torch.Tensor]) -> dict:
        """The batch entry ``teacher_cache[role]`` for examples ``ids`` padded like ``mask``."""
        return assemble_payload(self.records(ids), self.layouts, mask, list(ids))


def open_teacher_cache(path, **check) -> TeacherCache:
    """:meth:`TeacherCache.open` then :meth:`TeacherCache.check` with ``check``'s arguments."""
    return TeacherCache.open(path).check(**check)


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
