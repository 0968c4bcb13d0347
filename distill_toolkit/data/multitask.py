"""Multi-task data: task-tagged batches and a seeded task sampler.

A multi-task run trains on several data sets at once, ``{"movies": ds1, "tweets": ds2, ...}``.
Every batch holds examples of ONE task and carries its name as ``batch["task"]`` (a string);
the student (and a multi-head teacher) receive it as a ``task=`` keyword argument, and the
``multi_task`` strategy reads it to pick the task's teachers and loss terms.

:class:`TaskBatchSampler` decides which task each batch comes from:

- ``proportional``: task ``t`` with probability ``|D_t|^tau / sum_u |D_u|^tau`` (TextBrewer's
  MultiTaskDistiller law; ``tau = 1`` samples by size, ``tau = 0`` uniformly);
- ``round_robin``: the tasks in turn, in the order given;
- ``weights``: task ``t`` with probability ``w_t / sum_u w_u``.

Draws come from a generator seeded with ``seed + epoch``, so every process draws the same
sequence, and resume replays it. Under data parallelism with ``num_replicas`` processes,
Accelerate hands batch ``k`` to process ``k % num_replicas``; the sampler therefore draws one
task per *group* of ``num_replicas`` consecutive batches, so at every step all processes train
on the same task (one task per optimiser micro-step, as DDP needs the same heads used on every
rank).
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from distill_toolkit.batch import TaskError
from distill_toolkit.config import TASK_SAMPLERS

def sampling_probabilities(sizes: Mapping[str, int], law: str = "proportional", tau: float = 1.0,
                           weights: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """Probability of each task under ``law`` (round-robin: each task's share of the turns)."""
    if law not in TASK_SAMPLERS:
        raise ValueError(f"unknown task sampler {law!r}; use one of {', '.join(TASK_SAMPLERS)}")
    tasks = list(sizes)
    if law == "round_robin":
        raw = [1.0] * len(tasks)
    elif law == "proportional":
        raw = [float(sizes[t]) ** tau for t in tasks]
    else:
        if weights is None:
            raise ValueError("task sampler 'weights' needs task weights, e.g. {'movies': 2, 'tweets': 1}")
        missing = [t for t in tasks if t not in weights]
        extra = [t for t in weights if t not in sizes]
        if missing or extra:
            raise ValueError(f"training.task_weights must name exactly the tasks {tasks}"
                             + (f"; missing {missing}" if missing else "") + (f"; unknown {extra}" if extra else ""))
        raw = [float(weights[t]) for t in tasks]
    total = sum(raw)
    if total <= 0:
        raise ValueError(f"task sampling weights sum to {total}; at least one must be > 0")
    return {t: r / total for t, r in zip(tasks, raw)}


class _Epoch:
    """Holds the epoch. Accelerate forwards ``set_epoch`` to ``batch_sampler.sampler`` (also through
    its per-process ``BatchSamplerShard``), so the sampler keeps its epoch in an object of that name."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class TaskBatchSampler(Sampler[list]):
    """Yields batches of indices into :class:`TaskConcat`, each batch from one task.

    Args:
        sizes: ``{task: number of examples}``, in the order of the concatenation.
        batch_size: examples per batch (the last batch of a task's pass may be shorter).
        law, tau, weights: the task law (module docstring).
        seed: draws use ``seed + epoch``.
        num_replicas: processes of the data-parallel run; tasks are drawn per group of
            that many consecutive batches.
        num_batches: batches per epoch; default: every task's examples once in expectation
            (the sum over tasks of ``ceil(|D_t| / batch_size)``), rounded up to a multiple of
            ``num_replicas``.

    Within a task, examples come in a fresh seeded permutation; when a task has given all its
    examples it starts a new permutation, so a frequently drawn small task cycles.
    """

    def __init__(self, sizes: Mapping[str, int], batch_size: int, law: str = "proportional", tau: float = 1.0,
                 weights: Optional[Mapping[str, float]] = None, seed: int = 0, num_replicas: int = 1,
                 num_batches: Optional[int] = None):
        empty = [t for t, n in sizes.items() if n <= 0]
        if empty:
            raise ValueError(f"task(s) {empty} have no examples; remove them from the multi-task data")
        self.sizes = dict(sizes)
        self.tasks = list(self.sizes)
        self.batch_size = batch_size
        self.law = law
        self.probabilities = sampling_probabilities(self.sizes, law, tau, weights)
        self.seed = seed
        self.num_replicas = max(1, int(num_replicas))
        offsets, start = {}, 0
        for task, n in self.sizes.items():
            offsets[task] = start
            start += n
        self.offsets = offsets
        natural = sum(math.ceil(n / batch_size) for n in self.sizes.values())
        total = num_batches or natural
        self.num_groups = math.ceil(total / self.num_replicas)
        self.sampler = _Epoch()

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_groups * self.num_replicas

    def task_sequence(self, epoch: Optional[int] = None) -> list[str]:
        """The task of each group of this epoch (one draw per ``num_replicas`` batches)."""
        epoch = self.sampler.epoch if epoch is None else epoch
        g = torch.Generator().manual_seed(self.seed + epoch)
        if self.law == "round_robin":
            return [self.tasks[k % len(self.tasks)] for k in range(self.num_groups)]
        probs = torch.tensor([self.probabilities[t] for t in self.tasks], dtype=torch.float64)
        draws = torch.multinomial(probs, self.num_groups, replacement=True, generator=g)
        return [self.tasks[i] for i in draws.tolist()]

    def __iter__(self):
        epoch = self.sampler.epoch
        sequence = self.task_sequence(epoch)
        # A second generator for the within-task order keeps the task draws independent of it.
        g = torch.Generator().manual_seed(self.seed + epoch + 7919)
        queues: dict[str, list] = {t: [] for t in self.tasks}
        for task in sequence:
            for _ in range(self.num_replicas):
                if not queues[task]:
                    order = (torch.randperm(self.sizes[task], generator=g) + self.offsets[task]).tolist()
                    queues[task] = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
                yield queues[task].pop(0)


class TaskConcat(Dataset):
    """The task data sets end to end; item ``i`` is ``(task, example)``."""

    def __init__(self, datasets: Mapping[str, Dataset]):
        self.datasets = dict(datasets)
        self.bounds = []
        start = 0
        for task, data in self.datasets.items():
            self.bounds.append((start, start + len(data), task))
            start += len(data)
        self.length = start

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        for start, stop, task in self.bounds:
            if start <= index < stop:
                return task, self.datasets[task][index - start]
        raise IndexError(index)


class TaskCollator:
    """Wraps a collator: batches ``(task, example)`` pairs (or plain examples of ``task``) and adds
    ``batch["task"]``. The wrapped collator never sees the tag, so any collator works unchanged."""

    def __init__(self, collate_fn: Optional[Callable] = None, task: Optional[str] = None):
        self.collate_fn = collate_fn or default_collate
        self.task = task

    def __call__(self, items: Sequence):
        if self.task is not None:
            task, examples = self.task, list(items)
        else:
            tasks = {t for t, _ in items}
            if len(tasks) != 1:
                raise TaskError(f"a batch mixes tasks {sorted(tasks)}; use TaskBatchSampler to batch multi-task data")
            task, examples = tasks.pop(), [e for _, e in items]
        batch = self.collate_fn(examples)
        batch["task"] = task
        return batch


def task_loader(datasets: Mapping[str, Dataset], batch_size: int, collate_fn: Optional[Callable] = None,
                law: str = "proportional", tau: float = 1.0, weights: Optional[Mapping[str, float]] = None,
                seed: int = 0, num_replicas: int = 1):
    """A ``DataLoader`` over several task data sets, batched by :class:`TaskBatchSampler`."""
    sampler = TaskBatchSampler({t: len(d) for t, d in datasets.items()}, batch_size, law, tau, weights, seed,
                               num_replicas)
    return DataLoader(TaskConcat(datasets), batch_sampler=sampler, collate_fn=TaskCollator(collate_fn))


def probe_batches(datasets: Mapping[str, Dataset], batch_size: int, collate_fn: Optional[Callable] = None) -> list:
    """One batch per task (its first examples), for the strategy's setup."""
    collator = TaskCollator(collate_fn)
    return [collator([(t, d[i]) for i in range(min(batch_size, len(d)))]) for t, d in datasets.items()]
