"""Export of the trained student: gathered to the main process, written with safetensors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from safetensors.torch import save_file


class NonFiniteWeightsError(FloatingPointError):
    """The student to export holds NaN or infinite values; the message names the tensors."""


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors in ``state`` holding a NaN or an infinity, with their counts."""
    bad = []
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            count = int((~torch.isfinite(value)).sum())
            if count:
                bad.append(f"{name} ({count} of {value.numel()} values)")
    return bad


def _check_finite(accelerator: Accelerator, state: dict, directory: Path) -> None:
    """Raise :class:`NonFiniteWeightsError` on every rank if the main process's ``state`` is not finite."""
    box = [non_finite_tensors(state) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    if box[0]:
        shown = ", ".join(box[0][:5]) + (f" and {len(box[0]) - 5} more" if len(box[0]) > 5 else "")
        raise NonFiniteWeightsError(
            f"export to {directory} refused: the student has non-finite weights in {shown}. Training diverged; "
            "nothing was written. Fix: resume from an earlier checkpoint with a lower training.learning_rate or "
            "training.max_grad_norm set")


def export_student(accelerator: Accelerator, module, directory: Path, tokenizer=None) -> Path:
    """Write the student (``save_pretrained`` for Hugging Face models) and its tokenizer to ``directory``.

    The folder is written beside its final place and renamed into it, so an interrupted
    export never leaves a half-written model behind. A student with NaN or infinite weights is
    refused with :class:`NonFiniteWeightsError` naming the tensors, before anything is written.
    """
    directory = Path(directory)
    state = accelerator.get_state_dict(module)  # gathers shards (ZeRO-3 / FSDP) onto the main process
    prefix = "student."
    student_state = {k[len(prefix):]: v.contiguous() for k, v in (state or {}).items() if k.startswith(prefix)}
    _check_finite(accelerator, student_state, directory)  # ZeRO-3: only the main process holds the state
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(module).student
        partial = directory.with_name(directory.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        if hasattr(student, "save_pretrained"):
            student.save_pretrained(partial, state_dict=student_state, safe_serialization=True)
        else:
            save_file(student_state, str(partial / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(partial)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(partial, directory)
    accelerator.wait_for_everyone()
    return directory
