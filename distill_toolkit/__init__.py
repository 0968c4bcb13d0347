"""distill_toolkit: knowledge distillation for NLP on one Accelerate loop.

Quick start::

    from distill_toolkit import Trainer, TrainingConfig, DistillationConfig, Match

    trainer = Trainer(student, TrainingConfig(output_dir="out"),
                      DistillationConfig(temperature=4, matches=[Match(teacher_layer=4, student_layer=2)]),
                      train_data=dataset, teacher=teacher, collate_fn=collator)
    trainer.train()
"""

from importlib.metadata import PackageNotFoundError, version

from distill_toolkit.config import ConfigError, DistillationConfig, ExperimentConfig, Match, TrainingConfig
from distill_toolkit.engine import Callback, CheckpointError, NonFiniteLossError, Trainer

try:  # one source for the version: pyproject.toml's, as installed
    __version__ = version("distill_toolkit")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["ConfigError", "DistillationConfig", "ExperimentConfig", "Match", "TrainingConfig", "Callback",
           "CheckpointError", "NonFiniteLossError", "Trainer", "__version__"]
