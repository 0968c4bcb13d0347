"""What :class:`~distill_toolkit.hf.DistillationTrainer` writes into and reads from a folder.

``save_model(dir)`` writes the student alone with ``save_pretrained`` (plain ``from_pretrained`` loads
it) and ``training_args.json``. A ``checkpoint-N/`` holds the student's weights under the names of its
own ``state_dict`` (``save_pretrained`` may rename keys, e.g. for checkpoint-format conversions, which
an exact resume must not depend on; ``from_pretrained`` still loads the folder), its config, and the
strategy's parameters (projections) in :data:`STRATEGY_WEIGHTS_NAME`. Everything is safetensors or
JSON; nothing written here is a pickle.
"""

from __future__ import annotations

import json
import os

from safetensors.torch import load_file, save_file
from torch import nn
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

#: the strategy's own parameters (projections) in a checkpoint folder, beside the student's weights
STRATEGY_WEIGHTS_NAME = "distillation_strategy.safetensors"
TRAINING_ARGS_JSON = "training_args.json"


def prefixed(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` (``"student."``, ``"strategy."``), without it."""
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def unshared(state: dict) -> dict:
    """``state`` without the second name of tensors sharing memory (tied weights), as safetensors needs."""
    seen, out = set(), {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        out[name] = tensor
    return out


def save_folder(student: nn.Module, state: dict, directory: str, *, checkpoint: bool, args=None,
                processing_class=None) -> None:
    """Write ``state`` (a ``student.* / strategy.*`` state dict) to ``directory``: for an export the
    student with ``save_pretrained`` (or one safetensors file); for a checkpoint the student's weights
    by their ``state_dict`` names, its config and the strategy's part; then the processing class and
    the ``TrainingArguments`` as JSON."""
    os.makedirs(directory, exist_ok=True)
    student_state = prefixed(state, "student.")
    if checkpoint or not hasattr(student, "save_pretrained"):
        save_file(unshared(student_state), os.path.join(directory, SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
        if hasattr(getattr(student, "config", None), "save_pretrained"):
            student.config.save_pretrained(directory)
    else:
        student.save_pretrained(directory, state_dict=student_state, is_main_process=True)
    strategy_state = prefixed(state, "strategy.")
    if checkpoint and strategy_state:
        save_file(strategy_state, os.path.join(directory, STRATEGY_WEIGHTS_NAME))
    if processing_class is not None:
        processing_class.save_pretrained(directory)
    if args is not None:
        with open(os.path.join(directory, TRAINING_ARGS_JSON), "w") as f:
            f.write(args.to_json_string())


def load_student(student: nn.Module, checkpoint: str) -> None:
    """Load the student's weights from ``checkpoint`` (one safetensors file or a sharded index), by their
    ``state_dict`` names; keys it lacks are accepted only when they share memory with loaded ones (tied)."""
    single, index = os.path.join(checkpoint, SAFE_WEIGHTS_NAME), os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(single):
        state = load_file(single)
    elif os.path.isfile(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
        state = {k: v for name in files for k, v in load_file(os.path.join(checkpoint, name)).items()}
    else:
        raise ValueError(f"checkpoint {checkpoint} has no {SAFE_WEIGHTS_NAME} (or {SAFE_WEIGHTS_INDEX_NAME}). Fix: "
                         "resume from a checkpoint-N folder written by DistillationTrainer")
    result = student.load_state_dict(state, strict=False)
    current = student.state_dict()
    loaded = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in result.missing_keys if current[k].data_ptr() not in loaded]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {checkpoint} does not fit the student: missing {missing[:5]}, unexpected "
                         f"{result.unexpected_keys[:5]}. Fix: resume with the student that wrote it")


def load_strategy(strategy: nn.Module, checkpoint: str) -> None:
    """Load the strategy's parameters (projections) from ``checkpoint``; a clear error when they are not there."""
    expected = strategy.state_dict()
    if not expected:
        return
    path = os.path.join(checkpoint, STRATEGY_WEIGHTS_NAME)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {checkpoint} has no {STRATEGY_WEIGHTS_NAME}: the strategy's parameters "
                         f"({', '.join(list(expected)[:3])} ...) cannot be restored. Fix: resume from a checkpoint "
                         "written by DistillationTrainer with the same distillation config")
    strategy.load_state_dict(load_file(path, device=str(next(iter(expected.values())).device)), strict=True)
