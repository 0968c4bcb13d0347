"""Distillation inside Hugging Face's ``transformers.Trainer``: :class:`DistillationTrainer`.

The toolkit's strategies, losses, matches, projections and hook-based feature capture, with the
``Trainer`` owning the loop (``TrainingArguments``, callbacks, ``report_to``, checkpoints). See
``docs/hf_trainer.md``.
"""

from distill_toolkit.hf.checkpoint import STRATEGY_WEIGHTS_NAME
from distill_toolkit.hf.trainer import DistillationTrainer, StudentWithStrategy

__all__ = ["DistillationTrainer", "StudentWithStrategy", "STRATEGY_WEIGHTS_NAME"]
