"""Samplers that keep the loop's guarantees: seeded per epoch, so resume replays the same order."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, then group examples of similar length into the same batch, to cut padding.

    Each epoch draws a permutation from ``seed + epoch``, cuts it into "mega-batches" of
    ``mega_batch`` batches, sorts each mega-batch by length and cuts it into batches of
    ``batch_size``; the full batches are then shuffled (the short last batch stays last).
    Consecutive runs of ``batch_size`` indices are exactly those batches, so a plain
    ``BatchSampler`` (or Accelerate's per-rank sharding of it) keeps them together.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, mega_batch: int = 50):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.mega_batch = mega_batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        span = self.batch_size * self.mega_batch
        batches = []
        for start in range(0, len(order), span):
            group = sorted(order[start:start + span], key=lambda i: -self.lengths[i])
            batches += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
        for batch in shuffled + short:
            yield from batch
