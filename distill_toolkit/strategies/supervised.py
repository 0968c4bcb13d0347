"""``supervised``: hard labels only (TextBrewer's BasicTrainer), used to train teachers."""

from __future__ import annotations

from distill_toolkit.features import ModelView
from distill_toolkit.strategies.base import Strategy, StrategyError, register_strategy


@register_strategy("supervised")
class Supervised(Strategy):
    """The student's own loss on the batch's labels; no teacher."""

    teacher_roles = ()

    def setup(self, student: ModelView, teachers: dict) -> None:
        if student.loss is None:
            raise StrategyError(
                "strategy 'supervised' needs the model's own loss, but the batch has no `labels` "
                "(or the model computed no loss). Fix: add a `labels` column to the data set, "
                "or return `losses` from a custom adaptor")

    def forward(self, batch, student: ModelView, teachers: dict, progress: float):
        if student.loss is None:
            raise StrategyError("a batch without `labels` reached strategy 'supervised'; every batch needs labels")
        loss = student.loss.mean()
        return loss, {"hard_label": loss.detach()}
