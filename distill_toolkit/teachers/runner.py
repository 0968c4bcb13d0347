"""Teachers are placed, not trained: frozen, in eval mode, run under ``torch.inference_mode``."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from distill_toolkit.batch import batch_task, model_inputs
from distill_toolkit.data.cache import InMemoryTeacherCache, TeacherCache, TeacherCacheError, cached_view
from distill_toolkit.data.dual import align_view
from distill_toolkit.features import HEAD_INPUT, Adaptor, FeatureCapture, ModelView, accepts_task
from distill_toolkit.strategies import Strategy
from distill_toolkit.tasks import forward_view, resolve_task
from distill_toolkit.teachers.served import ServedTeacher, ServedTeacherError


def named_teachers(teacher: Union[nn.Module, list, tuple, dict, None]) -> dict[str, nn.Module]:
    """Name the teachers given to the Trainer by role.

    ``model`` -> ``{"teacher": model}``; ``[m0, m1]`` -> ``{"teacher0": m0, "teacher1": m1}``;
    ``{"big": m}`` -> ``{"big": m}``; one level of nesting for multi-task runs:
    ``{"movies": [m0, m1], "tweets": m2}`` -> ``{"movies/teacher0": m0, "movies/teacher1": m1, "tweets": m2}``.
    A model may also be a function that builds it (see :mod:`distill_toolkit.teachers.placement`).
    """
    if teacher is None:
        return {}
    if _is_model(teacher):
        return {"teacher": teacher}

    def flat(value, prefix: str, depth: int) -> dict:
        if _is_model(value):
            return {prefix: value}
        if depth > 1 or not isinstance(value, (list, tuple, dict)) or not value:
            raise TypeError(f"teacher{'' if not prefix else ' ' + repr(prefix)}: expected a model, a list of models "
                            f"or a dict of them (one level of nesting), got {type(value).__name__}")
        items = value.items() if isinstance(value, dict) else ((f"teacher{i}", m) for i, m in enumerate(value))
        out = {}
        for name, model in items:
            if not isinstance(name, str) or not name or "/" in name:
                raise TypeError(f"teacher role {name!r}: use a non-empty name without '/'")
            out.update(flat(model, f"{prefix}/{name}" if prefix else name, depth + 1))
        return out

    return flat(teacher, "", 0)


def _is_model(value) -> bool:
    if isinstance(value, TeacherCache):  # a teacher's outputs read from disk stand in for the teacher
        return True
    return isinstance(value, nn.Module) or (callable(value) and not isinstance(value, (list, tuple, dict)))


def forward_inputs(inputs: dict, overrides: dict) -> dict:
    """``inputs`` changed by a strategy's ``forward_overrides(role)``; a ``None`` value removes a key.

    E.g. a causal-LM strategy that computes its losses from the final hidden states asks for
    ``{"labels": None, "logits_to_keep": 1}`` so the model never builds full-vocabulary logits.
    """
    if not overrides:
        return inputs
    merged = {**inputs, **overrides}
    return {k: v for k, v in merged.items() if v is not None}


def model_call_inputs(batch: dict, role: str, model: nn.Module, overrides: dict, takes_task: bool) -> dict:
    """What ``model`` (of ``role``) is called with for ``batch``: its inputs, the strategy's overrides,
    and the batch's task for multi-head models."""
    inputs = forward_inputs(model_inputs(batch, role), overrides)
    task = batch_task(batch)
    return {**inputs, "task": task} if takes_task and task is not None else inputs


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TeacherRunner:
    """Runs one frozen teacher and returns its :class:`ModelView` (logits + captured features).

    The view comes, in this order, from the batch's ``teacher_cache`` (no forward at all; ``model``
    may then be None), from the in-memory cache (``in_memory=True``: first epoch computes, later
    epochs reuse), or from a forward pass. Cross-tokenizer batches (``batch["alignment"]``) then get
    the teacher's positions mapped onto the student's (:mod:`distill_toolkit.data.dual`).
    """

    def __init__(self, model: Optional[nn.Module], role: str, feature_keys: list[str], task: str = "auto",
                 adaptor: Optional[Adaptor] = None, strategy: Optional[Strategy] = None, in_memory: bool = False):
        self.model = freeze(model) if model is not None else None
        self.overrides = strategy.forward_overrides(role) if strategy is not None else {}
        self.role = role
        self.adaptor = adaptor
        self.served = isinstance(model, ServedTeacher)  # its log-probabilities come over HTTP: no forward here
        if self.served and any(k != HEAD_INPUT for k in feature_keys):
            raise ServedTeacherError(f"teacher {role!r} is served: it gives log-probabilities only, not the features "
                                     f"{[k for k in feature_keys if k != HEAD_INPUT]}. Fix: remove distillation.matches")
        self.task = resolve_task("causal_lm" if self.served else task, model)
        hooked = [k for k in feature_keys if adaptor is None or k.startswith("module:")]
        self.capture = FeatureCapture(model, hooked) if model is not None and not self.served else None
        self.takes_task = model is not None and accepts_task(model)  # multi-head teachers get the batch's task
        self.memory = InMemoryTeacherCache(self.task.name) if in_memory else None

    def __call__(self, batch: dict) -> ModelView:
        view = cached_view(batch, self.role)
        if view is None and self.memory is not None:
            view = self.memory.lookup(batch)
        if view is None:
            if self.model is None:
                raise TeacherCacheError(f"teacher {self.role!r} has no model and the batch carries no cached outputs "
                                        "for it (batch['teacher_cache']). Fix: pass the TeacherCache as the teacher "
                                        "so the Trainer's collator attaches them, or pass the teacher model")
            view = self.forward(batch)
            if self.memory is not None:
                self.memory.store(batch, view)
        return align_view(view, batch, self.task.name)

    def forward(self, batch: dict) -> ModelView:
        """The teacher's forward pass on ``batch`` (its own positions, no cache, no alignment)."""
        inputs = model_call_inputs(batch, self.role, self.model, self.overrides, self.takes_task)
        if self.served:
            view = self.model.view(inputs)
            view.task = batch_task(batch)
            return view
        with torch.inference_mode():
            view = forward_view(self.model, inputs, self.task, self.capture, self.adaptor)
        # Inference tensors cannot be saved for backward; cloning outside inference mode
        # turns the (few) tensors the losses read into ordinary ones.
        view.logits = [t.clone() for t in view.logits]
        view.features = {k: v.clone() for k, v in view.features.items()}
        view.loss = None
        view.task = batch_task(batch)
        view.model = self.model
        return view
