"""Checkpoints that are complete, intact and safe to load, and resume that continues exactly.

A checkpoint is written into ``step_N.partial/``: the weights and optimiser, every rank's RNG
streams, the trainer state, a manifest of every file's size and SHA-256 (``MANIFEST.json``)
and last a ``COMPLETE`` marker; then it is renamed to ``step_N/`` in one ``os.replace``.
Resume only considers folders with the marker, checks every file against the manifest before
reading any, and never unpickles: weights and optimiser state are safetensors, the LR
schedule, gradient scaler and loop position JSON. Under DeepSpeed and FSDP the engine writes
its own weight and optimiser files (see :mod:`distill_toolkit.engine.engine_state`).

Files of a checkpoint (single process / DDP)::

    model.safetensors  optimizer.safetensors  rng_state_{rank}.safetensors
    checkpoint.json  trainer_state.json  config.yaml  student/  MANIFEST.json  COMPLETE

``student/`` holds what ``distill-toolkit export`` needs besides the weights: the student's config
files and tokenizer (and, under DeepSpeed and FSDP, the gathered student weights, since the engine's
own files cannot be read without it); see :mod:`distill_toolkit.engine.export`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from accelerate import Accelerator
from accelerate.logging import get_logger

from distill_toolkit.engine.engine_state import engine_kind, load_weights, save_weights
from distill_toolkit.engine.manifest import MARKER, CheckpointError, manifest_problems, seal
from distill_toolkit.engine.run_dir import config_diff, main_decides
from distill_toolkit.engine.state_io import from_json, load_tree, rng_state, save_tree, set_rng_state, to_json

logger = get_logger(__name__)

__all__ = ["CheckpointError", "MARKER", "STATE_FILE", "META_FILE", "checkpoint_root", "complete_checkpoints",
           "latest_checkpoint", "save_checkpoint", "checkpoint_problems", "newest_intact_checkpoint",
           "resolve_resume", "load_checkpoint"]

STATE_FILE = "trainer_state.json"
META_FILE = "checkpoint.json"
RNG_FILE = "rng_state_{rank}.safetensors"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: str) -> Path:
    """The folder holding a run's ``step_N`` checkpoints."""
    return Path(output_dir) / "checkpoints"


def _step_dirs(output_dir: str) -> list[Path]:
    """Every ``checkpoints/step_N`` folder (marker or not, ``.partial`` ones excluded), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def complete_checkpoints(output_dir: str) -> list[Path]:
    """Checkpoints under ``output_dir`` that carry the ``COMPLETE`` marker, oldest first (not yet verified)."""
    return [p for p in _step_dirs(output_dir) if (p / MARKER).is_file()]


def latest_checkpoint(output_dir: str) -> Optional[Path]:
    """The newest complete checkpoint, or None (see :func:`newest_intact_checkpoint` for a verified one)."""
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


# ---- save ---------------------------------------------------------------------------------

def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, state: dict, keep: int, *,
                    model, optimizer, scheduler, run: Optional[dict] = None,
                    extras: Optional[Callable[[Path], None]] = None) -> Path:
    """Save model, optimiser, LR schedule, RNG and ``state`` atomically as ``checkpoints/step_{step}``.

    ``run`` is the run record of :func:`~distill_toolkit.engine.run_dir.claim_output_dir`; its
    fingerprint is stored so ``resume_from: latest`` only picks this run's checkpoints. Only
    the ``keep`` newest checkpoints (and the one ``state['best_checkpoint']`` names) are kept.
    ``extras(folder)`` writes more files into the checkpoint on the main process before it is sealed
    (the Trainer's: the student's config and tokenizer under ``student/``, the run's ``config.yaml``).
    """
    root = checkpoint_root(output_dir)
    final, partial = root / f"step_{step}", root / f"step_{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    save_weights(accelerator, partial, model, optimizer)
    save_tree(rng_state(), partial / RNG_FILE.format(rank=accelerator.process_index), "rng")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / STATE_FILE).write_text(json.dumps(state, indent=2))
        (partial / META_FILE).write_text(json.dumps(_meta(accelerator, step, scheduler, run), indent=1))
        if extras is not None:
            extras(partial)
        seal(partial)  # MANIFEST.json, then the COMPLETE marker
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in complete_checkpoints(output_dir)[:-keep]:
            if old != final and not state.get("best_checkpoint", "").endswith(old.name):
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _meta(accelerator: Accelerator, step: int, scheduler, run: Optional[dict]) -> dict:
    """What ``checkpoint.json`` records: the engine's position and the run it belongs to (no tensors)."""
    scaler = getattr(accelerator, "scaler", None)
    return {"format": 1, "step": step, "engine": engine_kind(accelerator), "num_processes": accelerator.num_processes,
            "accelerator_step": accelerator.step, "scheduler": to_json(scheduler.state_dict(), "lr_scheduler"),
            "scaler": None if scaler is None else to_json(scaler.state_dict(), "grad_scaler"),
            "fingerprint": (run or {}).get("fingerprint"), "run_config": (run or {}).get("config")}


# ---- verify and choose --------------------------------------------------------------------

def checkpoint_problems(path: Path, run: Optional[dict] = None) -> list[str]:
    """What makes checkpoint ``path`` unusable, one line per file ('' list when intact and, given ``run``, this run's).

    Checks the manifest (missing, truncated, altered or unexpected files, any pickle) and then
    that ``checkpoint.json`` records the fingerprint of ``run``.
    """
    problems = manifest_problems(path)
    if problems or run is None:
        return problems
    try:
        meta = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError) as err:
        return [f"{META_FILE}: unreadable ({err})"]
    if meta.get("fingerprint") != run["fingerprint"]:
        diff = config_diff(meta.get("run_config") or {}, run["config"]) or ["its recorded fingerprint"]
        return [f"{META_FILE}: written by another run (differs in {'; '.join(diff)})"]
    return []


def newest_intact_checkpoint(output_dir: str, run: Optional[dict] = None) -> Optional[Path]:
    """The newest complete checkpoint that passes :func:`checkpoint_problems`, or None. Reads on this rank only."""
    for path in reversed(complete_checkpoints(output_dir)):
        if not checkpoint_problems(path, run):
            return path
    return None


def resolve_resume(accelerator: Accelerator, resume_from: Optional[str], output_dir: str,
                   run: Optional[dict] = None) -> Optional[Path]:
    """The checkpoint to resume from, the same on every rank (chosen and verified on the main process).

    ``latest``: the newest intact checkpoint of this run (damaged or foreign newer ones are
    skipped with a warning); None when there is none yet. A path: that checkpoint, refused
    with :class:`CheckpointError` if it is incomplete, damaged or another run's.
    """
    if resume_from is None:
        return None
    if resume_from == "latest":
        return main_decides(accelerator, lambda: _latest_intact(output_dir, run))
    return main_decides(accelerator, lambda: _explicit(Path(resume_from), output_dir, run))


def _latest_intact(output_dir: str, run: Optional[dict]) -> Optional[Path]:
    skipped = []
    for path in reversed(_step_dirs(output_dir)):
        problems = checkpoint_problems(path, run) if (path / MARKER).is_file() else [f"no {MARKER} marker"]
        if not problems:
            if skipped:
                logger.warning(f"training.resume_from: latest -> resuming from {path}, the newest intact checkpoint; "
                               f"skipped {' | '.join(skipped)}", main_process_only=True)
            return path
        skipped.append(f"{path.name}: {'; '.join(problems)}")
    if skipped:
        raise CheckpointError(
            f"training.resume_from: latest: no checkpoint in {checkpoint_root(output_dir)} is usable (intact and "
            f"written by this run): "
            f"{' | '.join(skipped)}. Fix: restore the damaged files, or set `training.overwrite: true` "
            "(CLI: --overwrite) to start the run again")
    return None


def _explicit(path: Path, output_dir: str, run: Optional[dict]) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"training.resume_from: {path} does not exist. Fix: give a folder under "
                              f"{checkpoint_root(output_dir)} or `latest`")
    if not (path / MARKER).is_file():
        raise CheckpointError(f"training.resume_from: {path} is not a complete checkpoint (no {MARKER} marker; "
                              "the run that wrote it was probably killed mid-save). Fix: resume from an earlier "
                              "checkpoint or `latest`")
    problems = checkpoint_problems(path, run)
    if problems:
        raise CheckpointError(
            f"training.resume_from: {path} cannot be resumed: {' | '.join(problems)}. Fix: resume from an earlier "
            "checkpoint, or `latest` (which falls back to the newest intact one)")
    return path


# ---- load ---------------------------------------------------------------------------------

def load_checkpoint(accelerator: Accelerator, path: Path, *, model, optimizer, scheduler) -> dict:
    """Restore everything :func:`save_checkpoint` wrote into ``model``, ``optimizer``, ``scheduler``,
    the gradient scaler and this rank's RNG; returns the trainer state. Nothing is unpickled.

    Call it on a checkpoint :func:`resolve_resume` returned (that is, verified).
    """
    state = _read_json(path / STATE_FILE)
    meta = _read_json(path / META_FILE)
    if meta.get("engine") != engine_kind(accelerator):
        raise CheckpointError(f"training.resume_from: {path} was written under {meta.get('engine')}, this launch "
                              f"runs {engine_kind(accelerator)}. Fix: resume with the launcher that wrote it")
    try:
        load_weights(accelerator, path, model, optimizer)
        scheduler.load_state_dict(from_json(meta["scheduler"]))
    except (RuntimeError, ValueError, KeyError, OSError, TypeError) as err:
        raise CheckpointError(
            f"training.resume_from: checkpoint {path} does not match this run's model/optimizer: {err}. "
            "Fix: resume with the same student, matches and projections that wrote it, or start a fresh "
            "output_dir") from err
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None and meta.get("scaler") is not None:
        scaler.load_state_dict(from_json(meta["scaler"]))
    accelerator.step = int(meta.get("accelerator_step", 0))
    _restore_rng(accelerator, path, meta)
    return state


def _restore_rng(accelerator: Accelerator, path: Path, meta: dict) -> None:
    rng = path / RNG_FILE.format(rank=accelerator.process_index)
    if rng.is_file():
        set_rng_state(load_tree(rng))
    else:  # written by fewer processes than this launch has
        logger.warning(f"{rng.name} is not in {path} (written by {meta.get('num_processes')} processes, this launch "
                       f"has {accelerator.num_processes}): this rank's random streams start afresh, so the resumed "
                       "run will not repeat the uninterrupted one exactly")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"training.resume_from: cannot read {path} ({err}). "
                              "Fix: resume from another checkpoint") from err
