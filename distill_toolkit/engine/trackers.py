"""Experiment trackers: any tracker Accelerate knows, started with the run's config, names and W&B resume.

``training.trackers`` names them (``tensorboard``, ``wandb``, ``mlflow``, ``comet_ml``, ``aim``,
``clearml``, ``dvclive``, ``swanlab``, ``trackio``); each is Accelerate's own tracker class. Every
tracker receives the run's resolved config (flattened to ``section.field`` keys) and the package
versions as the run's config.

Naming follows one rule for every field: the config's value when it is set; else the tracker's own
environment variables, which the tracker reads itself (W&B: ``WANDB_PROJECT``, ``WANDB_NAME``,
``WANDB_TAGS``, ``WANDB_RUN_GROUP``, ``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_API_KEY`` ...; MLflow:
``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME`` ...); else the toolkit's defaults (project
``distill_toolkit``, W&B mode ``offline`` with its files under ``output_dir``).

- ``project_name``: the W&B project, the MLflow experiment, the TensorBoard sub-folder of ``output_dir``.
- ``run_name``, ``tags``, ``group``: the W&B run's name, tags and group; MLflow's run name and tags
  (each tag a key with an empty value, the group as tag ``group``).
- A resumed run continues the same W&B run: its id is kept in the checkpoint's ``trainer_state.json``
  (``wandb_run_id``) and passed back as ``wandb.init(id=..., resume="allow")``.
"""

from __future__ import annotations

import os
from typing import Optional

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

from distill_toolkit.config import ConfigError, TrainingConfig
from distill_toolkit.engine.run_info import flat_config

DEFAULT_PROJECT = "distill_toolkit"
# What to install for each tracker (the error when one is missing names it).
PIP_NAMES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny (or mlflow)",
             "comet_ml": "comet-ml", "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
             "trackio": "trackio"}


def check_trackers(training: TrainingConfig) -> None:
    """Every tracker of ``training.trackers`` is known to this Accelerate and installed, or a
    :class:`~distill_toolkit.config.ConfigError` names the one that is not and what to install."""
    available = {str(name) for name in get_available_trackers()}
    for name in training.trackers:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError("training.trackers", f"this accelerate does not know the tracker {name!r}",
                              f"use one of {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}, or upgrade accelerate")
        if name not in available:
            raise ConfigError("training.trackers", f"tracker {name!r} is not installed",
                              f"pip install {PIP_NAMES.get(name, name)}, or remove {name!r} from training.trackers")


def project_name(training: TrainingConfig) -> str:
    """``training.project_name``, else ``WANDB_PROJECT``, else ``distill_toolkit``."""
    return training.project_name or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


def _drop_none(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def init_kwargs(training: TrainingConfig, wandb_run_id: Optional[str] = None) -> dict:
    """The per-tracker keyword arguments of ``accelerator.init_trackers`` (see the module's naming rule)."""
    t = training
    mode = t.wandb_mode or (None if os.environ.get("WANDB_MODE") else "offline")
    wandb = _drop_none({"name": t.run_name, "tags": list(t.tags) or None, "group": t.group,
                        "mode": mode, "dir": None if os.environ.get("WANDB_DIR") else t.output_dir,
                        "id": wandb_run_id, "resume": "allow" if wandb_run_id else None})
    wandb["settings"] = {"silent": True}
    mlflow_tags = {**{tag: "" for tag in t.tags}, **({"group": t.group} if t.group else {})}
    mlflow = _drop_none({"run_name": t.run_name, "tags": mlflow_tags or None})
    return {"wandb": wandb, "mlflow": mlflow}


def start_trackers(accelerator: Accelerator, training: TrainingConfig, config: dict, versions: dict,
                   wandb_run_id: Optional[str] = None) -> Optional[str]:
    """Start ``training.trackers`` with ``config`` (and ``versions``) as the run's config.

    ``wandb_run_id`` (a resumed run's) continues that W&B run. Returns the W&B run's id on the main
    process (None without W&B, and on the other ranks: the checkpoint is written by the main process).
    """
    if not training.trackers:
        return wandb_run_id
    accelerator.init_trackers(project_name(training), config=flat_config(config, versions),
                              init_kwargs=init_kwargs(training, wandb_run_id))
    if "wandb" in training.trackers and accelerator.is_main_process:
        run = accelerator.get_tracker("wandb", unwrap=True)
        return getattr(run, "id", None) or wandb_run_id
    return wandb_run_id


def finish_trackers(accelerator: Accelerator) -> None:
    """Close every tracker (not ``accelerator.end_training()``: it destroys the process group, and
    ``evaluate()`` or an export may still gather across ranks after ``train()``)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers.clear()
