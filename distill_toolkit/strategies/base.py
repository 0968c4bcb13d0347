"""The strategy protocol and its registry.

A strategy decides *what* the student learns from; the loop decides everything about
*training*. The loop calls, in order:

1. ``feature_keys()`` once, before any forward pass: which features each model must
   yield (``{"student": [...], "teacher": [...]}``, keys as in :mod:`distill_toolkit.features`),
   so hooks capture only those. Multi-teacher strategies name each teacher role.
2. ``setup(student, teachers)`` once, on the views of a first (probe) batch: check that
   shapes agree and build learnable parts (projections) whose sizes depend on the models.
   Errors raised here name the config field and the fix, before any training step.
3. ``forward(batch, student, teachers, progress)`` every micro-batch, inside the student's
   autograd graph: returns ``(loss, terms)`` where ``terms`` maps names to scalar tensors
   that the trackers log (``kd``, ``hard_label``, ``hidden_mse/S2-T4`` ...).

``student`` and each teacher are :class:`~distill_toolkit.features.ModelView` objects;
``teachers`` maps role names to views (``{"teacher": view}`` for one teacher; a view read
from a teacher cache looks the same). ``progress`` is the fraction of training done, in
[0, 1], for schedules. A strategy is an ``nn.Module``: its parameters (projections) are
trained, checkpointed and distributed with the student.

Register a new strategy with :func:`register_strategy`; nothing else needs editing.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView

_STRATEGIES: dict[str, type] = {}


class UnknownStrategyError(KeyError, ValueError):
    """A strategy name that is not registered."""

    def __str__(self) -> str:
        return self.args[0]


class StrategyError(ValueError):
    """A strategy cannot work with these models or this batch; the message says why and what to change."""


class Strategy(nn.Module):
    """Base class; see the module docstring for the protocol."""

    name = "base"
    #: roles of the teachers this strategy reads; empty for teacher-free strategies.
    teacher_roles: tuple = ("teacher",)

    def __init__(self, config: DistillationConfig):
        super().__init__()
        self.config = config

    def feature_keys(self) -> dict[str, list[str]]:
        return {"student": [], **{role: [] for role in self.teacher_roles}}

    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        """Check the probe views and build learnable parts. Default: nothing to do."""

    def param_groups(self, learning_rate: float) -> list[dict]:
        """Optimiser groups for the strategy's own parameters (default: one group at ``learning_rate``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate}] if params else []

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView],
                progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


def register_strategy(name: str, cls: Optional[type] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as a decorator: ``@register_strategy("mine")``."""

    def add(klass):
        if not (isinstance(klass, type) and issubclass(klass, Strategy)):
            raise TypeError(f"strategy {name!r} must be a subclass of distill_toolkit.strategies.Strategy")
        if name in _STRATEGIES and not overwrite:
            raise ValueError(f"strategy {name!r} is already registered; pass overwrite=True to replace it")
        klass.name = name
        _STRATEGIES[name] = klass
        return klass

    return add if cls is None else add(cls)


def get(name: str) -> type:
    """The strategy class registered under ``name``."""
    if name not in _STRATEGIES:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}. Known strategies: {', '.join(sorted(_STRATEGIES))}. "
            "Fix: set `distillation.strategy` to one of them, or register yours with register_strategy()")
    return _STRATEGIES[name]


def available_strategies() -> list[str]:
    return sorted(_STRATEGIES)


def build_strategy(config: DistillationConfig) -> Strategy:
    return get(config.strategy)(config)
