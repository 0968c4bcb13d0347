"""An output folder belongs to one run: its config fingerprint, recorded in ``run.json``.

When training starts, :func:`claim_output_dir` compares the run's fingerprint (a hash of
both configs, less the fields in :data:`RESUMABLE_FIELDS`) with the one recorded in
``output_dir/run.json``. A folder holding another run, an unrecorded one, or this run's own
checkpoints or export without ``resume_from`` is refused, so a run never mixes its
checkpoints, ``best/`` or ``final/`` with another's. ``training.overwrite`` clears it instead.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import broadcast_object_list

from distill_toolkit.engine.manifest import MARKER, CheckpointError

logger = get_logger(__name__)

RUN_FILE = "run.json"
# Training fields that may change between a run and its resume (how long, how often, where
# reported); every other field of TrainingConfig and DistillationConfig defines the run.
RESUMABLE_FIELDS = ("resume_from", "max_steps", "num_epochs", "save_every_steps", "eval_every_steps",
                    "eval_every_epochs", "log_every_steps", "progress_bar", "trackers", "project_name",
                    "run_name", "tags", "group", "wandb_mode", "save_total_limit", "overwrite", "output_dir")
# What a run leaves in its output_dir; `overwrite` removes exactly these.
RUN_OUTPUTS = ("checkpoints", "final", "best", "result.json", "config.yaml", RUN_FILE)
_STEP_DIR = re.compile(r"^step_\d+$")
_FIX_OTHER = ("Fix: set `training.overwrite: true` (CLI: --overwrite) to replace it, or choose a new "
              "training.output_dir")


class OutputDirError(CheckpointError):
    """``training.output_dir`` holds another run's outputs; the message names what differs and the fixes."""


def run_config(training, distillation) -> dict:
    """The part of both configs that identifies a run (everything bar :data:`RESUMABLE_FIELDS`)."""
    train = {k: v for k, v in training.to_dict().items() if k not in RESUMABLE_FIELDS}
    return json.loads(json.dumps({"training": train, "distillation": distillation.to_dict()}, default=str))


def fingerprint(config: dict) -> str:
    """SHA-256 of a :func:`run_config` in canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def config_diff(recorded: dict, current: dict) -> list[str]:
    """``section.field: recorded -> current`` for every field that differs between two run configs."""
    out = []
    for section in sorted(set(recorded) | set(current)):
        old, new = recorded.get(section) or {}, current.get(section) or {}
        for name in sorted(set(old) | set(new)):
            if old.get(name, "<absent>") != new.get(name, "<absent>"):
                out.append(f"{section}.{name}: {old.get(name, '<absent>')!r} there, {new.get(name, '<absent>')!r} "
                           "in this run")
    return out


def main_decides(accelerator: Accelerator, decide: Callable[[], Any]) -> Any:
    """Run ``decide`` on the main process only and hand its result (or its error) to every rank.

    Every rank then acts alike -- all resume the same checkpoint, or all raise -- so no rank
    is left waiting in a collective the others never reach.
    """
    if accelerator.num_processes == 1:
        return decide()
    box, error = [None], None
    if accelerator.is_main_process:
        try:
            box = [("ok", decide())]
        except Exception as err:  # noqa: BLE001 (re-raised on every rank below)
            error, box = err, [("error", type(err), str(err))]
    broadcast_object_list(box, from_process=0)
    if error is not None:
        raise error
    if box[0][0] == "error":
        _, kind, message = box[0]
        try:
            exc = kind(message)
        except TypeError:  # an error class that is not built from one message
            exc = RuntimeError(message)
        raise exc
    return box[0][1]


def _existing_outputs(out: Path) -> list[str]:
    """Complete checkpoints and the final export present in ``out``, as relative names."""
    found = sorted(f"checkpoints/{p.name}" for p in (out / "checkpoints").glob("step_*")
                   if _STEP_DIR.match(p.name) and (p / MARKER).is_file())
    return found + [name for name in ("final",) if (out / name).is_dir()]


def _recorded(out: Path) -> dict:
    try:
        record = json.loads((out / RUN_FILE).read_text())
        if not isinstance(record.get("config"), dict) or not isinstance(record.get("fingerprint"), str):
            raise ValueError("no `config`/`fingerprint`")
        return record
    except (OSError, ValueError, AttributeError) as err:
        raise OutputDirError(f"training.output_dir: {out / RUN_FILE} is unreadable ({err}). {_FIX_OTHER}") from err


def ownership_problem(out: Path, config: dict, resume_from) -> str:
    """Why this run may not use ``out`` ('' when it may): another run's, unrecorded, or not resumed."""
    outputs = _existing_outputs(out)
    shown = ", ".join(outputs[:4]) + (" ..." if len(outputs) > 4 else "")
    if not (out / RUN_FILE).exists():
        if not outputs:
            return ""
        return (f"training.output_dir: {out} holds {shown} but no {RUN_FILE}, so they cannot be told apart from "
                f"another run's. {_FIX_OTHER}")
    record = _recorded(out)
    if record["fingerprint"] != fingerprint(config):
        diff = config_diff(record["config"], config) or ["(fields recorded in another format)"]
        return (f"training.output_dir: {out} belongs to another run; its {RUN_FILE} differs in "
                f"{'; '.join(diff)}. {_FIX_OTHER}")
    if outputs and resume_from is None:
        return (f"training.output_dir: {out} already holds this run's {shown}. Fix: set "
                "`training.resume_from: latest` to continue it, or `training.overwrite: true` (CLI: --overwrite) "
                "to start it again from scratch")
    return ""


def _check_overwrite(training, out: Path) -> None:
    resume = training.resume_from
    if resume == "latest" or (resume and Path(resume).resolve().is_relative_to(out.resolve())):
        raise OutputDirError(f"training.overwrite: true removes the checkpoints in {out}, so "
                             f"training.resume_from: {resume} cannot be resumed. Fix: drop one of the two")


def claim_output_dir(accelerator: Accelerator, training, distillation) -> dict:
    """Make ``training.output_dir`` this run's, or raise :class:`OutputDirError`; returns the run record.

    With ``training.overwrite`` the outputs of whatever ran there before (checkpoints, final,
    best, result.json, run.json) are removed first, by the main process.
    """
    out = Path(training.output_dir)
    config = run_config(training, distillation)
    record = {"fingerprint": fingerprint(config), "config": config}
    overwrite = bool(getattr(training, "overwrite", False))

    def decide():
        if overwrite:
            _check_overwrite(training, out)
            removed = [name for name in RUN_OUTPUTS if (out / name).exists()]
            for name in removed:
                if (out / name).is_dir():
                    shutil.rmtree(out / name)
                else:
                    (out / name).unlink()
            if removed:
                logger.warning(f"training.overwrite: removed {', '.join(removed)} of the previous run in {out}",
                               main_process_only=True)
        else:
            problem = ownership_problem(out, config, training.resume_from)
            if problem:
                raise OutputDirError(problem)
        if not (out / RUN_FILE).exists():
            out.mkdir(parents=True, exist_ok=True)
            (out / RUN_FILE).write_text(json.dumps({**record, "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                                   indent=2))
        return True

    main_decides(accelerator, decide)
    accelerator.wait_for_everyone()
    return record
