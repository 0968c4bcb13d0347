"""Building teachers and students: from a folder, from the fetched MiniLM, or from a teacher's layers."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Optional

from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from distill_toolkit.features import find_blocks, unwrap

BUILTIN_MINILM = "builtin:minilm"


def resolve_model_path(path: str) -> str:
    """Expand ``builtin:minilm`` to the fetched all-MiniLM-L6-v2 folder; check that other paths exist."""
    if path == BUILTIN_MINILM:
        from distill_toolkit.data.sources import minilm_dir

        return str(minilm_dir())
    if not Path(path).is_dir():
        raise FileNotFoundError(f"model folder {path!r} does not exist. Fix: point `path` at a folder written by "
                                f"save_pretrained, or use {BUILTIN_MINILM!r}")
    return path


def load_classifier(path: str, num_labels: int = 2, attn_implementation: Optional[str] = None,
                    config_overrides: Optional[dict] = None) -> PreTrainedModel:
    """A sequence classifier from a local folder, offline (no hub access)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path, num_labels=num_labels, **(config_overrides or {}))
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForSequenceClassification.from_pretrained(path, config=config, **kwargs)


def load_tokenizer(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(resolve_model_path(path))


def student_from_teacher(teacher: nn.Module, layers: list[int], config_overrides: Optional[dict] = None) -> nn.Module:
    """A shallower copy of ``teacher`` keeping the blocks listed in ``layers`` (0-based), in order.

    Embeddings, pooler and head are copied; the student's ``num_hidden_layers`` is
    ``len(layers)``. This is the usual initialisation of a "T3"-style student (e.g. blocks
    1, 3, 5 of a 6-block teacher).
    """
    teacher = unwrap(teacher)
    _, blocks = find_blocks(teacher)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"student.layers: {bad} out of range; the teacher has {len(blocks)} blocks "
                         f"(0..{len(blocks) - 1}). Fix: pick indices in that range")
    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    for key, value in (config_overrides or {}).items():
        setattr(config, key, value)
    student = type(teacher)(config)
    state = teacher.state_dict()
    block_prefix, _ = find_blocks(student)
    renamed = {}
    for key, value in state.items():
        if key.startswith(block_prefix + "."):
            index, rest = key[len(block_prefix) + 1:].split(".", 1)
            if int(index) not in layers:
                continue
            key = f"{block_prefix}.{layers.index(int(index))}.{rest}"
        renamed[key] = value
    missing, unexpected = student.load_state_dict(renamed, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise RuntimeError(f"copying teacher layers failed: missing {missing}, unexpected {unexpected}")
    return student
