"""TextBrewer's schedulers (``textbrewer.schedulers``), on :mod:`distill_toolkit.schedulers`.

Weight schedulers take the fraction of training done ``x`` and return the weight itself
(TextBrewer *replaces* ``kd_loss_weight``/``hard_label_weight`` with it after every step).
Temperature schedulers are ``(logits_S, logits_T, base_temperature) -> float or tensor``.
"""

from __future__ import annotations

from distill_toolkit.schedulers import constant_temperature, cwsm_temperature, flsw_temperature, scheduled_weight


def linear_growth_weight_scheduler(x: float) -> float:
    """``x``: the weight grows from 0 to 1 over training."""
    return scheduled_weight("linear_growth", 1.0, x)


def linear_decay_weight_scheduler(x: float) -> float:
    """``1 - x``: the weight decays from 1 to 0 over training."""
    return scheduled_weight("linear_decay", 1.0, x)


def constant_temperature_scheduler(logits_S, logits_T, base_temperature):
    """The base temperature, unchanged."""
    return constant_temperature(logits_S, logits_T, base_temperature)


def flsw_temperature_scheduler_builder(beta, gamma, eps=1e-4, *args):
    """FLSW (arXiv:1911.07471): ``tau = T0 + beta * (mean(w) - w)``, ``w = (1 - cos(S, T)) ** gamma`` per row."""
    return flsw_temperature(beta, gamma, eps)


def cwsm_temperature_scheduler_builder(beta, *args):
    """CWSM (arXiv:1911.07471): ``tau = T0 + beta * (mean(w) - w)``, ``w = 1 / (max softmax(S) + 1e-3)`` per row."""
    return cwsm_temperature(beta)
