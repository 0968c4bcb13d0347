"""How TextBrewer calls models and adaptors, and where its batches come from, in the toolkit's batch contract.

A TextBrewer batch (a dict, a tuple, anything) travels inside a toolkit batch as
``{"textbrewer_batch": batch}``: a ``"student"``/``"teacher"`` pair of them for TextBrewer's dual
batches, beside the batch's ``"task"`` in multi-task runs, with the cached teacher logits under
``"textbrewer_logits"``. The toolkit's bookkeeping keys so never meet the user's keys.

- :class:`ModelCall` calls a user model as TextBrewer does: ``model(**batch, **args)`` for a mapping,
  ``model(*batch, **args)`` otherwise.
- :class:`AdaptorCall` calls the user's ``adaptor(batch, model_outputs)`` and hands its dict to the
  toolkit (:func:`~distill_toolkit.features.view_from_adaptor`).
- :class:`Batches`, :class:`TaskBatches`, :class:`CachedBatches`: the data of one ``train()`` call as a
  :class:`Stream` the loop iterates (TextBrewer's epochs, its ``cycle`` for ``num_steps``, its task
  sampling, its shuffled logits cache), so the user's ``DataLoader`` keeps its own sampler.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset

from distill_toolkit.compat.textbrewer.presets import ADAPTOR_KEYS
from distill_toolkit.compat.textbrewer.utils import cycle

BATCH, LOGITS, OUTPUTS, DEFERRED = ("textbrewer_batch", "textbrewer_logits", "textbrewer_outputs",
                                    "textbrewer_deferred")


class ModelCall(nn.Module):
    """A user model called TextBrewer's way; a teacher (``teacher_index`` set) may read cached outputs instead."""

    def __init__(self, model: nn.Module, args: Optional[dict] = None, teacher_index: Optional[int] = None):
        super().__init__()
        self.model = model
        self.args = dict(args or {})
        self.teacher_index = teacher_index

    def forward(self, textbrewer_batch, textbrewer_logits=None, textbrewer_outputs=None, task=None):
        """The model's outputs on the TextBrewer batch (a teacher: the cached ones when the batch has them)."""
        if self.teacher_index is not None and textbrewer_logits is not None:  # is_caching_logits
            return textbrewer_logits[self.teacher_index]
        if self.teacher_index is not None and textbrewer_outputs is not None:  # batch["teacher_cache"]
            return textbrewer_outputs
        if isinstance(textbrewer_batch, Mapping):
            return self.model(**textbrewer_batch, **self.args)
        return self.model(*textbrewer_batch, **self.args)

    def save_pretrained(self, directory, state_dict: Optional[dict] = None, **kwargs) -> None:
        """Export the user's model: its own ``save_pretrained`` if it has one, else ``model.safetensors``."""
        state = self.state_dict() if state_dict is None else state_dict
        inner = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        if hasattr(self.model, "save_pretrained"):
            self.model.save_pretrained(directory, state_dict=inner, **kwargs)
        else:
            save_file({k: v.contiguous() for k, v in inner.items()}, os.path.join(directory, "model.safetensors"))


def adaptor_result(result: Any, probability_shift: bool = False) -> dict:
    """The keys of a TextBrewer adaptor's dict that TextBrewer reads, in the form the toolkit reads them.

    One ``logits_mask`` (or several equal ones) is kept for every logits head, as TextBrewer applies it;
    distinct masks per head, or distinct labels per head with ``probability_shift``, are refused.
    """
    if not isinstance(result, Mapping):
        raise TypeError(f"an adaptor must return a dict, got {type(result).__name__}")
    out = {k: result[k] for k in ADAPTOR_KEYS if k in result}
    for key, needed in (("logits_mask", True), ("labels", probability_shift)):
        value = out.get(key)
        if not isinstance(value, (list, tuple)):
            continue
        if needed and len(value) > 1 and not all(torch.equal(v, value[0]) for v in value[1:]):
            raise NotImplementedError(
                f"the adaptor returned {len(value)} different `{key}` tensors (one per logits head); "
                f"distill_toolkit.compat.textbrewer applies one {key} to every head. Fix: return one tensor, or "
                "distil each head with distill_toolkit.Trainer and a custom strategy")
        out[key] = value[0] if value else None
    return out


class AdaptorCall:
    """``adaptor(batch, model_outputs)`` called on the toolkit's inputs (a ``{task: adaptor}`` dict: the batch's)."""

    def __init__(self, adaptor, teacher: bool = False, probability_shift: bool = False):
        self.adaptor, self.teacher, self.probability_shift = adaptor, teacher, probability_shift

    def __call__(self, inputs: dict, outputs) -> dict:
        if self.teacher and inputs.get(LOGITS) is not None:  # cached logits: TextBrewer skips the adaptor
            return {"logits": outputs}
        adaptor = self.adaptor[inputs["task"]] if isinstance(self.adaptor, Mapping) else self.adaptor
        return adaptor_result(adaptor(inputs[BATCH], outputs), self.probability_shift)


def to_toolkit(batch) -> dict:
    """A TextBrewer batch wrapped for the toolkit (dual ``teacher``/``student`` batches kept apart)."""
    if isinstance(batch, dict) and "teacher" in batch and "student" in batch:
        teacher = {BATCH: batch["teacher"]}
        if "teacher_cache" in batch:
            teacher[OUTPUTS] = batch["teacher_cache"]
        return {"student": {BATCH: batch["student"]}, "teacher": teacher}
    return {BATCH: batch}


class Stream(Dataset):
    """A stream of toolkit batches behind a map-style data set of ``length`` placeholders ``{DEFERRED: i}``.

    The loop's loader yields placeholders (map-style: Accelerate keeps their order and does not dispatch
    them); the strategy's ``prepare_batch`` calls :meth:`resolve` just before the models run, so the user's
    ``DataLoader`` is read at TextBrewer's moment (after the previous step, not during the loop's prefetch)
    and its shuffling, collator and the models' dropout draw from the random state in TextBrewer's order.
    """

    def __init__(self, length: int):
        self.length = length
        self._iterator = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {DEFERRED: index}

    def resolve(self, index: int):
        """The batch of placeholder ``index``: index 0 starts a new pass (:meth:`start`), others continue it."""
        if index == 0 or self._iterator is None:
            self._iterator = self.start()
        return next(self._iterator)

    def start(self):
        """A new pass: an iterator of toolkit batches."""
        raise NotImplementedError


class Batches(Stream):
    """The batches of ``source``: a pass of ``length`` (an epoch, or with ``endless`` TextBrewer's ``cycle``:
    every micro-batch of a ``num_steps`` run)."""

    def __init__(self, source, postprocessor: Optional[Callable], length: int, endless: bool = False):
        super().__init__(length)
        self.source, self.postprocessor, self.endless = source, postprocessor, endless

    def start(self):
        """One pass over the source (TextBrewer's ``cycle`` when endless)."""
        while True:
            seen = 0
            for batch in self.source:
                seen += 1
                yield to_toolkit(self.postprocessor(batch) if self.postprocessor else batch)
            if not self.endless:
                return
            if not seen:
                raise ValueError("the dataloader yielded no batch. Fix: pass a non-empty, re-iterable dataloader")


class TaskBatches(Stream):
    """TextBrewer's multi-task sampling: per micro-batch a task drawn with ``np.random.choice``, ``P ~ |d|^tau``."""

    def __init__(self, loaders: dict, length: int, tau: float = 1, postprocessors: Optional[dict] = None):
        super().__init__(length)
        self.loaders, self.postprocessors = loaders, postprocessors
        if all(hasattr(v, "__len__") for v in loaders.values()):
            z = sum(pow(len(v), tau) for v in loaders.values())
            self.tasks, self.weights = zip(*((k, pow(len(v), tau) / z) for k, v in loaders.items()))
        else:  # a size is unknown: uniform, as TextBrewer
            self.tasks, self.weights = tuple(loaders), None

    def start(self):
        """Endless: one task drawn per micro-batch."""
        iterators = {k: cycle(v) for k, v in self.loaders.items()}
        while True:
            task = str(np.random.choice(self.tasks, p=self.weights))
            batch = next(iterators[task])
            if self.postprocessors is not None:
                batch = self.postprocessors[task](batch)
            yield {**to_toolkit(batch), "task": task}


class CachedBatches(Stream):
    """``is_caching_logits``: the cached ``[batch, teacher logits]`` pairs, shuffled in place by ``random.shuffle``
    at every epoch, as TextBrewer does; :meth:`reset` restores the order :meth:`mark` remembered."""

    def __init__(self, cache: list, length: int):
        super().__init__(length)
        self.cache = cache
        self._order = list(cache)

    def mark(self) -> None:
        """Remember the present order (see :meth:`reset`)."""
        self._order = list(self.cache)

    def reset(self) -> None:
        """Put the cache back in the order :meth:`mark` remembered."""
        self.cache[:] = self._order

    def start(self):
        """One epoch: the cache shuffled in place, then read in order."""
        random.shuffle(self.cache)
        for batch, logits in self.cache:
            yield {BATCH: batch, LOGITS: logits}
