"""Teacher outputs computed once: on disk as an Arrow dataset (HF ``datasets``), or in memory.

A teacher is frozen, so its outputs on a fixed data set never change; paying for its forward
pass on every epoch of every run is waste. :func:`~distill_toolkit.teachers.cache_build.build_teacher_cache`
runs the teacher once over a data set and writes, per example, the logits (dense, or top-k compressed)
and the intermediate features the configured matches read. Training then gets them through
:class:`TeacherCacheCollator` as ``batch["teacher_cache"]`` and runs no teacher forward at all:
pass the cache where the teacher would go, ``Trainer(..., teacher=TeacherCache.open(path))``,
or set ``training.teacher_cache: PATH``. This package only stores and reads; it runs no model.

Examples are keyed by an ``id`` field (:func:`with_ids` adds the row index). Per example only the
real (non-padding) positions are stored; the collator scatters them back into the batch's own
padded layout, so the cache does not depend on batch size, padding side or padding length.

Modules:

    errors        TeacherCacheError and the rebuild hint its messages end with
    ids           with_ids, example_ids, batch_ids: examples are keyed by id
    fingerprints  teacher / tokenizer / data / example digests recorded in the manifest
    layout        compact (real positions only) and expand (re-pad), payload assembly, cached_view
    disk          the on-disk format: file names, version, storage dtypes, atomic shard writes
    storage       TeacherCache: open, verify, check, read records and payloads; resolve/open helpers
    collate       TeacherCacheCollator and training_collator (the Trainer's side)
    memory        InMemoryTeacherCache (``training.teacher_cache_in_memory``)
    sampled       SampledLogits: exact top-k + sampled tail per position (``training.teacher_cache_samples``)
    ragged        pack/unpack of a sampled head's variable number of entries per position

A build writes into ``PATH.partial/`` and only renames it to ``PATH`` when every shard is written
(:mod:`distill_toolkit.data.cache.disk` has the layout). A build killed midway leaves only
``PATH.partial``, which :meth:`TeacherCache.open` never reads; the next build with the same fingerprint
keeps its finished shards (resume), with another fingerprint it starts over. Under ``accelerate launch``
every rank writes the shards ``i % world_size == rank`` and rank 0 finishes.

The fingerprint records the teacher's weights (sha256 of its ``state_dict``), the tokenizer, the
data (a hash per example of everything but its labels, plus the collator's own fingerprint) and
the stored set (feature keys, task, top-k, temperature, dtype). :meth:`TeacherCache.check` refuses
a cache whose fingerprint does not match what it is used with, naming the difference.

Top-k compression (``top_k=k``): per position the teacher's k largest log-probabilities at the
cache temperature (fp16/bf16/fp32), their vocabulary indices (uint16 when the vocabulary fits,
else int32) and the log of the remaining mass (fp32). The logits losses of
:mod:`distill_toolkit.losses.logits` read this as a :class:`SparseTeacher`; see there for how the
tail bucket enters each divergence.

Sampled sparse logits (``samples=N``, ``training.teacher_cache_samples``): per position the top-k exactly (none
without ``top_k``) plus the distinct tokens of N draws from the rest of the teacher's distribution, each with
``tail mass * count / N``: an unbiased estimate whose forward-KL gradient is the dense one in expectation
(Anshumann et al. 2025). Stored ragged (only the entries kept count towards ``bytes_per_token``), seeded per
example id; see :mod:`distill_toolkit.data.cache.sampled`.
"""

from distill_toolkit.data.cache.collate import TeacherCacheCollator, training_collator
from distill_toolkit.data.cache.disk import CACHE_DTYPES
from distill_toolkit.data.cache.errors import TeacherCacheError
from distill_toolkit.data.cache.fingerprints import (
    data_fingerprint,
    example_hash,
    teacher_fingerprint,
    tokenizer_fingerprint,
)
from distill_toolkit.data.cache.ids import batch_ids, example_ids, with_ids
from distill_toolkit.data.cache.layout import assemble_payload, cached_view, view_from_payload
from distill_toolkit.data.cache.memory import InMemoryTeacherCache
from distill_toolkit.data.cache.storage import SPARSE_LOSSES, TeacherCache, open_teacher_cache, resolve_teacher_cache

__all__ = [
    "CACHE_DTYPES",
    "InMemoryTeacherCache",
    "SPARSE_LOSSES",
    "TeacherCache",
    "TeacherCacheCollator",
    "TeacherCacheError",
    "assemble_payload",
    "batch_ids",
    "cached_view",
    "data_fingerprint",
    "example_hash",
    "example_ids",
    "open_teacher_cache",
    "resolve_teacher_cache",
    "teacher_fingerprint",
    "tokenizer_fingerprint",
    "training_collator",
    "view_from_payload",
    "with_ids",
]
