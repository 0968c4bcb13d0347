"""Tasks, found by name: ``distill_toolkit.tasks.get("sequence_classification")``.

Built in: ``sequence_classification``, ``multilabel_classification``, ``token_classification``,
``question_answering``, ``masked_lm``, ``causal_lm``, ``general`` (task-agnostic distillation of
encoders on unlabelled text). Add one with :func:`register_task`.
"""

from distill_toolkit.tasks.base import (
    AutoTask,
    Task,
    UnknownTaskError,
    available_tasks,
    detect_task,
    forward_view,
    get,
    register_task,
    resolve_task,
)
from distill_toolkit.tasks import classification as _classification  # noqa: F401  (registers its tasks)
from distill_toolkit.tasks import tokens as _tokens  # noqa: F401  (registers its tasks)
from distill_toolkit.tasks import causal_lm as _causal_lm  # noqa: F401  (registers "causal_lm")
from distill_toolkit.tasks import general as _general  # noqa: F401  (registers "general")
from distill_toolkit.tasks.causal_lm import next_token_mask, perplexity
from distill_toolkit.tasks.labeled import DataError, LabeledTask

__all__ = [
    "AutoTask", "DataError", "LabeledTask", "Task", "UnknownTaskError", "available_tasks", "detect_task",
    "forward_view", "get", "next_token_mask", "perplexity", "register_task", "resolve_task",
]
