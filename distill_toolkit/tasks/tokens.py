"""Token-level tasks: token classification (NER, BIO tags; entity F1), extractive question
answering (start/end spans; exact span match) and masked language modelling (token accuracy)."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from distill_toolkit.config import DataSpec
from distill_toolkit.data import tokenize_token_classification
from distill_toolkit.features import ModelView
from distill_toolkit.metrics import accuracy, entity_f1
from distill_toolkit.tasks.base import Task, _base_view, _get, _logits, register_task, token_mask
from distill_toolkit.tasks.labeled import LabeledTask, labels_to_ids, require_columns


def read_token_outputs(outputs: Any, inputs: dict) -> ModelView:
    """A token-level head's view: its logits, and the positions that count (labelled, else non-padding)."""
    view = _base_view(outputs, inputs)
    logits = _logits(outputs)
    view.logits, view.logits_mask = [logits], token_mask(logits, inputs)
    return view


@register_task("token_classification")
class TokenClassification(LabeledTask):
    """One label per word (its first word piece); entity F1 for BIO tags, else token accuracy.

    Data: ``text_column`` holds each sentence's words (a list), ``label_column`` their tags
    (ids or names, a list of the same length).
    """

    auto_class = "AutoModelForTokenClassification"
    metric_name = "entity_f1"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        return read_token_outputs(outputs, inputs)

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        if label_names and any(str(n)[:2] in ("B-", "I-") for n in label_names):
            return {**entity_f1(predictions, labels, label_names), **accuracy(predictions, labels)}
        return accuracy(predictions, labels)

    def encode(self, splits, tokenizer, spec: DataSpec, labels: Sequence[str]):
        """Word-piece tokenized splits; a word's tag on its first piece, ``-100`` elsewhere."""
        require_columns(splits, [spec.text_column, spec.label_column],
                        "set data.text_column (the words) and data.label_column (their tags)")
        splits = labels_to_ids(splits, spec.label_column, labels)
        self.check_label_ids(splits, spec.label_column, len(labels))
        return tokenize_token_classification(splits, tokenizer, max_length=spec.max_length,
                                             tokens_column=spec.text_column, tags_column=spec.label_column)


@register_task("question_answering")
class QuestionAnswering(Task):
    """Extractive QA: start and end logits over the tokens; a prediction is the (start, end) pair of
    argmaxes, scored by exact span match and per-boundary accuracy. Padded positions get -1e4 so
    they receive no probability in KD."""

    auto_class = "AutoModelForQuestionAnswering"
    metric_name = "exact_match"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        view = _base_view(outputs, inputs)
        logits = [_get(outputs, "start_logits"), _get(outputs, "end_logits")]
        mask = inputs.get("attention_mask")
        view.logits = [lg.masked_fill(mask == 0, -1e4) for lg in logits] if mask is not None else logits
        return view

    def predictions(self, view: ModelView) -> torch.Tensor:
        return torch.stack([lg.argmax(dim=-1) for lg in view.logits], dim=-1)

    def gold(self, inputs: dict) -> Optional[torch.Tensor]:
        if "start_positions" not in inputs or "end_positions" not in inputs:
            return None
        return torch.stack([inputs["start_positions"], inputs["end_positions"]], dim=-1)

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        hit = predictions == labels
        return {"exact_match": float(hit.all(axis=-1).mean()), "start_accuracy": float(hit[:, 0].mean()),
                "end_accuracy": float(hit[:, 1].mean())}


@register_task("masked_lm")
class MaskedLM(Task):
    """Masked language modelling: KD and accuracy on the masked (labelled) positions."""

    auto_class = "AutoModelForMaskedLM"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        return read_token_outputs(outputs, inputs)
