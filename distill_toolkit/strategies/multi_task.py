"""``multi_task``: one student with one head per task, taught by each task's teacher(s).

TextBrewer's MultiTaskDistiller, extended: intermediate matches per task, and several teachers
per task (combined as in ``multi_teacher``). Each batch holds one task (``batch["task"]``, set
by the multi-task data loader, see :mod:`distill_toolkit.data.multitask`); the student and a
multi-head teacher receive it as ``task=``.

Teachers (``Trainer(teacher=...)``), by role:

- ``{"movies": t1, "tweets": t2}``: one teacher per task (roles ``movies``, ``tweets``);
- ``{"movies": [t1, t2], "tweets": t3}``: several for a task (roles ``movies/teacher0`` ...);
- ``model`` (role ``teacher``) or ``[m0, m1]``: multi-head teacher(s) serving every task.

For a batch of task ``t`` the loss is the ``multi_teacher`` loss with ``t``'s teachers and the
matches whose ``task`` is ``t`` or unset; its terms are logged as ``t/kd``, ``t/hard_label``,
``t/<match name>`` (``t/teacher0/<match name>`` ... with several teachers). Steps of other tasks
do not log ``t``'s terms, so each task's curve averages only its own batches.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from torch import nn

from distill_toolkit.batch import batch_task
from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView
from distill_toolkit.strategies.base import Strategy, StrategyError, register_strategy
from distill_toolkit.strategies.multi_teacher import MultiTeacher

_SHARED_ROLE = re.compile(r"teacher\d*")


@register_strategy("multi_task")
class MultiTask(Strategy):
    """Dispatches each batch to its task's :class:`MultiTeacher` (its teachers, its matches)."""

    teacher_roles: tuple = ()

    def __init__(self, config: DistillationConfig):
        super().__init__(config)
        self.tasks: list[str] = []
        self.task_roles: dict[str, tuple] = {}
        self.per_task = nn.ModuleDict()  # sanitised task name -> MultiTeacher

    # ---- step 0: which teachers serve which task -----------------------------------------
    def bind(self, roles: list[str], tasks: Optional[list[str]] = None) -> None:
        if not roles:
            raise StrategyError("strategy 'multi_task' needs teachers. Fix: pass teacher={task: model, ...} or one "
                                "multi-head teacher")
        serves: dict[str, Optional[str]] = {}  # role -> task (None: every task)
        for role in roles:  # "task" or "task/name" serve that task; "teacher", "teacher0" ... serve every task
            shared = "/" not in role and _SHARED_ROLE.fullmatch(role) and role not in (tasks or [])
            serves[role] = None if shared else role.split("/", 1)[0]
        task_names = list(tasks or []) + list(dict.fromkeys(
            t for t in serves.values() if t is not None and t not in (tasks or [])))
        if not task_names:
            raise StrategyError("strategy 'multi_task' found no tasks: pass train_data as {task: dataset}, or name "
                                "the teachers by task (teacher={task: model})")
        if tasks is not None:
            extra = sorted({t for t in serves.values() if t is not None and t not in tasks})
            if extra:
                raise StrategyError(f"teacher(s) for task(s) {extra}, which are not in the data; the tasks are "
                                    f"{list(tasks)}. Fix: rename the teachers after the tasks, or add their data")
        for i, match in enumerate(self.config.matches):
            if match.task is not None and match.task not in task_names:
                raise StrategyError(f"distillation.matches[{i}].task: {match.task!r} is not a task; the tasks are "
                                    f"{task_names}. Fix: name one of them, or remove `task` to match every task")
        self.tasks = task_names
        self.teacher_roles = tuple(roles)
        self.per_task = nn.ModuleDict()
        for task in task_names:
            task_roles = tuple(r for r in roles if serves[r] in (task, None))
            if not task_roles:
                raise StrategyError(f"task {task!r} has no teacher; teachers are given for "
                                    f"{sorted({t for t in serves.values() if t})}. Fix: add teacher={{{task!r}: ...}} "
                                    "or a multi-head teacher for every task")
            self.task_roles[task] = task_roles
            matches = [m for m in self.config.matches if m.task in (None, task)]
            sub = MultiTeacher(dataclasses.replace(self.config, matches=matches))
            sub.bind(list(task_roles))
            self.per_task[self._key(task)] = sub

    @staticmethod
    def _key(task: str) -> str:
        return task.replace(".", "_")

    def _task_of(self, batch=None, view: Optional[ModelView] = None) -> str:
        task = view.task if view is not None else batch_task(batch)
        if task is None and len(self.tasks) == 1:
            return self.tasks[0]
        if task is None:
            raise StrategyError(f"strategy 'multi_task' got a batch without a `task`; the tasks are {self.tasks}. "
                                "Fix: pass train_data as {task: dataset} (the loader tags each batch)")
        if task not in self.task_roles:
            raise StrategyError(f"a batch of task {task!r} has no teacher or loss terms; the known tasks are "
                                f"{self.tasks}. Fix: add a teacher (and a student head) for it, or drop its data")
        return task

    # ---- steps 1 and 3: features and teachers per batch -----------------------------------
    def feature_keys(self) -> dict[str, list[str]]:
        keys: dict[str, list[str]] = {"student": [], **{role: [] for role in self.teacher_roles}}
        for sub in self.per_task.values():
            for side, names in sub.feature_keys().items():
                keys[side] += names
        return {side: list(dict.fromkeys(names)) for side, names in keys.items()}

    def teachers_for(self, batch) -> tuple:
        return self.task_roles[self._task_of(batch)]

    # ---- step 2: setup, once per task's probe batch ----------------------------------------
    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        task = self._task_of(view=student)
        self.per_task[self._key(task)].setup(student, {r: teachers[r] for r in self.task_roles[task]})

    # ---- step 4: the loss ----------------------------------------------------------------
    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        task = self._task_of(view=student)
        sub = self.per_task[self._key(task)]
        if not sub.objective.ready:
            raise StrategyError(f"task {task!r} was not set up: the Trainer probes one batch per task when "
                                "train_data is a {task: dataset} dict. Fix: pass the data that way")
        loss, terms = sub(batch, student, {r: teachers[r] for r in self.task_roles[task]}, progress)
        own = f"{task}/"  # a role "movies/teacher0" is logged as "movies/teacher0/...", not "movies/movies/..."
        return loss, {own + name.removeprefix(own): value for name, value in terms.items()}

