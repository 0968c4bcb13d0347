"""The strategy protocol and its registry.

A strategy decides *what* the student learns from; the loop decides everything about
*training*. A strategy is an ``nn.Module`` registered by name; the :class:`~distill_toolkit.Trainer`
builds it from ``distillation.strategy`` and calls, in order:

0. ``bind(roles, tasks)`` once, first: the roles (names) of the teachers it was given and, for
   multi-task data, the task names. ``teacher=model`` is the role ``"teacher"``;
   ``teacher=[m0, m1]`` the roles ``"teacher0"``, ``"teacher1"``; ``teacher={"big": m}`` the role
   ``"big"``; nested ``{"movies": [m0, m1]}`` the roles ``"movies/teacher0"``, ``"movies/teacher1"``.
   The strategy checks them and sets :attr:`teacher_roles`: the teachers it reads.
1. ``feature_keys()`` once, before any forward pass: which features each model must
   yield (``{"student": [...], role: [...]}``, keys as in :mod:`distill_toolkit.features`),
   so hooks capture only those, and only on the teachers that need them.
2. ``setup(student, teachers)`` on the views of a probe batch (one per task for multi-task
   data; ``student.task`` names it): check that shapes agree and build learnable parts
   (projections) whose sizes depend on the models. Errors raised here name the config field
   and the fix, before any training step.
3. ``teachers_for(batch)`` every micro-batch: the roles whose teachers run on this batch
   (default: all; ``multi_task`` picks the batch's task's teachers).
4. ``forward(batch, student, teachers, progress)`` every micro-batch, inside the student's
   autograd graph: returns ``(loss, terms)`` where ``terms`` maps names to scalar tensors
   that the trackers log (``kd``, ``hard_label``, ``hidden_mse/S2-T4`` ...).

``student`` and each teacher are :class:`~distill_toolkit.features.ModelView` objects
(logits, masks, the model's own loss, labels, captured features, the batch's ``task``);
``teachers`` maps the roles of step 3 to views (a view read from a teacher cache looks the
same). ``progress`` is the fraction of training done, in [0, 1], for schedules. Being an
``nn.Module``, a strategy's parameters (projections) are trained, checkpointed and distributed
with the student; ``param_groups(lr)`` gives their optimiser groups. ``self.options`` holds
``distillation.strategy_options``, free-form settings for custom strategies.

Register a new strategy with :func:`register_strategy`; nothing else needs editing.
See ``docs/strategies.md`` for a worked example.
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
        self.options = dict(getattr(config, "strategy_options", None) or {})

    def bind(self, roles: list[str], tasks: Optional[list[str]] = None) -> None:
        """Check the roles of the teachers given. Default: exactly :attr:`teacher_roles` (a single teacher
        passed under another name is accepted as the one role; the Trainer renames it)."""
        expected = list(self.teacher_roles)
        if sorted(roles) == sorted(expected) or (len(roles) == len(expected) == 1):
            return
        if not expected:
            return  # teacher-free strategies ignore teachers
        raise StrategyError(
            f"strategy {self.name!r} takes {len(expected)} teacher(s) ({', '.join(expected)}) but got {len(roles)}"
            f"{': ' + ', '.join(roles) if roles else ''}. Fix: pass "
            + ("teacher=<model>" if len(expected) == 1 else f"teacher={{{', '.join(repr(r) + ': ...' for r in expected)}}}")
            + (", or use strategy 'multi_teacher' for several teachers" if len(roles) > 1 else ""))

    def feature_keys(self) -> dict[str, list[str]]:
        return {"student": [], **{role: [] for role in self.teacher_roles}}

    def teachers_for(self, batch) -> tuple:
        """Roles whose teachers run on ``batch`` (default: every role)."""
        return tuple(self.teacher_roles)

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
