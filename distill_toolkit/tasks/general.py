"""Task-agnostic distillation (``distillation.task: general``): an encoder student learns a teacher
encoder's hidden states, attention maps or self-attention relations on unlabelled text, with no head,
no logits and no labels (TinyBERT's general distillation, MiniLM, MiniLMv2).

The recipe, as YAML::

    teacher: {path: my/bert-base}             # any encoder; loaded as AutoModel (a head is dropped)
    student: {init_from: teacher, layers: [1, 3, 5]}     # or {path: ..., init_from: random, config: {...}}
    data: {name: shakespeare, max_length: 128}           # or vader_sentences, or name: text + train_file
    distillation:
      task: general
      kd_loss_weight: 0
      hard_label_weight: 0
      matches:
        - {feature: query, teacher_layer: 11, student_layer: 2, loss: minilmv2_relation,
           loss_kwargs: {relation_heads: 12}}
        - {feature: key, teacher_layer: 11, student_layer: 2, loss: minilmv2_relation,
           loss_kwargs: {relation_heads: 12}}
        - {feature: value, teacher_layer: 11, student_layer: 2, loss: minilmv2_relation,
           loss_kwargs: {relation_heads: 12}}

The run exports the student encoder to ``<output_dir>/final`` (weights, config, tokenizer); a later
task distillation starts from it with ``student: {path: <output_dir>/final}`` (its head is new).
Only the training split is read: there is no metric, so ``dev`` / ``test`` are not evaluated.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from distill_toolkit.config import DataSpec
from distill_toolkit.data import PaddingCollator
from distill_toolkit.data.mlm import tokenize_texts
from distill_toolkit.features import ModelView
from distill_toolkit.tasks.base import Task, _base_view, register_task


@register_task("general")
class GeneralDistillation(Task):
    """Encoders (``AutoModel``) on raw text: the view holds features and the input mask, no logits."""

    auto_class = "AutoModel"
    metric_name = "none"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        """No head: only the input mask (and the features the hooks capture)."""
        return _base_view(outputs, inputs)

    def label_names(self, splits, spec: DataSpec) -> None:
        """Unlabelled text: no label head."""
        return None

    def encode(self, splits, tokenizer, spec: DataSpec, labels: Optional[Sequence[str]] = None):
        """The training split's ``text_column`` tokenized and truncated to ``data.max_length`` (no labels);
        ``dev`` / ``test`` are dropped, since nothing is scored."""
        return tokenize_texts(type(splits)({"train": splits["train"]}), tokenizer, max_length=spec.max_length,
                              text_column=spec.text_column)

    def collator(self, tokenizer, spec: DataSpec):
        """Pads tokenized texts (``input_ids``, ``attention_mask`` ...) per batch."""
        return PaddingCollator(tokenizer)

    def predictions(self, view: ModelView) -> torch.Tensor:
        raise NotImplementedError("task 'general' predicts nothing: it has no head and no metric")

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        """Nothing is scored."""
        return {}

    def check_checkpoint(self, config, where: str) -> None:
        """Any encoder checkpoint serves: a saved head is simply not loaded."""
        return None
