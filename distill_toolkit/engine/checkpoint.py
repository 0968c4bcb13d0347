"""Checkpoints that are either complete or absent, and resume that continues exactly.

A checkpoint is written into ``step_N.partial/``, completed with a ``COMPLETE`` marker
and then renamed to ``step_N/`` in one ``os.replace``; resume only ever looks at folders
that carry the marker, so a run killed mid-write leaves nothing it would pick up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Optional

from accelerate import Accelerator

MARKER = "COMPLETE"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the folder and what to do."""


def checkpoint_root(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Complete checkpoints under ``output_dir``, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / MARKER).is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[Path]:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, state: dict, keep: int) -> Path:
    """Save model, optimiser, scheduler, RNG and ``state`` atomically as ``checkpoints/step_{step}``."""
    root = checkpoint_root(output_dir)
    final = root / f"step_{step}"
    partial = root / f"step_{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
        (partial / MARKER).write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            if old != final and not state.get("best_checkpoint", "").endswith(old.name):
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume_from: Optional[str], output_dir: str) -> Optional[Path]:
    """``latest`` -> the newest complete checkpoint of this run (or None); a path -> that checkpoint."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(f"training.resume_from: {path} does not exist. Fix: give a folder under "
                              f"{checkpoint_root(output_dir)} or `latest`")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"training.resume_from: {path} is not a complete checkpoint (no {MARKER} marker; "
                              "the run that wrote it was probably killed mid-save). Fix: resume from an earlier "
                              "checkpoint or `latest`")
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    """Restore everything saved by :func:`save_checkpoint`; returns the trainer state."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"training.resume_from: cannot read {path / STATE_FILE} ({err}). "
                              "Fix: resume from another checkpoint") from err
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise CheckpointError(
            f"training.resume_from: checkpoint {path} does not match this run's model/optimizer: {err}. "
            "Fix: resume with the same student, matches and projections that wrote it, or start a fresh "
            "output_dir") from err
    return state
