"""Teachers are placed, not trained: frozen, in eval mode, run under ``torch.inference_mode``."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from distill_toolkit.features import (
    Adaptor,
    FeatureCapture,
    ModelView,
    detect_task,
    view_from_adaptor,
    view_outputs,
)


def model_inputs(batch: dict, role: str) -> dict:
    """The part of ``batch`` a model of ``role`` consumes.

    A batch either holds one set of inputs shared by every model, or separate
    ``student`` / ``teacher`` sub-batches (different tokenizers); bookkeeping keys
    (``task``, ``teacher_cache``, ``id``) are never passed to a model.
    """
    if role in batch and isinstance(batch[role], dict):
        return batch[role]
    if role != "student" and "teacher" in batch and isinstance(batch["teacher"], dict):
        return batch["teacher"]
    return {k: v for k, v in batch.items() if k not in ("student", "teacher", "teacher_cache", "task", "id")}


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherRunner:
    """Runs one frozen teacher and returns its :class:`ModelView` (logits + captured features)."""

    def __init__(self, model: nn.Module, role: str, feature_keys: list[str], task: str = "auto",
                 adaptor: Optional[Adaptor] = None):
        self.model = freeze(model)
        self.role = role
        self.adaptor = adaptor
        self.task = detect_task(model) if task == "auto" else task
        hooked = [k for k in feature_keys if adaptor is None or k.startswith("module:")]
        self.capture = FeatureCapture(model, hooked)

    def to(self, device) -> "TeacherRunner":
        self.model.to(device)
        return self

    def __call__(self, batch: dict) -> ModelView:
        inputs = model_inputs(batch, self.role)
        with torch.inference_mode():
            self.capture.active = True
            try:
                outputs = self.model(**inputs)
            finally:
                self.capture.active = False
            view = (view_from_adaptor(self.adaptor(inputs, outputs), outputs) if self.adaptor
                    else view_outputs(outputs, inputs, self.task))
            view.features.update(self.capture.collect())
        # Inference tensors cannot be saved for backward; cloning outside inference mode
        # turns the (few) tensors the losses read into ordinary ones.
        view.logits = [t.clone() for t in view.logits]
        view.features = {k: v.clone() for k, v in view.features.items()}
        view.loss = None
        return view
