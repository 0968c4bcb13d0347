"""The strategy protocol and its registry.

A strategy decides *what* the student learns from; the loop decides everything about
*training*. A strategy is an ``nn.Module`` registered by name;
:func:`~distill_toolkit.strategies.build_strategy` checks the config's names
(:func:`~distill_toolkit.strategies.check_distillation`, which calls the class's
``check_options(options, where)``) and builds it from ``distillation.strategy``. The
:class:`~distill_toolkit.Trainer` then calls, in order:

0. ``bind(roles, tasks)`` once, first: the roles (names) of the teachers it was given and, for
   multi-task data, the task names. ``teacher=model`` is the role ``"teacher"``;
   ``teacher=[m0, m1]`` the roles ``"teacher0"``, ``"teacher1"``; ``teacher={"big": m}`` the role
   ``"big"``; nested ``{"movies": [m0, m1]}`` the roles ``"movies/teacher0"``, ``"movies/teacher1"``.
   The strategy checks them and sets :attr:`teacher_roles`: the teachers it reads.
1. ``feature_keys()`` once, before any forward pass: which features each model must
   yield (``{"student": [...], role: [...]}``, keys as in :mod:`distill_toolkit.features`),
   so hooks capture only those, and only on the teachers that need them.
   ``forward_overrides(role)`` is read for every forward of the model of ``role``
   (``"student"`` or a teacher role): keyword arguments merged into its inputs, ``None``
   removing one (default ``{}``; ``causal_lm`` asks for ``{"labels": None, "logits_to_keep": 1}``).
2. ``setup(student, teachers)`` on the views of a probe batch (one per task for multi-task
   data; ``student.task`` names it): check that shapes agree and build learnable parts
   (projections) whose sizes depend on the models. Errors raised here name the config field
   and the fix, before any training step. The probe batch first goes through
   ``prepare_batch(batch, student, teachers, None)``.
3. ``prepare_batch(batch, student, teachers, key)`` every micro-batch, before any model runs:
   returns the batch to use (default: ``batch`` itself; ``causal_lm`` checks lengths and may
   replace it by the student's own samples). ``student`` and ``teachers`` are the models (a
   teacher read from a cache is ``None``); ``key`` names the micro-batch alike on every rank
   and after a resume (``None`` for the probe batch).
4. ``teachers_for(batch)`` every micro-batch: the roles whose teachers run on this batch
   (default: all; ``multi_task`` picks the batch's task's teachers).
5. ``forward(batch, student, teachers, progress)`` every micro-batch, inside the student's
   autograd graph: returns ``(loss, terms)`` where ``terms`` maps names to scalar tensors
   that the trackers log (``kd``, ``hard_label``, ``hidden_mse/S2-T4`` ...).
6. ``loss_items(batch)`` every micro-batch: ``None`` (the default) when the loss is a mean over
   the micro-batch, so the loop averages it over accumulation steps and ranks as usual; an
   ``int`` ``n`` when the loss is a *sum* over ``n`` items (``causal_lm``: tokens), so the loop
   divides the gradients by the items of the whole accumulation window on all ranks.

``student`` and each teacher in ``setup``/``forward`` are :class:`~distill_toolkit.features.ModelView`
objects (logits, masks, the model's own loss, labels, captured features, the batch's ``task``);
``teachers`` maps the roles of step 4 to views (a view read from a teacher cache looks the
same). ``progress`` is the fraction of training done, in [0, 1], for schedules. Being an
``nn.Module``, a strategy's parameters (projections) are trained, checkpointed and distributed
with the student; ``param_groups(lr)`` gives their optimiser groups. ``self.options`` holds
``distillation.strategy_options``, free-form settings for custom strategies, checked up front by
``check_options`` (default: accepted as they are).

The KD objective itself (KD + hard labels + matches, with temperatures, schedules and
projections) is :class:`~distill_toolkit.strategies.objective.KDObjective`; a strategy that
distils logits composes it rather than rewriting it.

Register a new strategy with :func:`register_strategy`; nothing else needs editing.
See ``docs/strategies.md`` for a worked example.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView
from distill_toolkit.utils.registry import ClassRegistry

class UnknownStrategyError(KeyError, ValueError):
    """A strategy name that is not registered."""

    def __str__(self) -> str:
        return self.args[0]


_STRATEGIES = ClassRegistry("strategy", "distill_toolkit.strategies.Strategy", "distillation.strategy",
                            UnknownStrategyError,
                            "Fix: set `distillation.strategy` to one of them, or register yours with register_strategy()")


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
        self.options = dict(config.strategy_options or {})

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
        """Features each model must yield: ``{"student": [...], role: [...]}``. Default: none."""
        return {"student": [], **{role: [] for role in self.teacher_roles}}

    def teachers_for(self, batch) -> tuple:
        """Roles whose teachers run on ``batch`` (default: every role)."""
        return tuple(self.teacher_roles)

    @classmethod
    def check_options(cls, options: dict, where: str = "distillation.strategy_options") -> dict:
        """``options`` (``distillation.strategy_options``) checked and completed; a
        :class:`~distill_toolkit.config.ConfigError` naming ``where.<option>`` and the fix otherwise.
        Default: accepted unchanged."""
        return options

    def forward_overrides(self, role: str) -> dict:
        """Keyword arguments merged into the inputs of the model of ``role`` (``None`` removes one). Default: none."""
        return {}

    def prepare_batch(self, batch, student: nn.Module, teachers: dict, key: Optional[tuple] = None):
        """The batch to train on, before any model runs (checks, or a new batch). Default: ``batch``."""
        return batch

    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        """Check the probe views and build learnable parts. Default: nothing to do."""

    def param_groups(self, learning_rate: float) -> list[dict]:
        """Optimiser groups for the strategy's own parameters (default: one group at ``learning_rate``)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate}] if params else []

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView],
                progress: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, terms)`` for one micro-batch; see the module docstring."""
        raise NotImplementedError

    def loss_items(self, batch) -> Optional[int]:
        """``None``: the loss is a mean. An ``int`` ``n``: the loss is a sum over ``n`` items (the loop
        normalises across accumulation steps and ranks). Default: ``None``."""
        return None


def register_strategy(name: str, cls: Optional[type] = None, *, overwrite: bool = False):
    """Register ``cls`` under ``name``; usable as a decorator: ``@register_strategy("mine")``."""
    return _STRATEGIES.register(Strategy, name, cls, overwrite)


def get(name: str) -> type:
    """The strategy class registered under ``name``."""
    return _STRATEGIES.get(name)


def available_strategies() -> list[str]:
    """Sorted names of the registered strategies."""
    return _STRATEGIES.names()
