"""The optimiser and LR schedule of the loop: built from ``TrainingConfig``, or given to the Trainer.

A ready optimiser or scheduler passed to :class:`~distill_toolkit.Trainer` (``optimizer=``,
``lr_scheduler=``) is how a script that builds its own (TextBrewer's ``distiller.train(optimizer,
scheduler_class=...)``, see :mod:`distill_toolkit.compat.textbrewer`) keeps them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from distill_toolkit.config import TrainingConfig


def build_optimizer(module: nn.Module, training: TrainingConfig, given: Any = None) -> torch.optim.Optimizer:
    """The optimiser of ``module`` (a :class:`~distill_toolkit.engine.module.DistillationModule`).

    ``given`` None: AdamW over the student's and the strategy's groups, from ``training``. A factory
    ``(param_groups) -> Optimizer``: called with those groups. A ready ``Optimizer``: used as given
    (parameters it lacks stay frozen); the strategy's parameters it does not hold (projections, built
    on the probe batch) are added as new groups, at ``training.projection_learning_rate`` or the
    optimiser's default lr; ``training.learning_rate``/``weight_decay``/``adam_epsilon`` then do not apply.
    """
    t = training
    if isinstance(given, torch.optim.Optimizer):
        held = {id(p) for group in given.param_groups for p in group["params"]}
        lr = t.projection_learning_rate or given.defaults.get("lr", t.learning_rate)
        for group in module.strategy.param_groups(lr):
            params = [p for p in group["params"] if id(p) not in held]
            if params:
                given.add_param_group({**group, "params": params})
        return given
    groups = [{"params": [p for p in module.student.parameters() if p.requires_grad], "lr": t.learning_rate}]
    groups += module.strategy.param_groups(t.projection_learning_rate or t.learning_rate)
    if given is not None:
        return given(groups)
    return torch.optim.AdamW(groups, lr=t.learning_rate, weight_decay=t.weight_decay, eps=t.adam_epsilon)


def build_lr_scheduler(optimizer, training: TrainingConfig, total_steps: int, given: Any = None):
    """``training.lr_scheduler`` over ``total_steps`` (``given`` None), ``given(optimizer)`` for a factory,
    or ``given`` itself for a ready scheduler (it schedules the groups its optimiser held when built).
    The loop steps it once per optimiser step; checkpoints save its ``state_dict()`` as JSON."""
    if given is None:
        return get_scheduler(training.lr_scheduler, optimizer, num_training_steps=total_steps,
                             num_warmup_steps=int(training.warmup_ratio * total_steps))
    return given if hasattr(given, "step") else given(optimizer)
