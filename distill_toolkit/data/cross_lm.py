"""Causal-LM batches for a teacher and a student with different tokenizers (cross-tokenizer KD).

:class:`CrossTokenizerLMCollator` tokenises every example once per tokenizer, as
:class:`~distill_toolkit.data.lm.CausalLMCollator` does (text, or prompt + completion with the prompt's
labels ``-100``), and aligns the two tokenisations by character offsets
(:mod:`distill_toolkit.data.token_alignment`); no model runs here::

    {"student": {input_ids, attention_mask, labels},       # the student's tokens
     "teacher": {input_ids, attention_mask, labels},       # the same text in the teacher's tokens
     "alignment": {"student_spans": (B, Ls) long,          # each token's span id, -1 for none
                   "teacher_spans": (B, Lt) long,
                   "student_shared_ids": (M,) long,         # the shared vocabulary, paired by position
                   "teacher_shared_ids": (M,) long},
     "id": [...]}                                          # passed through when every example has one

Span ids count within an example; prompt and completion are aligned separately (each tokenised on its
own, as the single-tokenizer collator does), so no span crosses from one into the other. A span cut by
either side's ``max_length`` is dropped on both sides. The ``causal_lm`` strategy reads these tensors
for ``kd_loss: aligned_kd`` (:func:`distill_toolkit.losses.cross_tokenizer.span_pairs`); ``uld`` needs
only the two sub-batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import torch

from distill_toolkit.data.cache.fingerprints import tokenizer_fingerprint
from distill_toolkit.data.lm import LMDataError, check_pad_token, lm_batch
from distill_toolkit.data.token_alignment import offset_spans, shared_vocabulary

__all__ = ["CrossTokenizerLMCollator"]


class CrossTokenizerLMCollator:
    """Student and teacher causal-LM batches of the same texts, with their span alignment.

    Args:
        student_tokenizer, teacher_tokenizer: fast Hugging Face tokenizers (character offsets), each with a
            pad token (``tokenizer.pad_token = tokenizer.eos_token`` for most LMs).
        max_length, teacher_max_length: tokens per example at most on each side (the teacher's defaults to
            ``max_length``); longer ones lose their end.
        text_column, prompt_column, completion_column: as in :class:`~distill_toolkit.data.lm.CausalLMCollator`.
    """

    def __init__(self, student_tokenizer, teacher_tokenizer, max_length: int = 128,
                 teacher_max_length: Optional[int] = None, text_column: str = "text",
                 prompt_column: Optional[str] = "prompt", completion_column: str = "completion"):
        for side, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
            if not getattr(tok, "is_fast", False):
                raise LMDataError(f"the {side} tokenizer ({type(tok).__name__}) is not a fast tokenizer, and aligning "
                                  "two tokenisations needs character offsets. Fix: load it with "
                                  "AutoTokenizer.from_pretrained(..., use_fast=True)")
        self.pad_S, self.pad_T = check_pad_token(student_tokenizer), check_pad_token(teacher_tokenizer)
        for name, value in (("max_length", max_length), ("teacher_max_length", teacher_max_length or max_length)):
            if not isinstance(value, int) or value < 2:
                raise LMDataError(f"{name} must be an integer >= 2, got {value!r}")
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.max_length, self.teacher_max_length = max_length, teacher_max_length or max_length
        self.text_column, self.prompt_column, self.completion_column = text_column, prompt_column, completion_column
        self.shared_S, self.shared_T = shared_vocabulary(student_tokenizer, teacher_tokenizer)

    def fingerprint(self) -> dict:
        return {"collator": type(self).__name__, "student": tokenizer_fingerprint(self.student_tokenizer),
                "teacher": tokenizer_fingerprint(self.teacher_tokenizer), "max_length": self.max_length,
                "teacher_max_length": self.teacher_max_length, "text_column": self.text_column,
                "prompt_column": self.prompt_column, "completion_column": self.completion_column}

    def _segments(self, example) -> tuple[Optional[str], str]:
        """``(prompt or None, learnt text)`` of one example."""
        if isinstance(example, str):
            return None, example
        if not isinstance(example, Mapping):
            raise LMDataError(f"an example must be a string or a dict, got {type(example).__name__}")
        if self.prompt_column is not None and self.prompt_column in example and self.completion_column in example:
            return example[self.prompt_column], example[self.completion_column]
        if self.text_column in example:
            return None, example[self.text_column]
        raise LMDataError(f"an example has none of the fields {self.text_column!r} or ({self.prompt_column!r}, "
                          f"{self.completion_column!r}); it has {sorted(example)}. The cross-tokenizer collator "
                          "reads raw text (token ids belong to one tokenizer). Fix: name the columns with "
                          "text_column= / prompt_column= / completion_column=")

    @staticmethod
    def _encode(tokenizer, text: str, special: bool) -> tuple[list[int], list]:
        enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def _example(self, example) -> tuple[tuple, tuple, list, list]:
        """Both sides' ``(prompt_ids, completion_ids)`` and the span id of each of their tokens."""
        prompt, text = self._segments(example)
        pairs, spans, base = [], [[], []], 0
        sides = (self.student_tokenizer, self.teacher_tokenizer)
        encoded = [[], []]
        for segment, special in ((prompt, True), (text, prompt is None)):
            if segment is None:
                continue
            (ids_S, off_S), (ids_T, off_T) = (self._encode(tok, segment, special) for tok in sides)
            span_S, span_T = offset_spans(off_S, off_T)
            width = max(span_S + span_T + [-1]) + 1
            spans[0] += [s + base if s >= 0 else -1 for s in span_S]
            spans[1] += [s + base if s >= 0 else -1 for s in span_T]
            encoded[0].append(ids_S)
            encoded[1].append(ids_T)
            base += width
        for side in (0, 1):
            parts = encoded[side]
            pairs.append((parts[0], parts[1]) if len(parts) == 2 else ([], parts[0]))
        return pairs[0], pairs[1], spans[0], spans[1]

    def __call__(self, examples: Sequence) -> dict:
        if not examples:
            raise LMDataError("CrossTokenizerLMCollator got an empty batch")
        rows = [self._example(e) for e in examples]
        student = lm_batch([r[0] for r in rows], self.pad_S, self.max_length)
        teacher = lm_batch([r[1] for r in rows], self.pad_T, self.teacher_max_length)
        spans_S = torch.full(student["input_ids"].shape, -1, dtype=torch.long)
        spans_T = torch.full(teacher["input_ids"].shape, -1, dtype=torch.long)
        for b, (_, _, span_S, span_T) in enumerate(rows):
            kept_S, kept_T = span_S[:self.max_length], span_T[:self.teacher_max_length]
            cut = set(span_S[self.max_length:]) | set(span_T[self.teacher_max_length:])  # spans truncation split
            spans_S[b, :len(kept_S)] = torch.tensor([-1 if s in cut else s for s in kept_S], dtype=torch.long)
            spans_T[b, :len(kept_T)] = torch.tensor([-1 if s in cut else s for s in kept_T], dtype=torch.long)
        batch = {"student": student, "teacher": teacher,
                 "alignment": {"student_spans": spans_S, "teacher_spans": spans_T,
                               "student_shared_ids": self.shared_S, "teacher_shared_ids": self.shared_T}}
        if all(isinstance(e, Mapping) and "id" in e for e in examples):
            batch["id"] = [e["id"] for e in examples]
        return batch
