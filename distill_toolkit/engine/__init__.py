"""The one training loop and what it owns: accelerator and launch checks, checkpoints, trackers, export."""

from distill_toolkit.engine.accelerator import build_accelerator, check_launch
from distill_toolkit.engine.callbacks import Callback
from distill_toolkit.engine.checkpoint import CheckpointError, latest_checkpoint
from distill_toolkit.engine.export import export_checkpoint
from distill_toolkit.engine.loop import NonFiniteLossError, Trainer, accuracy

__all__ = ["build_accelerator", "check_launch", "CheckpointError", "latest_checkpoint", "Callback",
           "export_checkpoint", "NonFiniteLossError", "Trainer", "accuracy"]
