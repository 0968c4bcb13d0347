"""Where :class:`~distill_toolkit.hf.DistillationTrainer` puts its frozen teachers.

The Trainer's Accelerator is built by ``transformers`` from ``TrainingArguments``, so the toolkit's
own placement (:mod:`distill_toolkit.teachers.placement`, which reads a ``"teacher"`` DeepSpeed plugin
that only :func:`~distill_toolkit.engine.build_accelerator` creates) does not apply here. Two cases:

- no DeepSpeed, or DeepSpeed ZeRO-0/1/2: a full copy of the teacher on ``args.device`` of every rank;
- DeepSpeed ZeRO-3: a ZeRO-3 *inference* engine (no optimizer, no scheduler) built from the
  student's DeepSpeed config, so each rank holds 1/N of every large teacher parameter.

A teacher is never passed to ``accelerator.prepare``, so it is never wrapped in DDP/FSDP.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from accelerate import Accelerator
from torch import nn

from distill_toolkit.teachers.placement import hidden_size

_ZERO_SIZES = ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold")


def deepspeed_zero_stage(accelerator: Accelerator) -> int:
    """The ZeRO stage of the Trainer's DeepSpeed plugin; ``-1`` without DeepSpeed."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return -1 if plugin is None else int(plugin.zero_stage)


def teacher_engine_config(student_config: dict, teacher: nn.Module) -> dict:
    """A DeepSpeed ZeRO-3 inference config for ``teacher``, from the student's config.

    The optimizer, scheduler and ``train_batch_size`` entries are dropped; ``auto`` ZeRO bucket sizes are
    filled from the teacher's ``config.hidden_size`` (as Transformers does for a model it prepares). A
    value still ``auto`` elsewhere raises ``ValueError`` naming it: DeepSpeed would refuse it anyway,
    less clearly.
    """
    config = copy.deepcopy(student_config)
    # No optimiser; the global batch is left to DeepSpeed (micro-batch x accumulation x ranks), since the
    # value filled in before the process group existed may count one rank.
    for key in ("optimizer", "scheduler", "train_batch_size"):
        config.pop(key, None)
    zero = config.setdefault("zero_optimization", {})
    zero["stage"] = 3
    hidden = hidden_size(teacher) or 1024  # bucket sizes tune speed and peak memory; any value works
    sizes = dict(zip(_ZERO_SIZES, (hidden * hidden, int(0.9 * hidden * hidden), 10 * hidden)))
    zero.update({k: v for k, v in sizes.items() if zero.get(k, "auto") == "auto"})
    left = sorted(_auto_keys(config))
    if left:
        raise ValueError(f"the DeepSpeed config still has `auto` for {left} when the teacher's ZeRO-3 engine is "
                         "built. Fix: put concrete values there in the DeepSpeed JSON given to TrainingArguments")
    return config


def place_teacher(accelerator: Accelerator, model: nn.Module, device: Any) -> nn.Module:
    """``model`` on ``device`` (replicated), or wrapped in a ZeRO-3 inference engine when the Trainer runs
    DeepSpeed ZeRO-3. Returns what to call for the teacher's forward."""
    if deepspeed_zero_stage(accelerator) != 3:
        return model.to(device)
    import deepspeed  # optional at import time: only a DeepSpeed run needs it

    config = teacher_engine_config(accelerator.state.deepspeed_plugin.deepspeed_config, model)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, not the engine
    return engine


def partitioned_parameters(model: nn.Module) -> list:
    """The parameters of ``model`` that DeepSpeed ZeRO-3 holds as partitions (e.g. loaded by
    ``from_pretrained`` after ``TrainingArguments`` named a ZeRO-3 config)."""
    return [p for p in model.parameters() if hasattr(p, "ds_id")]


def gathered(params: list):
    """A context in which ZeRO-3-partitioned ``params`` are whole on every rank (collective), so the model
    can run a forward before (or outside) its DeepSpeed engine; nothing for ordinary parameters."""
    if not params:
        return contextlib.nullcontext()
    import deepspeed  # only a ZeRO-3 run gets here

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def _auto_keys(config: dict, prefix: str = ""):
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _auto_keys(value, name + ".")
        elif value == "auto":
            yield name
