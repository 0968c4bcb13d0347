"""``multi_teacher``: several teachers of one task into one student.

TextBrewer's MultiTeacherDistiller averaged the teachers' logits and could not match
intermediate layers. Here the loss is::

    kd_weight(t) * KD(student logits, combine(teacher logits); T)
    + hard_label_weight(t) * student's own loss
    + sum over matches m, over the teachers r that m reads:
          m.weight(t) * m.loss(projection_{m,r}(student feature), feature of teacher r)

``combine`` (``distillation.teacher_combination``) is, per logits head:

- ``mean``: the mean of the teachers' logits (TextBrewer's rule);
- ``weights``: ``sum_r w_r * logits_r`` with the fixed ``teacher_weights`` normalised to sum to 1;
- ``confidence``: per example (per position for token-level heads), each teacher weighted by its
  confidence, the probability of its top class ``c_r = max softmax(logits_r)``:
  ``sum_r (c_r / sum_q c_q) * logits_r``. Confident teachers speak louder on the examples they
  are sure of; the weights carry no gradient.

The loss is the :class:`~distill_toolkit.strategies.objective.KDObjective` with several teachers,
KD reading the combined view. A match reads every teacher unless it names one
(``Match(teacher="teacher1", ...)``), so teachers of different depths each get the layers they
have; each (match, teacher) pair has its own projection, so teachers may differ in width. Logged
terms: ``kd``, ``hard_label`` and ``<role>/<match name>`` (e.g. ``teacher1/hidden_mse/S2-T4``).
With one teacher, KD reads it as it is and the loss equals the ``single`` strategy's.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView
from distill_toolkit.strategies.base import Strategy, StrategyError, register_strategy
from distill_toolkit.strategies.objective import KDObjective


def combine_logits(logits: list[torch.Tensor], mode: str = "mean",
                   weights: Optional[list[float]] = None) -> torch.Tensor:
    """One combination of several teachers' logits of the same shape (see the module docstring)."""
    stacked = torch.stack([lg.float() for lg in logits])  # (R, ..., C)
    if mode == "mean":
        return stacked.mean(dim=0)
    if mode == "weights":
        w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
        w = w / w.sum()
        return (w.view(-1, *[1] * (stacked.dim() - 1)) * stacked).sum(dim=0)
    if mode == "confidence":
        confidence = stacked.softmax(dim=-1).amax(dim=-1, keepdim=True)  # (R, ..., 1)
        return (confidence / confidence.sum(dim=0, keepdim=True) * stacked).sum(dim=0)
    raise ValueError(f"unknown teacher combination {mode!r}")


@register_strategy("multi_teacher")
class MultiTeacher(Strategy):
    """Several teachers: KD on a combination of their logits, intermediate matches per teacher."""

    teacher_roles: tuple = ("teacher",)

    def __init__(self, config: DistillationConfig):
        super().__init__(config)
        self.objective = KDObjective(config)
        self.weights: Optional[list[float]] = None

    @property
    def projections(self) -> nn.ModuleList:
        """One per (match, teacher) pair, in the order of ``objective.pairs``."""
        return self.objective.projections

    # ---- step 0: which teachers --------------------------------------------------------
    def bind(self, roles: list[str], tasks: Optional[list[str]] = None) -> None:
        if not roles:
            raise StrategyError(f"strategy {self.name!r} needs at least one teacher. Fix: pass teacher=[model, ...]")
        self.objective.bind(roles)
        self.teacher_roles = tuple(roles)
        self.weights = self._resolve_weights(roles) if self.config.teacher_combination == "weights" else None

    def _resolve_weights(self, roles: list[str]) -> list[float]:
        weights = self.config.teacher_weights
        if isinstance(weights, dict):
            missing = [r for r in roles if r not in weights]
            if missing:
                raise StrategyError(f"distillation.teacher_weights has no weight for teacher(s) {missing}; the "
                                    f"teachers are {list(roles)}. Fix: give a weight for each of them")
            return [float(weights[r]) for r in roles]
        if weights is None or len(weights) != len(roles):
            raise StrategyError(
                f"distillation.teacher_weights: {0 if weights is None else len(weights)} weight(s) for {len(roles)} "
                f"teachers ({', '.join(roles)}). Fix: give exactly one weight per teacher, in the order the teachers "
                "are passed, or a {role: weight} mapping")
        return [float(w) for w in weights]

    # ---- steps 1 and 2: features, setup --------------------------------------------------
    def feature_keys(self) -> dict[str, list[str]]:
        return self.objective.feature_keys()

    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        missing = [r for r in self.teacher_roles if r not in teachers]
        if missing:
            raise StrategyError(f"setup got no view of teacher(s) {missing}")
        if self.config.kd_loss_weight > 0:
            self._check_label_spaces(teachers)
        self.objective.setup(student, teachers)

    def _check_label_spaces(self, teachers: dict[str, ModelView]) -> None:
        first = self.teacher_roles[0]
        ref = [tuple(lg.shape[-1:]) for lg in teachers[first].logits]
        for role in self.teacher_roles[1:]:
            other = [tuple(lg.shape[-1:]) for lg in teachers[role].logits]
            if other != ref:
                raise StrategyError(
                    f"the teachers' label spaces differ: {first!r} has {len(ref)} logits head(s) of "
                    f"{[s[0] for s in ref]} classes, {role!r} has {len(other)} of {[s[0] for s in other]}, so their "
                    "logits cannot be combined for KD. Fix: use teachers of the same task and labels, or distil "
                    "several tasks with strategy 'multi_task'")

    # ---- step 4: the loss --------------------------------------------------------------
    def combined_view(self, teachers: dict[str, ModelView]) -> ModelView:
        """A view whose logits are the combination of the teachers' logits, per head."""
        heads = zip(*[teachers[r].logits for r in self.teacher_roles])
        logits = [combine_logits(list(head), self.config.teacher_combination, self.weights) for head in heads]
        return ModelView(logits=logits)

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        if not self.objective.ready:
            raise StrategyError(f"strategy {self.name!r} was not set up; the Trainer calls setup() on a probe batch "
                                "before training")
        # one teacher: KD reads it as it is (so the loss is exactly the `single` strategy's)
        kd_teacher = self.combined_view(teachers) if len(self.teacher_roles) > 1 else None
        return self.objective(student, teachers, progress, kd_teacher=kd_teacher)
