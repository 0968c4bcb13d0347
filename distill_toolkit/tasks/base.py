"""The task protocol and its registry.

A task says everything that depends on *what* is predicted, so that the loop, the
strategies and the CLI do not: which Hugging Face Auto class loads its models, how many
labels there are and what they are called, how raw examples become batches, how a model's
output is read (:class:`~distill_toolkit.features.ModelView`), what a prediction is, and
how predictions are scored. Tasks are found by name like strategies and losses::

    from distill_toolkit import tasks
    task = tasks.get("token_classification")
    model = task.load_model("my/ner-teacher", labels=["O", "B-PER", "I-PER"])

Register a new one with :func:`register_task` (see ``docs/design.md``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Sequence

import torch
import transformers
from torch import nn

from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.config import ConfigError, DataSpec
from distill_toolkit.data import PaddingCollator
from distill_toolkit.models import build_from_config, load_pretrained
from distill_toolkit.features import FeatureCapture, FeatureError, ModelView, unwrap, view_from_adaptor
from distill_toolkit.metrics import accuracy
from distill_toolkit.utils.registry import ClassRegistry

class UnknownTaskError(KeyError, ValueError):
    """A task name that is not registered."""

    def __str__(self) -> str:
        return self.args[0]


class Task:
    """Base class of a task; subclasses set :attr:`auto_class` and override what differs.

    Attributes:
        name: the registry name (set by :func:`register_task`).
        auto_class: name of the ``transformers`` Auto class its models load with.
        metric_name: the headline metric (used for ``best/`` when ``metric_for_best`` is unset).
        greater_is_better: direction of :attr:`metric_name`.
        has_labels: whether the task's models have a label head sized by the data.
    """

    name = "base"
    auto_class = "AutoModel"
    metric_name = "accuracy"
    greater_is_better = True
    has_labels = False

    # ---- reading a model's output -------------------------------------------------------
    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        """The :class:`ModelView` of a Hugging Face output: logits, the mask of positions that count,
        the model's own loss, labels and the input mask."""
        view = _base_view(outputs, inputs)
        view.logits = [_logits(outputs)]
        return view

    def predictions(self, view: ModelView) -> torch.Tensor:
        """What the model predicts (default: the argmax class of the first logits head)."""
        return view.logits[0].argmax(dim=-1)

    def gold(self, inputs: dict) -> Optional[torch.Tensor]:
        """The targets that :meth:`predictions` are scored against (default: ``labels``)."""
        return inputs.get("labels")

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        """Scores of gathered predictions against gold (numpy arrays, ``-100`` where nothing counts)."""
        return accuracy(predictions, labels)

    def eval_overrides(self) -> dict:
        """Keyword arguments the model gets at evaluation (e.g. to keep full logits)."""
        return {}

    # ---- models ------------------------------------------------------------------------
    def model_class(self):
        """The ``transformers`` Auto class of this task's models."""
        return getattr(transformers, self.auto_class)

    def load_model(self, path: str, *, labels: Optional[Sequence[str]] = None, attn_implementation=None,
                   config_overrides: Optional[dict] = None, where: str = "model", revision: Optional[str] = None,
                   dtype: Optional[str] = None, trust_remote_code: bool = False):
        """A trained model (or a base model with a new head) sized for ``labels``, from a folder or a Hub
        ID (``revision``, ``dtype``, ``trust_remote_code``); see
        :func:`distill_toolkit.models.load_pretrained` for the checks."""
        return load_pretrained(self.model_class(), path, labels=labels, attn_implementation=attn_implementation,
                               config_overrides=self.config_overrides(config_overrides), where=where,
                               check_config=lambda config: self.check_checkpoint(config, where), revision=revision,
                               dtype=dtype, trust_remote_code=trust_remote_code)

    def build_model(self, path: str, *, labels: Optional[Sequence[str]] = None, attn_implementation=None,
                    config_overrides: Optional[dict] = None, where: str = "student", revision: Optional[str] = None,
                    dtype: Optional[str] = None, trust_remote_code: bool = False):
        """A randomly initialised model shaped like ``path`` (changed by ``config_overrides``)."""
        return build_from_config(self.model_class(), path, labels=labels,
                                 config_overrides=self.config_overrides(config_overrides),
                                 attn_implementation=attn_implementation, where=where, revision=revision,
                                 dtype=dtype, trust_remote_code=trust_remote_code)

    def config_overrides(self, overrides: Optional[dict]) -> dict:
        """Config fields the task itself sets (e.g. ``problem_type``), under the user's overrides."""
        return dict(overrides or {})

    def collator(self, tokenizer, spec: DataSpec):
        """Pads a list of tokenized examples into a batch."""
        return PaddingCollator(tokenizer)

    def check_checkpoint(self, config, where: str) -> None:
        """Refuse a checkpoint saved with the head of another task (``config.architectures``): its weights
        would load into this task's head of the same shape without a word. A base model (no head) passes."""
        saved = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
        found = {task_of_class_name(a) for a in saved} - {"auto"}
        if not found or self.name in found or found | {self.name} <= SENTENCE_TASKS:
            return
        raise ConfigError(f"{where}.path", f"the checkpoint holds a {saved[0]}, a {'/'.join(sorted(found))} model, "
                          f"not a {self.name} one", f"set distillation.task: {sorted(found)[0]}, or use a checkpoint "
                          f"trained for {self.name} (or a base model, which gets a new head)")


_TASKS = ClassRegistry("task", "distill_toolkit.tasks.Task", "distillation.task", UnknownTaskError,
                       "Fix: use one of them (or `auto`), or register yours with distill_toolkit.tasks.register_task()")


def _base_view(outputs: Any, inputs: dict) -> ModelView:
    return ModelView(loss=_get(outputs, "loss"), labels=inputs.get("labels"),
                     inputs_mask=inputs.get("attention_mask"), raw=outputs)


def _get(obj, key):
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _logits(outputs):
    logits = _get(outputs, "logits")
    if logits is None:
        raise FeatureError(f"model output {type(outputs).__name__} has no `logits`; pass a custom adaptor")
    return logits


def register_task(name: str, cls: Optional[type] = None, *, overwrite: bool = False):
    """Register ``cls`` (a :class:`Task` subclass) under ``name``; usable as ``@register_task("mine")``."""
    return _TASKS.register(Task, name, cls, overwrite)


def get(name: str) -> Task:
    """An instance of the task registered under ``name`` (``auto`` is resolved by :func:`resolve_task`)."""
    return _TASKS.get(name)()


def available_tasks() -> list[str]:
    """Names of the registered tasks."""
    return _TASKS.names()


# ---- which task a model does -------------------------------------------------------------

SENTENCE_TASKS = {"sequence_classification", "multilabel_classification"}  # one head class serves both


def task_of_class_name(name: str) -> str:
    """The task a model class is for, from its name (``BertForTokenClassification`` ...); ``auto`` if none."""
    for part, task in (("QuestionAnswering", "question_answering"), ("TokenClassification", "token_classification"),
                       ("CausalLM", "causal_lm"), ("MaskedLM", "masked_lm"),
                       ("SequenceClassification", "sequence_classification")):
        if part in name:
            return task
    return "causal_lm" if name in _causal_lm_class_names() else "auto"  # GPT2LMHeadModel, BertLMHeadModel ...


def detect_task(model: nn.Module) -> str:
    """The task of a Hugging Face model, from its class (``...ForSequenceClassification`` etc.);
    ``auto`` when the class says nothing."""
    model = unwrap(model)
    task = task_of_class_name(type(model).__name__)
    problem = getattr(getattr(model, "config", None), "problem_type", None)
    return "multilabel_classification" if task == "sequence_classification" and problem == \
        "multi_label_classification" else task


@lru_cache(maxsize=1)
def _causal_lm_class_names() -> frozenset:
    """Class names Hugging Face's ``AutoModelForCausalLM`` maps to, minus those also masked LMs (XLM)."""
    from transformers.models.auto import modeling_auto as auto  # a large module: read only when asked

    def names(mapping) -> set:
        out = set()
        for value in mapping.values():
            out.update(value if isinstance(value, (list, tuple)) else [value])
        return out

    return frozenset(names(auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - names(auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES))


def resolve_task(name: str, model: Optional[nn.Module] = None, outputs: Any = None) -> Task:
    """The task ``name``, or for ``auto`` the one the model's class (or, failing that, its output) shows."""
    if name == "auto" and model is not None:
        name = detect_task(model)
    if name == "auto" and outputs is not None:
        logits = _get(outputs, "logits")
        name = ("question_answering" if _get(outputs, "start_logits") is not None
                else "sequence_classification" if logits is not None and logits.dim() == 2
                else "token_classification")
    return get(name) if name != "auto" else AutoTask()


class AutoTask(Task):
    """A model whose class names no task: its output decides, batch by batch."""

    name = "auto"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        return resolve_task("auto", outputs=outputs).read_outputs(outputs, inputs)


# ---- running a model once -------------------------------------------------------------------

def forward_view(model: nn.Module, inputs: dict, task: Task, capture: Optional[FeatureCapture] = None,
                 adaptor=None) -> ModelView:
    """Run ``model(**inputs)`` once and read its view: logits by ``task`` (or a user ``adaptor``
    ``(inputs, outputs) -> dict``), plus the features ``capture`` recorded by hooks."""
    if capture is not None:
        capture.active = True
    try:
        outputs = model(**inputs)
    finally:
        if capture is not None:
            capture.active = False
    view = view_from_adaptor(adaptor(inputs, outputs), outputs) if adaptor else task.read_outputs(outputs, inputs)
    if capture is not None:
        view.features.update(capture.collect())
    return view


def token_mask(logits: torch.Tensor, inputs: dict) -> Optional[torch.Tensor]:
    """Positions of a token-level head that count: labelled ones, else the non-padding ones."""
    labels = inputs.get("labels")
    if labels is not None and labels.dim() == 2:
        return labels != LABEL_PAD_ID
    mask = inputs.get("attention_mask")
    return mask.bool() if mask is not None else None
