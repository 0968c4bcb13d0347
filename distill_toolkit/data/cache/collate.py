"""Attaching cached teacher outputs to batches: ``batch["teacher_cache"][role]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional, Sequence, Union

from torch.utils.data import Dataset, default_collate

from distill_toolkit.batch import ID, TEACHER, TEACHER_CACHE
from distill_toolkit.data.cache.ids import example_ids
from distill_toolkit.data.cache.layout import sequence_mask
from distill_toolkit.data.cache.storage import TeacherCache
from distill_toolkit.features import HEAD_INPUT

__all__ = ["TeacherCacheCollator", "training_collator"]


class TeacherCacheCollator:
    """``collate_fn`` plus, as ``batch["teacher_cache"][role]``, the cached teacher outputs of the examples.

    Examples need an ``id`` (see :func:`~distill_toolkit.data.cache.with_ids`). The Trainer wraps its
    training collator in one of these when it is given a :class:`TeacherCache` as teacher; use it
    directly with your own DataLoader.
    """

    def __init__(self, collate_fn: Optional[Callable], caches: Union[TeacherCache, Mapping[str, TeacherCache]],
                 id_key: str = ID):
        self.collate_fn = collate_fn or default_collate
        self.caches = {TEACHER: caches} if isinstance(caches, TeacherCache) else dict(caches)
        self.id_key = id_key

    def fingerprint(self):
        """The wrapped collator's fingerprint (the cached outputs do not change what the teacher sees)."""
        fingerprint = getattr(self.collate_fn, "fingerprint", None)
        return fingerprint() if callable(fingerprint) else None

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        ids = example_ids(examples, self.id_key)
        batch = self.collate_fn(examples)
        mask = sequence_mask(batch)
        batch[TEACHER_CACHE] = {role: cache.payload(ids, mask) for role, cache in self.caches.items()}
        return batch


def training_collator(caches: Mapping[str, TeacherCache], train_data, collate_fn,
                      feature_keys: Mapping[str, Sequence[str]], distillation) -> TeacherCacheCollator:
    """Check every cache against what the run trains on, and return the collator that attaches them.

    Args:
        caches: ``{role: TeacherCache}``, one per cached teacher.
        train_data: the training data (checked example by example when it is a map-style data set).
        collate_fn: the training collator; the returned one wraps it.
        feature_keys: the teacher features the strategy reads, ``{role: [key, ...]}`` (what
            ``strategy.feature_keys()`` returns); every one must be cached.
        distillation: the :class:`~distill_toolkit.config.DistillationConfig` a top-k cache must fit.
    """
    data = train_data if isinstance(train_data, Dataset) or hasattr(train_data, "column_names") else None
    for role, cache in caches.items():
        needed = [k for k in feature_keys.get(role, []) if k != HEAD_INPUT]  # 'causal_lm' reads the cached logits
        cache.check(data=data, collate_fn=collate_fn, feature_keys=needed, distillation=distillation)
    return TeacherCacheCollator(collate_fn, dict(caches))
