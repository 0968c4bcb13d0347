"""One factory that builds the right :class:`accelerate.Accelerator` for the machine.

It hides the traps of running on CPUs: without ``cpu=True`` every rank of a CPU-only
multi-process launch silently trains alone, and the process group must use gloo there.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration

from distill_toolkit.config import TrainingConfig


def _on_cpu(training: TrainingConfig) -> bool:
    return training.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") \
        or not torch.cuda.is_available()


def build_accelerator(training: TrainingConfig) -> Accelerator:
    """An Accelerator set up from ``training``: precision, accumulation, trackers, seeded data order."""
    cpu = _on_cpu(training)
    kwargs_handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Naming the backend outside a distributed launch would make Accelerate init a process group.
        kwargs_handlers.append(InitProcessGroupKwargs(backend="gloo" if cpu else "nccl",
                                                      timeout=timedelta(minutes=10)))
    if training.trackers and "wandb" in training.trackers:
        # W&B must never block on the network: offline runs are written under output_dir/wandb.
        os.environ.setdefault("WANDB_MODE", training.wandb_mode)
        os.environ.setdefault("WANDB_DIR", training.output_dir)
        os.environ.setdefault("WANDB_SILENT", "true")
    # Accelerate keeps its state in process-wide singletons; a second Trainer in the same
    # process (a teacher run, then a student run) may need other settings. The process
    # group itself (PartialState) is kept.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    return Accelerator(
        cpu=cpu,
        mixed_precision=training.mixed_precision,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        log_with=list(training.trackers) or None,
        project_config=ProjectConfiguration(project_dir=training.output_dir, logging_dir=training.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=training.seed),
        kwargs_handlers=kwargs_handlers,
        step_scheduler_with_optimizer=False,
    )
