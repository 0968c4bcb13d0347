"""The on-disk format of a teacher cache: file names, version, storage dtypes, atomic writes of shards.

Layout on disk::

    PATH/cache_info.json     fingerprint, layout of the stored tensors, per-file sizes and sha256
    PATH/COMPLETE            written last; holds the sha256 of cache_info.json
    PATH/shards/shard-NNNNN/ one `Dataset.save_to_disk` folder per shard of examples

A build writes into ``PATH.partial/`` (its settings in ``build.json``); each finished shard is saved to a
temporary folder and renamed, then gets a ``.done`` marker. A tensor column ``NAME`` is stored flat (a
large list per example) beside ``NAME#shape``; bfloat16 is stored as its uint16 bit pattern (Arrow has no
bfloat16), top-k indices as uint16 when the vocabulary fits, else int32. A sampled head
(:mod:`distill_toolkit.data.cache.sampled`) stores its entries ragged: ``sampled.i.counts`` per position
(uint16), then its indices and log-probabilities back to back (a threshold-sampled head also
``sampled.i.exact``, uint16, and ``sampled.i.threshold`` per position).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.table import InMemoryTable

from distill_toolkit.config import TEACHER_CACHE_DTYPES

__all__ = ["BUILD_FILE", "BYTES", "CACHE_DTYPES", "CACHE_VERSION", "DONE", "INFO_FILE", "MARKER", "from_numpy",
           "partial_path", "quiet_datasets", "storage_kind", "to_numpy", "write_atomic", "write_shard"]

CACHE_VERSION = 1
#: storage dtypes of logits/log-probs and features (``training.teacher_cache_dtype``)
CACHE_DTYPES = TEACHER_CACHE_DTYPES
INFO_FILE = "cache_info.json"
MARKER = "COMPLETE"
BUILD_FILE = "build.json"
DONE = ".done"
#: bytes per stored value of each storage kind
BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "uint16": 2, "int32": 4}
_PLAIN_COLUMNS = ("id", "example_hash")


def storage_kind(name: str, dtype: str, vocab: int) -> str:
    """How tensor ``name`` is stored: ``dtype``, except top-k indices (integers) and tails (always fp32)."""
    if name.endswith(".indices"):
        return "uint16" if vocab <= 65535 else "int32"
    if name.endswith((".counts", ".exact")):  # entries per position of a sampled head (at most MAX_ENTRIES)
        return "uint16"
    if name.endswith(".tail"):
        return "float32"  # the tail's log mass is small and precision-sensitive
    return dtype


def to_numpy(tensor: torch.Tensor, kind: str) -> np.ndarray:
    """``tensor`` as the numpy array stored for storage ``kind``."""
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


def from_numpy(array: np.ndarray, kind: str) -> torch.Tensor:
    """A stored array back as a tensor: float32 values, int64 indices."""
    if kind == "bfloat16":
        return torch.from_numpy(array.astype(np.uint16).view(np.int16).copy()).view(torch.bfloat16).float()
    if kind in ("uint16", "int32"):
        return torch.from_numpy(array.astype(np.int64))
    return torch.from_numpy(array.astype(np.float32))


def partial_path(path: Path) -> Path:
    """Where the cache for ``path`` is written until it is complete."""
    return path.with_name(path.name + ".partial")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence ``datasets``' progress bars while saving/loading cache shards."""
    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def write_shard(final: Path, columns: dict, kinds: dict) -> None:
    """Save one shard atomically: a temporary folder, then a rename, then the ``.done`` marker.

    ``columns`` maps ``id``, ``example_hash`` and every tensor name to one value per example; ``kinds``
    gives each tensor's storage kind (:func:`storage_kind`).
    """
    arrays = {}
    for name, values in columns.items():
        if name in _PLAIN_COLUMNS:
            arrays[name] = pa.array(values)
            continue
        flats = [to_numpy(v, kinds[name]).reshape(-1) for v in values]
        offsets = np.concatenate([[0], np.cumsum([len(f) for f in flats])]).astype(np.int64)
        flat = np.concatenate(flats) if flats else np.zeros(0, dtype=np.float32)
        arrays[name] = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(flat))
        arrays[name + "#shape"] = pa.array([list(v.shape) for v in values], pa.list_(pa.int32()))
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_datasets():
        datasets.Dataset(InMemoryTable(pa.table(arrays))).save_to_disk(str(tmp))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    (final / DONE).write_text("ok\n")
