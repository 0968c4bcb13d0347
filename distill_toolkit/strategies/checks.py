"""The names a distillation config refers to, checked against the registries, and the strategy built from it.

:meth:`DistillationConfig.validate <distill_toolkit.config.DistillationConfig.validate>` checks
values (types, ranges, pairs of fields); the names it holds live in registries users extend
(strategies, losses, schedules, projections, tasks), so they are checked here, where those
registries are in reach, before any model is touched. Every error is a
:class:`~distill_toolkit.config.ConfigError` naming the field and the fix.
"""

from __future__ import annotations

import inspect

from distill_toolkit import losses
from distill_toolkit.config import ConfigError, DistillationConfig
from distill_toolkit.config.base import check
from distill_toolkit.projections import PROJECTIONS
from distill_toolkit.schedulers import WEIGHT_SCHEDULES, build_temperature_scheduler
from distill_toolkit.strategies.base import Strategy, available_strategies, get
from distill_toolkit.tasks import available_tasks


def _check_loss(name, kind: str, field: str) -> None:
    known = ", ".join(losses.available_losses(kind))
    check(name in losses.available_losses(), field, f"unknown loss {name!r}", f"use one of {known}")
    other = "feature" if kind == "logits" else "logits"
    check(losses.loss_kind(name) == kind, field, f"{name!r} is a {other} loss, not a {kind} loss",
          f"use one of {known}")


def _check_loss_kwargs(name: str, kwargs: dict, field: str) -> None:
    """The loss ``name`` accepts the keywords ``kwargs`` (e.g. ``relation_heads`` for ``minilmv2_relation``)."""
    if not kwargs:
        return
    try:
        inspect.signature(losses.get(name)).bind(None, None, mask=None, **kwargs)
    except TypeError as err:
        raise ConfigError(field, f"loss {name!r} does not take {sorted(kwargs)} ({err})",
                          f"use the keywords of {name}{inspect.signature(losses.get(name))}, or remove them") from None
    except ValueError:  # a callable without a readable signature: its call will say
        return


def _check_schedule(value, field: str) -> None:
    check(value in WEIGHT_SCHEDULES, field, f"unknown schedule {value!r}", f"use one of {', '.join(WEIGHT_SCHEDULES)}")


def _check_matches(distillation: DistillationConfig, where: str) -> None:
    for i, match in enumerate(distillation.matches):
        at = f"{where}.matches[{i}]"
        _check_loss(match.loss, "feature", f"{at}.loss")
        _check_loss_kwargs(match.loss, match.loss_kwargs, f"{at}.loss_kwargs")
        _check_schedule(match.weight_schedule, f"{at}.weight_schedule")
        if match.projection is not None:
            check(match.projection_kind in PROJECTIONS, f"{at}.projection",
                  f"unknown projection {match.projection_kind!r}", f"use one of {', '.join(PROJECTIONS)}")


def check_distillation(distillation: DistillationConfig, where: str = "distillation") -> None:
    """Check every registry name in ``distillation``; raise :class:`ConfigError` naming the field otherwise.

    Checked: ``strategy``, ``task`` (a registered task or ``auto``), ``temperature_scheduler``,
    ``kd_loss`` (a logits loss), ``kd_loss_weight_schedule``, ``hard_label_weight_schedule``, each
    match's ``loss`` (a feature loss), ``weight_schedule`` and ``projection`` kind, and
    ``strategy_options`` through the strategy's own ``check_options``. Values are
    :meth:`DistillationConfig.validate`'s job; call it first.
    """
    strategies = available_strategies()
    check(isinstance(distillation.strategy, str) and distillation.strategy in strategies, f"{where}.strategy",
          f"unknown strategy {distillation.strategy!r}; known strategies: {', '.join(strategies)}",
          "use one of them, or register yours with distill_toolkit.strategies.register_strategy()")
    tasks = sorted(available_tasks()) + ["auto"]
    check(distillation.task in tasks, f"{where}.task",
          f"unknown task {distillation.task!r}; known tasks: {', '.join(tasks)}",
          "use one of them (auto: read from the student's class), or register yours with "
          "distill_toolkit.tasks.register_task()")
    try:
        build_temperature_scheduler(distillation.temperature_scheduler)
    except ValueError as err:
        raise ConfigError(f"{where}.temperature_scheduler", str(err),
                          "use `constant`, [flsw, beta, gamma] or [cwsm, beta]") from err
    _check_loss(distillation.kd_loss, "logits", f"{where}.kd_loss")
    for name in ("kd_loss_weight_schedule", "hard_label_weight_schedule"):
        _check_schedule(getattr(distillation, name), f"{where}.{name}")
    _check_matches(distillation, where)
    get(distillation.strategy).check_options(distillation.strategy_options, f"{where}.strategy_options")


def build_strategy(config: DistillationConfig) -> Strategy:
    """The strategy ``config.strategy`` names, built from ``config`` once its values and names are checked."""
    config.validate()
    check_distillation(config)
    return get(config.strategy)(config)
