"""``single``: one teacher, logits KD plus any number of intermediate matches.

This is TextBrewer's GeneralDistiller; with no matches it is its BasicDistiller. The loss is the
:class:`~distill_toolkit.strategies.objective.KDObjective` with one teacher::

    kd_weight(t) * sum over logits heads of KD(student, teacher; T)
    + hard_label_weight(t) * student's own loss
    + sum_i match_i.weight(t) * match_i.loss(projection_i(student feature), teacher feature)

Every match reads the one teacher (``Match.teacher`` is for ``multi_teacher``).
"""

from __future__ import annotations

from torch import nn

from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView
from distill_toolkit.strategies.base import Strategy, register_strategy
from distill_toolkit.strategies.objective import KDObjective


@register_strategy("single")
class SingleTeacher(Strategy):
    """One teacher: KD on logits, hard-label loss and intermediate matches with projections."""

    def __init__(self, config: DistillationConfig):
        super().__init__(config)
        self.objective = KDObjective(config)

    @property
    def projections(self) -> nn.ModuleList:
        """One per match, built by :meth:`setup` (``Identity`` where none is needed)."""
        return self.objective.projections

    def feature_keys(self) -> dict[str, list[str]]:
        return self.objective.feature_keys()

    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        self.objective.setup(student, teachers)

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        return self.objective(student, teachers, progress)
