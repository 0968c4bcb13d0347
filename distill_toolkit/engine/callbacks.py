"""Callbacks: hooks into the one loop, named as in ``transformers.TrainerCallback``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for the annotations only: the loop imports this module
    from distill_toolkit.engine.loop import Trainer


class Callback:
    """Hooks into the loop, named as in ``transformers.TrainerCallback``; override what you need.

    Set ``trainer.should_stop = True`` in any of them to stop training after the current step.

    - ``on_train_begin``: once, after setup, resume and tracker start, before the first step.
    - ``on_step_end``: after every optimiser step, with that step's train logs.
    - ``on_log``: whenever logs go to the trackers (train logs every ``log_every_steps`` and at step 1,
      ``eval/...`` metrics after each evaluation), whether or not any tracker is configured.
    - ``on_evaluate``: after each evaluation, with its metrics.
    - ``on_save``: after a checkpoint is complete (sealed and renamed), with its folder.
    - ``on_train_end``: once, with the result of :meth:`Trainer.train`.
    """

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", step: int, logs: dict) -> None: ...

    def on_log(self, trainer: "Trainer", step: int, logs: dict) -> None: ...

    def on_save(self, trainer: "Trainer", step: int, checkpoint: Path) -> None: ...

    def on_evaluate(self, trainer: "Trainer", step: int, metrics: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer", result: dict) -> None: ...
