"""Temperature and loss-weight schedules.

Temperature schedules follow TextBrewer (``constant``, and ``flsw``/``cwsm`` from
"Preparing Lessons: Improve Knowledge Distillation with Better Supervision",
arXiv:1911.07471). A schedule is a callable ``(logits_S, logits_T, base_temperature)`` that
returns a float or a per-position tensor of shape ``logits.shape[:-1]``, which every logits
loss in :mod:`distill_toolkit.losses` accepts as its ``temperature``.

Weight schedules scale a loss weight by training progress in [0, 1].
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

TemperatureScheduler = Callable[..., Union[float, Tensor]]

TEMPERATURE_SCHEDULERS = ("constant", "flsw", "cwsm")
WEIGHT_SCHEDULES = ("constant", "linear_growth", "linear_decay")

_ACCEPTED_FORMS = (
    'temperature_scheduler accepts: "constant" (or None / "none"), ["flsw", beta, gamma] '
    '(optionally a 4th value eps, default 1e-4), ["cwsm", beta], or a dict such as '
    '{"name": "flsw", "beta": 1, "gamma": 2} / {"name": "cwsm", "beta": 1}'
)


def _masked_mean(w: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return w.mean()
    keep = mask.to(w.dtype)
    return (w * keep).sum() / keep.sum().clamp(min=1)


def constant_temperature(logits_S: Tensor, logits_T: Tensor, base_temperature, mask: Optional[Tensor] = None):
    """Return ``base_temperature`` unchanged."""
    return base_temperature


class CentredTemperature:
    """A per-position temperature ``tau = T0 + beta * (mean(w) - w)`` around a statistic ``w`` of the logits.

    ``flsw`` and ``cwsm`` are of this form. Calling it, ``(logits_S, logits_T, base_temperature,
    mask=None)``, is the schedule. Its two halves, :meth:`weights` (``w`` per position) and
    :meth:`from_weights`, serve a caller that sees the positions a chunk at a time (the chunked
    causal-LM loss): it gathers ``w`` chunk by chunk and takes ``mean(w)`` over all of them.

    Attributes:
        name: ``"flsw"`` or ``"cwsm"``.
        reads_teacher: whether ``w`` depends on the teacher's logits (so it needs them in full,
            not a top-k teacher cache).
    """

    def __init__(self, name: str, statistic: Callable[[Tensor, Tensor], Tensor], beta: float, reads_teacher: bool):
        self.name, self.beta, self.reads_teacher = name, beta, reads_teacher
        self._statistic = statistic

    def weights(self, logits_S: Tensor, logits_T) -> Tensor:
        """``w`` per position, shape ``logits_S.shape[:-1]``, without gradients."""
        with torch.no_grad():
            return self._statistic(logits_S.detach(), logits_T)

    def from_weights(self, w: Tensor, base_temperature, mask: Optional[Tensor] = None) -> Tensor:
        """``base_temperature + beta * (mean(w) - w)``, the mean over the positions ``mask`` keeps (all: None)."""
        with torch.no_grad():
            return base_temperature + (_masked_mean(w, mask) - w) * self.beta

    def __call__(self, logits_S: Tensor, logits_T, base_temperature, mask: Optional[Tensor] = None) -> Tensor:
        return self.from_weights(self.weights(logits_S, logits_T), base_temperature, mask)

    def __repr__(self) -> str:
        return f"CentredTemperature({self.name!r}, beta={self.beta})"


def flsw_temperature(beta: float, gamma: float, eps: float = 1e-4) -> CentredTemperature:
    """FLSW schedule: per position, ``tau = T0 + beta * (mean(w) - w)`` with
    ``w = (1 - cos(logits_S, logits_T)) ** gamma``.

    Positions where student and teacher disagree more get a lower temperature (sharper
    targets). The returned callable also takes an optional keyword ``mask`` (shape
    ``logits.shape[:-1]``): then ``mean(w)`` runs over kept positions only, which is what
    TextBrewer computes after selecting rows with ``logits_mask``.
    """

    def statistic(logits_S: Tensor, logits_T: Tensor) -> Tensor:
        v = logits_S
        t = logits_T.detach()
        v = v / (v.norm(dim=-1, keepdim=True) + eps)
        t = t / (t.norm(dim=-1, keepdim=True) + eps)
        return (1 - (v * t).sum(dim=-1)).pow(gamma)

    return CentredTemperature("flsw", statistic, beta, reads_teacher=True)


def cwsm_temperature(beta: float) -> CentredTemperature:
    """CWSM schedule: per position, ``tau = T0 + beta * (mean(w) - w)`` with
    ``w = 1 / (max softmax(logits_S) + 1e-3)``.

    Positions where the student is less confident get a higher temperature. Takes the same
    optional ``mask`` keyword as :func:`flsw_temperature`.
    """

    def statistic(logits_S: Tensor, logits_T) -> Tensor:
        confidence = torch.softmax(logits_S, dim=-1).max(dim=-1).values
        return 1 / (confidence + 1e-3)

    return CentredTemperature("cwsm", statistic, beta, reads_teacher=False)


def _number(value: Any, what: str, spec: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"temperature_scheduler {spec!r}: {what} must be a number, got {value!r}. {_ACCEPTED_FORMS}.")
    return float(value)


def build_temperature_scheduler(spec: Any) -> TemperatureScheduler:
    """Build a temperature schedule from a config value.

    Args:
        spec: ``None``, ``"none"`` or ``"constant"``; ``["flsw", beta, gamma]`` (or
            ``["flsw", beta, gamma, eps]``); ``["cwsm", beta]``; ``[name, {kwargs}]`` as in
            TextBrewer; or a dict ``{"name": "flsw", "beta": 1, "gamma": 2}``.

    Returns:
        A callable ``(logits_S, logits_T, base_temperature, mask=None) -> float | Tensor``.

    Raises:
        ValueError: naming ``temperature_scheduler`` and the accepted forms.
    """
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "constant")):
        return constant_temperature
    if isinstance(spec, str):
        if spec in ("flsw", "cwsm"):
            raise ValueError(f"temperature_scheduler {spec!r} needs parameters. {_ACCEPTED_FORMS}.")
        raise ValueError(f"temperature_scheduler: unknown schedule {spec!r}. {_ACCEPTED_FORMS}.")

    if isinstance(spec, dict):
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    elif isinstance(spec, (list, tuple)) and spec:
        name, args = spec[0], list(spec[1:])
        if len(args) == 1 and isinstance(args[0], dict):
            kwargs = dict(args[0])
        else:
            params = {"flsw": ("beta", "gamma", "eps"), "cwsm": ("beta",)}.get(name, ())
            if len(args) > len(params):
                raise ValueError(
                    f"temperature_scheduler {spec!r}: too many values for {name!r}. {_ACCEPTED_FORMS}."
                )
            kwargs = dict(zip(params, args))
    else:
        raise ValueError(f"temperature_scheduler: cannot read {spec!r}. {_ACCEPTED_FORMS}.")

    if name == "constant" and not kwargs:
        return constant_temperature
    required = {"flsw": {"beta", "gamma"}, "cwsm": {"beta"}}
    optional = {"flsw": {"eps"}, "cwsm": set()}
    if name not in required:
        raise ValueError(f"temperature_scheduler: unknown schedule {name!r}. {_ACCEPTED_FORMS}.")
    missing = required[name] - kwargs.keys()
    extra = kwargs.keys() - required[name] - optional[name]
    if missing or extra:
        problem = f"missing {sorted(missing)}" if missing else f"unexpected {sorted(extra)}"
        raise ValueError(f"temperature_scheduler {spec!r}: {problem}. {_ACCEPTED_FORMS}.")
    numbers = {k: _number(v, k, spec) for k, v in kwargs.items()}
    if name == "flsw":
        return flsw_temperature(**numbers)
    return cwsm_temperature(**numbers)


def scheduled_weight(schedule: Optional[str], base_weight: float, progress: float) -> float:
    """Loss weight at a point of training.

    Args:
        schedule: ``"constant"`` (also ``None``/``"none"``), ``"linear_growth"`` (0 -> base) or
            ``"linear_decay"`` (base -> 0).
        base_weight: the configured weight.
        progress: fraction of training done; clamped to [0, 1].
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule is None or schedule in ("constant", "none"):
        return base_weight
    if schedule == "linear_growth":
        return base_weight * p
    if schedule == "linear_decay":
        return base_weight * (1.0 - p)
    raise ValueError(
        f"unknown weight schedule {schedule!r}; use one of {', '.join(WEIGHT_SCHEDULES)} "
        "(e.g. kd_loss_weight_scheduler: linear_decay)."
    )
