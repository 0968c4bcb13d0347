"""What a cache was built for: sha256 of the teacher's weights, of the tokenizer, of the data.

These digests go into ``cache_info.json``; changing how any of them is computed invalidates every
cache already built, so they are kept byte-for-byte stable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Callable, Iterator, Optional

import torch

from distill_toolkit.batch import ID
from distill_toolkit.data.cache.errors import TeacherCacheError
from distill_toolkit.data.cache.ids import example_ids, to_python
from distill_toolkit.features import unwrap

__all__ = ["LABEL_KEYS", "collator_fingerprint", "data_fingerprint", "example_hash", "teacher_fingerprint",
           "tokenizer_fingerprint"]

#: fields that never enter a teacher's forward, so not part of the data hash
LABEL_KEYS = ("labels", "label")


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
    content = {k: to_python(v) for k, v in example.items() if k not in LABEL_KEYS}
    return hashlib.blake2b(json.dumps(content, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _rows(dataset) -> Iterator[Mapping]:
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


def collator_fingerprint(collate_fn) -> Optional[str]:
    """The collator's own ``fingerprint()`` as canonical JSON, or None when it has none."""
    fingerprint = getattr(collate_fn, "fingerprint", None)
    return json.dumps(fingerprint(), sort_keys=True) if callable(fingerprint) else None


def data_fingerprint(dataset, collate_fn: Optional[Callable] = None, key: str = ID) -> tuple[str, dict]:
    """``(digest, {id: example hash})`` of a data set; the digest covers the collator's fingerprint too."""
    hashes = {}
    for example in _rows(dataset):
        (eid,) = example_ids([example], key)
        if eid in hashes:
            raise TeacherCacheError(f"example id {eid!r} occurs twice in the data; a teacher cache needs unique ids. "
                                    "Fix: data = with_ids(data) on data without an id column, or deduplicate")
        hashes[eid] = example_hash(example)
    digest = hashlib.sha256((collator_fingerprint(collate_fn) or "").encode())
    for eid in sorted(hashes, key=lambda x: (isinstance(x, str), x)):
        digest.update(f"{eid}:{hashes[eid]};".encode())
    return digest.hexdigest(), hashes
