"""Configuration dataclasses: what to train, how, and what the student learns from.

Configs are plain data. They load from and save to YAML or JSON (YAML through a
``yaml.SafeLoader`` that reads YAML 1.2 floats such as ``1e-4``), and ``validate()`` checks their
*values* before any model is touched: every error names the field that is wrong and how to fix
it. Nothing here looks at the machine, the environment or the registries (those checks belong to
the layers that own them: strategies, tasks, engine).

- :class:`TrainingConfig`     -- the loop: batch size, steps, optimiser, checkpoints, trackers.
- :class:`DistillationConfig` -- the strategy: temperature, KD loss, weights, matches.
- :class:`Match`              -- one intermediate match between a teacher and a student feature.
- :class:`ExperimentConfig`   -- a whole run as the CLI reads it (models, data and the two above).
"""

from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.config.base import ConfigError, Serializable, read_config_file
from distill_toolkit.config.distillation import FEATURES, PAIR_LOSSES, TEACHER_COMBINATIONS, DistillationConfig, Match
from distill_toolkit.config.experiment import DataSpec, ExperimentConfig, ModelSpec
from distill_toolkit.config.lora import LoraSpec
from distill_toolkit.config.served import ServedTeacherSpec
from distill_toolkit.config.training import (LR_SCHEDULERS, MIXED_PRECISION, TASK_SAMPLERS, TEACHER_CACHE_DTYPES,
                                             TEACHER_PLACEMENTS, TRACKERS, TrainingConfig)

__all__ = [
    "AugmentSpec", "ConfigError", "Serializable", "read_config_file", "FEATURES", "PAIR_LOSSES", "TEACHER_COMBINATIONS",
    "DistillationConfig", "Match", "DataSpec", "ExperimentConfig", "ModelSpec", "LoraSpec", "ServedTeacherSpec", "LR_SCHEDULERS",
    "MIXED_PRECISION", "TASK_SAMPLERS", "TEACHER_CACHE_DTYPES", "TEACHER_PLACEMENTS", "TRACKERS", "TrainingConfig",
]
