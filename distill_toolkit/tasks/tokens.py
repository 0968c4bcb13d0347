"""Token-level tasks: token classification (NER, BIO tags; entity F1), extractive question
answering (start/end spans; exact span match) and masked language modelling (token accuracy).

QA data is encoded by :func:`~distill_toolkit.data.qa.tokenize_question_answering` (question +
context, answer spans on tokens via the offset mapping); masked-LM data is tokenized once and masked
per batch by :class:`~distill_toolkit.data.mlm.MaskedLMCollator` (a seeded, content-derived mask, so
teacher, student, every epoch and a resumed run see the same masks).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.config import DataSpec
from distill_toolkit.data import PaddingCollator, tokenize_token_classification
from distill_toolkit.data.mlm import MaskedLMCollator, tokenize_texts
from distill_toolkit.data.qa import tokenize_question_answering
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

    def label_names(self, splits, spec: DataSpec) -> None:
        """No label head: the targets are token positions."""
        return None

    def encode(self, splits, tokenizer, spec: DataSpec, labels=None):
        """Question/context pairs (only the context truncated to ``data.max_length``) with
        ``start_positions`` / ``end_positions`` on the answer's tokens (0, ``[CLS]``, if truncated away)."""
        return tokenize_question_answering(splits, tokenizer, max_length=spec.max_length,
                                           question_column=spec.question_column, context_column=spec.context_column,
                                           answer_column=spec.answer_column,
                                           answer_start_column=spec.answer_start_column)

    def collator(self, tokenizer, spec: DataSpec):
        """Pads on the right whatever the tokenizer's side, so the answer positions stay valid."""
        collate = PaddingCollator(tokenizer)
        collate.padding_side = "right"
        return collate


@register_task("masked_lm")
class MaskedLM(Task):
    """Masked language modelling: KD and accuracy on the masked (labelled) positions.

    Data: texts in ``text_column`` (``data.name: text`` or ``files``), tokenized once; the collator
    masks ``data.mlm_probability`` of each example's non-special tokens (80% ``[MASK]``, 10% random,
    10% kept), drawn from ``data.seed`` and the example's tokens (see :mod:`distill_toolkit.data.mlm`).
    """

    auto_class = "AutoModelForMaskedLM"

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        return read_token_outputs(outputs, inputs)

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        """Accuracy on the masked positions, and how many there were."""
        return {**accuracy(predictions, labels), "masked_tokens": int((np.asarray(labels) != LABEL_PAD_ID).sum())}

    def label_names(self, splits, spec: DataSpec) -> None:
        """No label head: the targets are the vocabulary."""
        return None

    def encode(self, splits, tokenizer, spec: DataSpec, labels=None):
        """``text_column`` tokenized and truncated to ``data.max_length``; masking happens per batch."""
        return tokenize_texts(splits, tokenizer, max_length=spec.max_length, text_column=spec.text_column)

    def collator(self, tokenizer, spec: DataSpec):
        return MaskedLMCollator(tokenizer, mlm_probability=spec.mlm_probability, seed=spec.seed)
