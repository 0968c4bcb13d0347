"""The trainable unit: the student plus the strategy's own parameters (projections).

Wrapping both in one ``nn.Module`` lets Accelerate prepare a single model, so DDP,
FSDP and DeepSpeed see every trained parameter and the student's forward runs inside
the wrapper's forward (as DDP requires).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from distill_toolkit.batch import batch_task
from distill_toolkit.features import Adaptor, FeatureCapture, ModelView, accepts_task
from distill_toolkit.strategies import Strategy
from distill_toolkit.tasks import forward_view, resolve_task
from distill_toolkit.teachers.runner import model_call_inputs


class DistillationModule(nn.Module):
    """``forward(batch, teachers, progress) -> (loss, terms, student_view)``."""

    def __init__(self, student: nn.Module, strategy: Strategy, task: str = "auto",
                 adaptor: Optional[Adaptor] = None):
        super().__init__()
        self.student = student
        self.strategy = strategy
        self.task = resolve_task(task, student)
        self.adaptor = adaptor
        keys = strategy.feature_keys()["student"]
        hooked = [k for k in keys if adaptor is None or k.startswith("module:")]
        # Kept out of the module tree on purpose: hooks are not parameters or buffers.
        self.__dict__["capture"] = FeatureCapture(student, hooked)
        self.takes_task = accepts_task(student)  # multi-head students get the batch's task

    def student_view(self, batch, training: bool = True) -> ModelView:
        """The student's view of ``batch``: with the strategy's overrides and hooks when ``training``,
        as the task evaluates it otherwise (e.g. full logits for a causal LM)."""
        overrides = self.strategy.forward_overrides("student") if training else self.task.eval_overrides()
        inputs = model_call_inputs(batch, "student", self.student, overrides, self.takes_task)
        view = forward_view(self.student, inputs, self.task, self.capture if training else None, self.adaptor)
        view.task = batch_task(batch)
        view.model = self.student
        return view

    def forward(self, batch, teachers, progress: float):
        view = self.student_view(batch)
        loss, terms = self.strategy(batch, view, teachers, progress)
        return loss, terms, view
