"""The trainable unit: the student plus the strategy's own parameters (projections).

Wrapping both in one ``nn.Module`` lets Accelerate prepare a single model, so DDP,
FSDP and DeepSpeed see every trained parameter and the student's forward runs inside
the wrapper's forward (as DDP requires).
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from distill_toolkit.data.tasks import accepts_task, batch_task
from distill_toolkit.engine.teachers import forward_inputs, model_inputs
from distill_toolkit.features import Adaptor, FeatureCapture, detect_task, view_from_adaptor, view_outputs
from distill_toolkit.strategies.base import Strategy


class DistillationModule(nn.Module):
    """``forward(batch, teachers, progress) -> (loss, terms, student_view)``."""

    def __init__(self, student: nn.Module, strategy: Strategy, task: str = "auto",
                 adaptor: Optional[Adaptor] = None):
        super().__init__()
        self.student = student
        self.strategy = strategy
        self.task = detect_task(student) if task == "auto" else task
        self.adaptor = adaptor
        keys = strategy.feature_keys()["student"]
        hooked = [k for k in keys if adaptor is None or k.startswith("module:")]
        # Kept out of the module tree on purpose: hooks are not parameters or buffers.
        self.__dict__["capture"] = FeatureCapture(student, hooked)
        self.takes_task = accepts_task(student)  # multi-head students get the batch's task

    def student_view(self, batch):
        inputs = forward_inputs(model_inputs(batch, "student"), self.strategy, "student")
        task = batch_task(batch)
        if self.takes_task and task is not None:
            inputs = {**inputs, "task": task}
        self.capture.active = True
        try:
            outputs = self.student(**inputs)
        finally:
            self.capture.active = False
        view = (view_from_adaptor(self.adaptor(inputs, outputs), outputs) if self.adaptor
                else view_outputs(outputs, inputs, self.task))
        view.features.update(self.capture.collect())
        view.task = task
        view.model = self.student
        return view

    def forward(self, batch, teachers, progress: float):
        view = self.student_view(batch)
        loss, terms = self.strategy(batch, view, teachers, progress)
        return loss, terms, view
