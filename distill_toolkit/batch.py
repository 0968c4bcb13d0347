"""The batch contract: what a batch may hold, documented once.

A batch is a ``dict``. Either it holds one set of model inputs shared by every model
(``input_ids``, ``attention_mask``, ``labels`` ...), or separate sub-batches:

- ``student``: the student's inputs (a dict), e.g. from the student's tokenizer;
- ``teacher``: the teachers' inputs (a dict), when their tokenizer differs;

and any of these bookkeeping keys, which are never passed to a model:

- ``teacher_cache``: precomputed teacher outputs, ``{role: payload}`` (no teacher forward);
- ``task``: the task name of a multi-task batch (one task per batch; a string);
- ``id``: example ids (teacher-cache lookup);
- ``alignment``: cross-tokenizer maps between teacher and student positions: ``{"weights", "keys"}``
  matrices (:class:`~distill_toolkit.data.DualTokenizerCollator`, token and sentence tasks), or the
  span ids of each token and the shared vocabulary (``student_spans``, ``teacher_spans``,
  ``student_shared_ids``, ``teacher_shared_ids``; :class:`~distill_toolkit.data.CrossTokenizerLMCollator`,
  causal LMs).

``labels`` are the targets; positions (token tasks) or examples that must not count carry
:data:`LABEL_PAD_ID`, which ``torch.nn.CrossEntropyLoss`` and every loss of the toolkit ignore.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

STUDENT, TEACHER, TEACHER_CACHE, TASK, ID, ALIGNMENT, LABELS = (
    "student", "teacher", "teacher_cache", "task", "id", "alignment", "labels")
#: keys that describe a batch rather than feed a model
BOOKKEEPING_KEYS = (STUDENT, TEACHER, TEACHER_CACHE, TASK, ID, ALIGNMENT)
#: the label of a position or example that does not count
LABEL_PAD_ID = -100


class TaskError(ValueError):
    """A batch's task is unknown to a model or a strategy; the message lists the known tasks."""


def model_inputs(batch: Mapping, role: str) -> dict:
    """The part of ``batch`` a model of ``role`` (``"student"`` or a teacher role) consumes.

    A student reads ``batch["student"]`` when present; a teacher reads ``batch[role]`` or
    ``batch["teacher"]``; otherwise both read the shared inputs, without the bookkeeping keys.
    """
    if isinstance(batch.get(role), Mapping):
        return batch[role]
    if role != STUDENT and isinstance(batch.get(TEACHER), Mapping):
        return batch[TEACHER]
    return {k: v for k, v in batch.items() if k not in BOOKKEEPING_KEYS}


def batch_task(batch) -> Optional[str]:
    """The task name of a batch (``batch["task"]``), or None for single-task batches.

    The toolkit's collators store a string; a plain collator that passes the field through as
    a list of per-example names is accepted too, if they all agree.
    """
    if not isinstance(batch, Mapping) or TASK not in batch:
        return None
    task = batch[TASK]
    if isinstance(task, (list, tuple)):
        names = set(task)
        if len(names) != 1:
            raise TaskError(f"a batch mixes examples of tasks {sorted(names)}; every batch must hold one task. "
                            "Fix: batch multi-task data with TaskBatchSampler (pass train_data as a dict)")
        task = task[0]
    return task
