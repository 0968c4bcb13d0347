"""Export of the trained student: gathered to the main process, written with safetensors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file


def export_student(accelerator: Accelerator, module, directory: Path, tokenizer=None) -> Path:
    """Write the student (``save_pretrained`` for Hugging Face models) and its tokenizer to ``directory``.

    The folder is written beside its final place and renamed into it, so an interrupted
    export never leaves a half-written model behind.
    """
    directory = Path(directory)
    state = accelerator.get_state_dict(module)  # gathers shards (ZeRO-3 / FSDP) onto the main process
    if accelerator.is_main_process:
        student = accelerator.unwrap_model(module).student
        prefix = "student."
        student_state = {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}
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
