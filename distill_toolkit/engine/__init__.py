"""The one training loop and what it owns: accelerator, teachers, checkpoints, export."""

from distill_toolkit.engine.accelerator import build_accelerator
from distill_toolkit.engine.checkpoint import CheckpointError, latest_checkpoint
from distill_toolkit.engine.loop import Callback, NonFiniteLossError, Trainer, accuracy

__all__ = ["build_accelerator", "CheckpointError", "latest_checkpoint", "Callback", "NonFiniteLossError",
           "Trainer", "accuracy"]
