"""Sequence-level tasks: single-label classification (any number of classes, single texts or
text pairs) and multi-label classification (one sigmoid per label)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from distill_toolkit.config import DataSpec
from distill_toolkit.features import ModelView
from distill_toolkit.metrics import multi_label_f1
from distill_toolkit.tasks.base import _base_view, _logits, register_task
from distill_toolkit.tasks.labeled import DataError, LabeledTask, labels_to_ids, require_columns

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def encode_texts(splits, tokenizer, spec: DataSpec, labels_from: Any):
    """Tokenize ``text_column`` (and ``text_pair_column``) of every split, unpadded, truncated to
    ``max_length``; ``labels_from(batch)`` gives each example's ``labels``."""
    pair = spec.text_pair_column
    require_columns(splits, [spec.text_column, pair, spec.label_column],
                    "set data.text_column / data.text_pair_column / data.label_column to the data's column names")

    for split, part in splits.items():
        for column in filter(None, (spec.text_column, pair)):
            missing = [i for i, t in enumerate(part[column]) if not isinstance(t, str) or not t.strip()]
            if missing:
                raise DataError(f"data: split {split!r}, row {missing[0]}: column {column!r} has no text "
                                f"({len(missing)} row(s) like it). Fix: fill in or drop those rows")

    def encode(batch: dict) -> dict:
        texts, second = batch[spec.text_column], batch[pair] if pair else None
        enc = tokenizer(texts, second, truncation=True, max_length=spec.max_length)
        out = {key: enc[key] for key in MODEL_INPUTS if key in enc}
        out["labels"] = labels_from(batch)
        return out

    return splits.map(encode, batched=True, remove_columns=splits["train"].column_names, desc="Tokenizing")


@register_task("sequence_classification")
class SequenceClassification(LabeledTask):
    """One label per text (or text pair); softmax head; accuracy."""

    auto_class = "AutoModelForSequenceClassification"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        view = _base_view(outputs, inputs)
        view.logits = [_logits(outputs)]
        return view

    def encode(self, splits, tokenizer, spec: DataSpec, labels: Sequence[str]):
        """Tokenized splits with integer ``labels``."""
        splits = labels_to_ids(splits, spec.label_column, labels)
        self.check_label_ids(splits, spec.label_column, len(labels))
        return encode_texts(splits, tokenizer, spec, lambda batch: batch[spec.label_column])


@register_task("multilabel_classification")
class MultiLabelClassification(LabeledTask):
    """Any subset of the labels per text: one sigmoid per label, a label predicted when its logit > 0;
    micro/macro F1. The label column holds a 0/1 list per example (one entry per label)."""

    auto_class = "AutoModelForSequenceClassification"
    metric_name = "micro_f1"

    def config_overrides(self, overrides: Optional[dict]) -> dict:
        return {"problem_type": "multi_label_classification", **(overrides or {})}

    def predictions(self, view: ModelView) -> torch.Tensor:
        return (view.logits[0] > 0).long()

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        return multi_label_f1(predictions, labels, label_names)

    def label_names(self, splits, spec: DataSpec) -> list[str]:
        """``spec.label_names`` if given, else ``LABEL_i`` for each position of the 0/1 lists."""
        first = splits["train"][spec.label_column][0]
        if not isinstance(first, (list, tuple)):
            raise DataError(f"data.label_column {spec.label_column!r}: multi-label data needs a 0/1 list per "
                            f"example, found {first!r}. Fix: write e.g. `[0, 1, 1]` (one entry per label)")
        return list(spec.label_names or [f"LABEL_{i}" for i in range(len(first))])

    def encode(self, splits, tokenizer, spec: DataSpec, labels: Sequence[str]):
        """Tokenized splits with float 0/1 ``labels`` (as ``BCEWithLogitsLoss`` wants)."""
        return encode_texts(splits, tokenizer, spec,
                            lambda batch: [[float(v) for v in row] for row in batch[spec.label_column]])

