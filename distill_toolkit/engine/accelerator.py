"""One factory that builds the right :class:`accelerate.Accelerator` for the launch.

The same script runs under ``python``, ``torchrun`` and ``accelerate launch --config_file
launch/X.yaml``; :func:`launch_mode` reads which of these started it and
:func:`build_accelerator` hides the traps of each route:

- a CPU-only multi-process launch needs ``cpu=True`` and gloo, or every rank silently
  trains alone (``accelerate launch --cpu`` starts one process: use ``launch/ddp.yaml``
  with ``ACCELERATE_USE_CPU=1``);
- DeepSpeed needs ``cpu=False`` even on CPUs (``ACCELERATE_USE_CPU`` silently turns it
  off) and a gloo process group there, or both ranks believe they are rank 0 of 1;
- a ZeRO-3 teacher needs its own :class:`~accelerate.utils.DeepSpeedPlugin` beside the
  student's (``"teacher"``; the student's, ``"student"``, stays selected);
- Accelerate's FSDP route refuses CPUs: there the teacher is sharded with torch's FSDP2
  (``teacher_placement: fsdp``) under a DDP launch.

Every refusal names the route that works.
"""

from __future__ import annotations

import os
import shutil
from datetime import timedelta
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, patch_environment

from distill_toolkit.config import TEACHER_PLACEMENTS, ConfigError, TrainingConfig

MODES = ("single", "ddp", "deepspeed", "fsdp")
# Which teacher placements each launch mode can run.
COMPATIBLE = {
    "single": ("replicated", "cpu_offload", "fsdp"),
    "ddp": ("replicated", "cpu_offload", "fsdp"),
    "deepspeed": ("replicated", "cpu_offload", "zero3"),
    "fsdp": ("replicated", "cpu_offload", "fsdp"),
}
CPU_DDP = ("ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/ddp.yaml --num_processes 2 "
           "-m distill_toolkit.cli train CONFIG.yaml")


class LaunchError(RuntimeError):
    """This machine or launch cannot run the requested mode; the message names the route that works."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def launch_mode(training: Optional[TrainingConfig] = None) -> str:
    """``single``, ``ddp``, ``deepspeed`` or ``fsdp``: what the launcher (or the config) asked for.

    DeepSpeed comes from ``accelerate launch --config_file launch/zero*.yaml`` or from
    ``training.deepspeed_config`` (e.g. under ``torchrun``); FSDP from ``launch/fsdp2.yaml``;
    DDP from any launch of more than one process.
    """
    if (training is not None and training.deepspeed_config) or _env_true("ACCELERATE_USE_DEEPSPEED"):
        return "deepspeed"
    if _env_true("ACCELERATE_USE_FSDP"):
        return "fsdp"
    return "ddp" if world_size() > 1 else "single"


def _wants_cpu(training: TrainingConfig) -> bool:
    return training.cpu or _env_true("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


def _lone_cpu_launch() -> bool:
    """``accelerate launch --cpu --num_processes N>1`` without mpirun: one process, a master address, no rank."""
    ranked = any(k in os.environ for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    return (_env_true("ACCELERATE_USE_CPU") and "MASTER_ADDR" in os.environ
            and os.environ.get("KMP_BLOCKTIME") == "1" and not ranked)


def check_launch(training: TrainingConfig, where: str = "training") -> str:
    """Refuse, before any model is loaded, a mode this machine cannot run or a teacher placement
    the launch cannot serve. Returns the launch mode."""
    if _lone_cpu_launch():
        raise LaunchError(
            "`accelerate launch --cpu --num_processes N` started this process alone (Accelerate's CPU launcher "
            f"needs mpirun), so there would be no second rank. What works: `{CPU_DDP}`, or torchrun "
            "--nproc_per_node N --master_addr 127.0.0.1 -m distill_toolkit.cli train CONFIG.yaml")
    mode = launch_mode(training)
    placement = training.teacher_placement
    if placement not in TEACHER_PLACEMENTS:
        raise ConfigError(f"{where}.teacher_placement", f"unknown placement {placement!r}",
                          f"use one of {', '.join(TEACHER_PLACEMENTS)}")
    if placement not in COMPATIBLE[mode]:
        fixes = {
            "zero3": "launch with DeepSpeed (accelerate launch --config_file launch/zero2.yaml or launch/zero3.yaml, "
                     "or set training.deepspeed_config: ds_configs/zero2.json under torchrun), or use "
                     "`teacher_placement: fsdp`, which shards the teacher under DDP",
            "fsdp": "use `teacher_placement: zero3` under DeepSpeed (a ZeRO-3 inference engine), or launch DDP "
                    "(launch/ddp.yaml) to shard the teacher with FSDP2",
        }
        raise ConfigError(f"{where}.teacher_placement",
                          f"{placement!r} cannot run under a {mode} launch (it runs under: "
                          f"{', '.join(m for m, ok in COMPATIBLE.items() if placement in ok)})",
                          fixes.get(placement, f"use one of {', '.join(COMPATIBLE[mode])}"))
    if training.deepspeed_config and not os.path.isfile(training.deepspeed_config):
        raise ConfigError(f"{where}.deepspeed_config", f"file {training.deepspeed_config!r} not found",
                          "point it at a DeepSpeed JSON such as ds_configs/zero2.json (paths are relative to the "
                          "directory you launch from), or remove it")
    if mode == "fsdp" and _wants_cpu(training):
        raise LaunchError(
            "Accelerate's FSDP (launch/fsdp2.yaml) needs GPUs and this launch is CPU-only. What works on CPUs: "
            f"a DDP launch with the teacher sharded by torch's FSDP2 over gloo -- `{CPU_DDP}` with "
            "`training.teacher_placement: fsdp`; for a sharded student on CPUs use DeepSpeed ZeRO-3 "
            "(launch/zero3.yaml with ACCELERATE_USE_CPU=1)")
    if mode == "deepspeed" or placement == "zero3":
        try:
            import deepspeed  # noqa: F401
        except ImportError as err:
            raise LaunchError(f"DeepSpeed is not importable ({err}). Fix: `pip install deepspeed`, or launch DDP "
                              f"(`{CPU_DDP}` on CPUs) with `teacher_placement: fsdp` to shard the teacher") from err
        if not torch.cuda.is_available() and _compiler() is None:
            raise LaunchError(
                "DeepSpeed on CPUs compiles a small shared-memory op at start-up and no C++ compiler was found "
                f"(CXX={os.environ.get('CXX', 'c++')!r}, g++ not on PATH). Fix: install g++ (apt-get install g++), or "
                f"launch DDP instead -- `{CPU_DDP}` -- with `training.teacher_placement: fsdp` to shard the teacher")
    return mode


def _deepspeed_plugins(training: TrainingConfig) -> dict:
    """The student's plugin (from training.deepspeed_config or the launch file) and, for a ZeRO-3
    teacher, the teacher's: inference only, concrete batch size so nothing needs a data loader."""
    from accelerate.utils import DeepSpeedPlugin

    student = DeepSpeedPlugin(hf_ds_config=training.deepspeed_config) if training.deepspeed_config \
        else DeepSpeedPlugin()
    fill = {"gradient_clipping": training.max_grad_norm or 0.0}
    if student.hf_ds_config.is_zero3():  # export gathers the full student onto rank 0
        fill["zero_optimization.stage3_gather_16bit_weights_on_model_save"] = True
    for key, value in fill.items():  # only where the file says `auto`
        student.fill_match(key, must_match=False, **{key: value})
    plugins = {"student": student}
    if training.teacher_placement == "zero3":
        plugins["teacher"] = DeepSpeedPlugin(hf_ds_config={
            "train_micro_batch_size_per_gpu": training.batch_size,
            "gradient_accumulation_steps": 1,
            # Inference only: release every layer after its forward and bound what prefetching may
            # hold ("auto" = about two layers, set by placement.py), or from the third forward on
            # ZeRO-3 prefetches the whole teacher and it grows back to full size on every rank.
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": "auto",
                                  "stage3_prefetch_bucket_size": "auto", "reduce_bucket_size": "auto",
                                  "stage3_max_live_parameters": "auto", "stage3_max_reuse_distance": 0},
        })
    return plugins


def build_accelerator(training: TrainingConfig) -> Accelerator:
    """An Accelerator set up from ``training`` for this launch: DDP, DeepSpeed or FSDP, on GPUs or CPUs;
    precision, accumulation, trackers, seeded data order."""
    mode = check_launch(training)
    cuda = torch.cuda.is_available() and not training.cpu and not _env_true("ACCELERATE_USE_CPU")
    kwargs_handlers = []
    plugins = None
    if mode == "deepspeed":
        cpu = False
        plugins = _deepspeed_plugins(training)
        kwargs_handlers.append(InitProcessGroupKwargs(backend="nccl" if cuda else "gloo",
                                                      timeout=timedelta(minutes=10)))
    else:
        cpu = _wants_cpu(training)
        if world_size() > 1:
            # Naming the backend outside a distributed launch would make Accelerate init a process group.
            kwargs_handlers.append(InitProcessGroupKwargs(backend="gloo" if cpu else "nccl",
                                                          timeout=timedelta(minutes=10)))
    # Accelerate keeps its state in process-wide singletons; a second Trainer in the same
    # process (a teacher run, then a student run) may need other settings. The process
    # group itself (PartialState) is kept. (Accelerate has no public API for this.)
    AcceleratorState._reset_state()
    GradientState._reset_state()
    # Under DeepSpeed, ACCELERATE_USE_CPU would make Accelerate drop DeepSpeed without a word: it is
    # hidden while the Accelerator is built and restored right after (the environment is left as found).
    hidden = {"ACCELERATE_USE_CPU": "false"} if mode == "deepspeed" and "ACCELERATE_USE_CPU" in os.environ else {}
    with patch_environment(**hidden):
        accelerator = Accelerator(
            cpu=cpu,
            mixed_precision=training.mixed_precision,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            log_with=list(training.trackers) or None,
            project_config=ProjectConfiguration(project_dir=training.output_dir, logging_dir=training.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=training.seed),
            kwargs_handlers=kwargs_handlers,
            step_scheduler_with_optimizer=False,
            deepspeed_plugins=plugins,
        )
    _check_built(accelerator, mode)
    return accelerator


def _check_built(accelerator: Accelerator, mode: str) -> None:
    """A launch of N processes must give N ranks: never let a rank train alone without a word."""
    if world_size() > 1 and accelerator.num_processes != world_size():
        raise LaunchError(
            f"the launcher started {world_size()} processes but this one joined a group of "
            f"{accelerator.num_processes} ({accelerator.distributed_type}): each rank would train alone. "
            f"On CPUs launch with `{CPU_DDP}` or torchrun --nproc_per_node N")
    if mode == "deepspeed" and accelerator.distributed_type.name != "DEEPSPEED":
        raise LaunchError(f"DeepSpeed was asked for but Accelerate set up {accelerator.distributed_type}. "
                          "Fix: launch with launch/zero2.yaml or launch/zero3.yaml, and do not pass --cpu")
