"""Where a frozen teacher lives: ``replicated``, ``zero3``, ``fsdp`` or ``cpu_offload``.

A teacher is never wrapped in DDP, never trained and never enters the student's
checkpoint; placement only decides how its weights are held:

- ``replicated`` (default): a full copy on every rank's device.
- ``zero3``: a DeepSpeed ZeRO-3 inference engine (no optimizer) built from the ``"teacher"``
  :class:`~accelerate.utils.DeepSpeedPlugin`; each of N ranks holds 1/N of every large
  parameter and gathers one layer at a time during the forward. Needs a DeepSpeed launch.
- ``fsdp``: torch's FSDP2 ``fully_shard`` on every transformer block, the (untied) input
  embeddings and the root; same 1/N, over NCCL or gloo. Runs under DDP (and Accelerate's FSDP
  on GPUs); with one process there is nothing to shard and it is ``replicated``.
- ``cpu_offload``: weights stay in CPU memory and are copied to the device one module at a
  time (Accelerate's ``cpu_offload``); slow but needs almost no device memory.

To keep a large teacher from ever being whole on one rank, pass the Trainer a *function*
that builds it (``teacher=lambda: AutoModelForSequenceClassification.from_pretrained(path)``):
under ``zero3`` it then runs with the teacher's plugin selected, so Transformers loads the
weights straight into ZeRO-3 partitions.
"""

from __future__ import annotations

from typing import Callable, Union

import torch
from accelerate import Accelerator
from torch import nn

from distill_toolkit.config import TEACHER_PLACEMENTS

TeacherSource = Union[nn.Module, Callable[[], nn.Module]]


def _deepspeed_plugin(accelerator: Accelerator, name: str):
    plugins = getattr(accelerator.state, "deepspeed_plugins", None)
    return plugins.get(name) if isinstance(plugins, dict) else None


def build_teacher(accelerator: Accelerator, teacher: TeacherSource, placement: str) -> nn.Module:
    """``teacher`` itself, or what its builder returns when called in the right context for ``placement``."""
    if isinstance(teacher, nn.Module) or teacher is None:
        return teacher
    if not callable(teacher):
        raise TypeError(f"teacher must be an nn.Module or a function returning one, got {type(teacher).__name__}")
    if placement == "zero3":
        accelerator.state.select_deepspeed_plugin("teacher")
        try:
            return teacher()
        finally:
            accelerator.state.select_deepspeed_plugin("student")
    student_plugin = _deepspeed_plugin(accelerator, "student")
    if student_plugin is not None and student_plugin.is_zero3_init_enabled():
        # A ZeRO-3 student must not make a replicated teacher load into ZeRO-3 partitions.
        with student_plugin.zero3_init_context_manager(enable=False):
            return teacher()
    return teacher()


def hidden_size(model: nn.Module):
    """``config.hidden_size`` (or the largest of ``hidden_sizes``), or None: sizes DeepSpeed's ``auto`` buckets."""
    config = getattr(model, "config", None)
    size = getattr(config, "hidden_size", None)
    if size is None and getattr(config, "hidden_sizes", None):
        size = max(config.hidden_sizes)
    return size


def fill_deepspeed_auto(plugin, model: nn.Module) -> None:
    """Fill the ``auto`` bucket sizes of a DeepSpeed config from ``model.config.hidden_size``, as
    Accelerate does for a bare Hugging Face model (the loop prepares a wrapper without ``config``)."""
    keys = ("zero_optimization.reduce_bucket_size", "zero_optimization.stage3_prefetch_bucket_size",
            "zero_optimization.stage3_param_persistence_threshold")
    if plugin is None or not any(plugin.is_auto(k) for k in keys):
        return
    hidden = hidden_size(model)
    if hidden is None:
        raise ValueError(f"the DeepSpeed config has `auto` for {[k for k in keys if plugin.is_auto(k)]} and "
                         f"{type(model).__name__} has no config.hidden_size to derive them from. Fix: put integers "
                         "there in the ds_configs JSON (e.g. reduce_bucket_size: 5e8)")
    for key, value in zip(keys, (hidden * hidden, int(0.9 * hidden * hidden), 10 * hidden)):
        plugin.fill_match(key, must_match=False, **{key: value})


def prepare_student_config(accelerator: Accelerator, student: nn.Module) -> None:
    """Settings the student's DeepSpeed plugin can only get from the student itself."""
    fill_deepspeed_auto(_deepspeed_plugin(accelerator, "student"), student)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: Hugging Face's ``_no_split_modules``, else the
    members of the longest ``nn.ModuleList``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names and m is not model]
    if found:
        return found
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


def place_teacher(accelerator: Accelerator, model: nn.Module, placement: str) -> nn.Module:
    """Put a frozen teacher where ``placement`` says; returns what to call for its forward."""
    if placement not in TEACHER_PLACEMENTS:
        raise ValueError(f"training.teacher_placement: unknown {placement!r}. "
                         f"Fix: use one of {', '.join(TEACHER_PLACEMENTS)}")
    device = accelerator.device
    if placement == "replicated":
        return model.to(device)
    if placement == "cpu_offload":
        from accelerate import cpu_offload

        return cpu_offload(model.to("cpu"), execution_device=device)
    if placement == "fsdp":
        return _fully_shard(model, device)
    return _zero3_engine(accelerator, model)


def _fully_shard(model: nn.Module, device: torch.device) -> nn.Module:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return model.to(device)  # one process: nothing to shard across
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    model.to(device)
    units = _blocks(model)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside_units = {id(m) for unit in units for m in unit.modules()}
    tied = output is not None and getattr(output, "weight", None) is getattr(embeddings, "weight", None)
    if isinstance(embeddings, nn.Module) and id(embeddings) not in inside_units and not tied:
        units.append(embeddings)  # its own unit, so the largest matrix is not gathered for the whole forward
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


def _zero3_engine(accelerator: Accelerator, model: nn.Module) -> nn.Module:
    import deepspeed

    plugin = _deepspeed_plugin(accelerator, "teacher")
    if plugin is None:
        raise ValueError("training.teacher_placement: zero3 needs the teacher's DeepSpeed plugin, which "
                         "build_accelerator creates for a DeepSpeed launch. Fix: launch with launch/zero2.yaml or "
                         "launch/zero3.yaml, or use teacher_placement: fsdp")
    hidden = hidden_size(model) or 1024  # these sizes tune speed and peak memory; any value works
    zero = plugin.deepspeed_config["zero_optimization"]
    sizes = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
             "stage3_param_persistence_threshold": 10 * hidden, "stage3_max_live_parameters": 24 * hidden * hidden}
    zero.update({k: v for k, v in sizes.items() if zero.get(k) == "auto"})
    engine, *_ = deepspeed.initialize(model=model, config=plugin.deepspeed_config)
    engine.module.eval()
    return engine
