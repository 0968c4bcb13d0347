"""Training state stored without pickle: tensors in safetensors, everything else as JSON.

A checkpoint holds optimiser moments, the LR schedule, the gradient scaler and the RNG
streams of every rank. ``torch.save`` would pickle them, and unpickling a crafted file runs
code, so none of them is stored that way here. :func:`encode` turns a nested state (dicts,
lists, tuples, numbers, strings, tensors) into a JSON skeleton plus a flat ``{key: tensor}``
table; :func:`save_tree` writes both into one ``.safetensors`` file (the skeleton in its
metadata header) and :func:`load_tree` reads them back with the same types, so a restored
``state_dict`` equals the saved one bit for bit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

TENSOR, TUPLE, ITEMS = "__tensor__", "__tuple__", "__items__"
_MARKERS = (TENSOR, TUPLE, ITEMS)
_PLAIN = (bool, int, float, str, type(None))


def encode(obj: Any, tensors: Optional[dict], where: str = "state") -> Any:
    """The JSON skeleton of ``obj``; its tensors go into ``tensors`` (None: tensors are refused).

    Tuples and dicts with non-string keys (an optimiser's integer parameter ids) are tagged so
    :func:`decode` rebuilds the same types. Anything else raises ``TypeError`` naming ``where``.
    """
    if isinstance(obj, torch.Tensor):
        if tensors is None:
            raise TypeError(f"{where}: a tensor where only plain values (numbers, strings, lists) can be stored")
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous()
        return {TENSOR: key}
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, tuple):
        return {TUPLE: [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _MARKERS for k in obj):
            return {k: encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {ITEMS: [[encode(k, None, f"{where} key"), encode(v, tensors, f"{where}[{k!r}]")]
                        for k, v in obj.items()]}
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored without pickle. Fix: keep such state "
                    "as numbers, strings, lists, dicts or tensors")


def decode(skeleton: Any, tensors: dict) -> Any:
    """Inverse of :func:`encode`: rebuild the object from its skeleton and tensor table."""
    if isinstance(skeleton, list):
        return [decode(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if len(skeleton) == 1 and TENSOR in skeleton:
        return tensors[skeleton[TENSOR]]
    if len(skeleton) == 1 and TUPLE in skeleton:
        return tuple(decode(v, tensors) for v in skeleton[TUPLE])
    if len(skeleton) == 1 and ITEMS in skeleton:
        return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in skeleton[ITEMS]}
    return {k: decode(v, tensors) for k, v in skeleton.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def to_json(obj: Any, where: str) -> Any:
    """``obj`` as a JSON-ready value (no tensors allowed); read back with :func:`from_json`."""
    return encode(obj, None, where)


def from_json(value: Any) -> Any:
    """Inverse of :func:`to_json`."""
    return decode(value, {})


def save_tree(obj: Any, path: Path, where: str) -> None:
    """Write ``obj`` to ``path`` as one safetensors file: tensors as tensors, the rest as JSON metadata."""
    tensors: dict = {}
    skeleton = encode(obj, tensors, where)
    save_file(tensors, str(path), metadata={"tree": json.dumps(skeleton)})


def load_tree(path: Path, device: Optional[str] = None) -> Any:
    """Read an object written by :func:`save_tree`; tensors land on ``device`` (default CPU)."""
    with safe_open(str(path), framework="pt", device=device or "cpu") as handle:
        metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if "tree" not in metadata:
        raise ValueError(f"{path} has no `tree` metadata: it was not written by distill_toolkit")
    return decode(json.loads(metadata["tree"]), tensors)


# ---- random number generators -------------------------------------------------------------

def rng_state() -> dict:
    """This process's RNG streams: Python's ``random``, NumPy's global one, torch's CPU and CUDA ones."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore the streams saved by :func:`rng_state` (CUDA ones only where CUDA is available)."""
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
