"""Separate student / teacher batches for models with different tokenizers, and position alignment.

:class:`DualTokenizerCollator` tokenises each raw example twice, once per tokenizer, and yields::

    {"student": {input_ids, attention_mask, [token_type_ids], [labels]},
     "teacher": {input_ids, attention_mask, [token_type_ids]},
     "labels": ...,                      # the student's labels again (absent for unlabelled text)
     "id": [...],                        # passed through, e.g. for a teacher cache
     "alignment": {"weights", "keys"}}   # only with align="first" / "mean"

The loop and the strategies need no special case: every model reads its own sub-batch
(:func:`~distill_toolkit.batch.model_inputs`), and sequence-level outputs (sentence
logits, a pooled vector) compare as they are.

Token-level outputs (token classification, extractive QA, hidden states, attention maps) are
compared position by position, so the teacher's positions are mapped onto the student's through
character offsets (``align=...``; fast tokenizers only). The rule:

* A student token and a teacher token **overlap** when they come from the same word (pre-split
  input, ``words_column``) or the same text segment (``text_column`` / ``text_pair_column``) and
  their character spans intersect. ``"play" + "##ing"`` and ``"playing"`` overlap pairwise.
* Special tokens ([CLS], [SEP], <s>, </s>) have no characters: the student's special tokens are
  paired with the teacher's in order when both have as many, else first with first and last with
  last (so a [CLS]-position match meets the teacher's <s>).
* ``align="first"``: a student position takes the teacher's **first** overlapping token;
  ``align="mean"``: the **mean** over all overlapping teacher tokens (logits are averaged as
  logits, i.e. a normalised geometric mean of the distributions; hidden states as vectors).
* Attention maps ``(B, H, Lt, Lt)`` become ``A @ att @ K^T``: query rows by the rule above
  (``A``), key columns by **summing** the probability of the teacher keys a student key overlaps,
  a teacher key shared by n student keys giving each 1/n of it (``K``), so rows still sum to the
  attended mass.
* A student position with no overlapping teacher token (a word the teacher's ``max_length`` cut
  off) gets zeros; with word labels such a word's label is set to ``-100`` (it cannot be distilled),
  counted in :attr:`DualTokenizerCollator.unaligned_labels`.

Word labels (``words_column`` + per-word ``label_column``) go to the student's first sub-token of each
word, ``-100`` elsewhere, as :func:`~distill_toolkit.data.collators.tokenize_token_classification`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import numpy as np
import torch

from distill_toolkit.data.cache.fingerprints import tokenizer_fingerprint

__all__ = ["ALIGN_MODES", "DualTokenizerCollator", "align_view", "alignment_matrices"]

ALIGN_MODES = ("first", "mean")
LABEL_PAD_ID = -100
_SEQUENCE_TASKS = ("sequence_classification", "multilabel_classification")


def alignment_matrices(student_spans: Sequence, teacher_spans: Sequence, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(weights, keys)`` of shape ``(Ls, Lt)`` for one example.

    Each span list holds, per token, ``(segment, start, end)`` with ``segment`` None for special
    tokens and ``-1`` for padding. ``weights`` maps teacher rows onto student rows by ``mode``;
    ``keys`` splits each teacher key's mass among the student keys it overlaps.
    """
    if mode not in ALIGN_MODES:
        raise ValueError(f"align must be one of {ALIGN_MODES}, got {mode!r}")
    s = np.array([(-2 if g is None else g, a, b) for g, a, b in student_spans], dtype=np.int64).reshape(-1, 3)
    t = np.array([(-2 if g is None else g, a, b) for g, a, b in teacher_spans], dtype=np.int64).reshape(-1, 3)
    overlap = ((s[:, None, 0] == t[None, :, 0]) & (s[:, None, 0] >= 0)
               & (np.maximum(s[:, None, 1], t[None, :, 1]) < np.minimum(s[:, None, 2], t[None, :, 2])))
    special_s = np.flatnonzero(s[:, 0] == -2)
    special_t = np.flatnonzero(t[:, 0] == -2)
    if len(special_s) and len(special_t):
        pairs = (zip(special_s, special_t) if len(special_s) == len(special_t)
                 else [(special_s[0], special_t[0]), (special_s[-1], special_t[-1])])
        for i, j in pairs:
            overlap[i, j] = True
    overlap = overlap.astype(np.float32)
    if mode == "mean":
        weights = overlap / np.maximum(overlap.sum(1, keepdims=True), 1)
    else:
        weights = np.zeros_like(overlap)
        rows = np.flatnonzero(overlap.any(1))
        weights[rows, overlap[rows].argmax(1)] = 1.0
    keys = overlap / np.maximum(overlap.sum(0, keepdims=True), 1)
    return weights, keys


class DualTokenizerCollator:
    """Tokenise raw examples for the student and for the teacher; see the module docstring.

    Args:
        student_tokenizer, teacher_tokenizer: Hugging Face tokenizers (fast ones when ``align`` is set
            or words are pre-split).
        text_column / text_pair_column: the text (and optional second text) of sequence-level tasks.
        words_column: pre-split words (a list of strings per example) for token-level tasks; then
            ``label_column`` holds one label per word.
        label_column: labels (an int per example, or a list per word); examples without it are
            unlabelled text, distilled from the teacher alone (``hard_label_weight: 0``).
        max_length, teacher_max_length: truncation lengths (the teacher's defaults to ``max_length``).
        align: None (sequence-level only), ``"first"`` or ``"mean"`` (token-level: see the rule above).
        pass_through: fields copied into the batch as lists (e.g. ``id`` for a teacher cache).
    """

    def __init__(self, student_tokenizer, teacher_tokenizer, *, text_column: str = "text",
                 text_pair_column: Optional[str] = None, words_column: Optional[str] = None,
                 label_column: str = "label", max_length: int = 128, teacher_max_length: Optional[int] = None,
                 align: Optional[str] = None, pass_through: Sequence[str] = ("id", "task")):
        if align is not None and align not in ALIGN_MODES:
            raise ValueError(f"align: unknown {align!r}. Fix: use one of {ALIGN_MODES}, or None for "
                             "sequence-level tasks")
        for side, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
            if getattr(tok, "pad_token_id", None) is None:
                raise ValueError(f"the {side} tokenizer ({type(tok).__name__}) has no pad token. Fix: set one, "
                                 "e.g. tokenizer.pad_token = tokenizer.eos_token")
            needs_fast = align is not None or (words_column is not None and side == "student")
            if needs_fast and not getattr(tok, "is_fast", False):
                why = ("aligning positions across tokenizers needs character offsets"
                       if align is not None else "word labels need word_ids()")
                raise ValueError(f"{why}, which only fast tokenizers provide, and the {side} tokenizer "
                                 f"{type(tok).__name__} is not one. Fix: load it with "
                                 "AutoTokenizer.from_pretrained(..., use_fast=True), or set align=None "
                                 "(sequence-level tasks need no alignment)")
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.text_column, self.text_pair_column, self.words_column = text_column, text_pair_column, words_column
        self.label_column = label_column
        self.max_length = max_length
        self.teacher_max_length = teacher_max_length or max_length
        self.align = align
        self.pass_through = tuple(pass_through)
        self.unaligned_labels = 0

    def fingerprint(self) -> dict:
        """What decides the teacher's inputs (for a teacher cache built over these batches)."""
        return {"collator": "DualTokenizerCollator", "student": tokenizer_fingerprint(self.student_tokenizer),
                "teacher": tokenizer_fingerprint(self.teacher_tokenizer), "text_column": self.text_column,
                "text_pair_column": self.text_pair_column, "words_column": self.words_column,
                "max_length": self.max_length, "teacher_max_length": self.teacher_max_length, "align": self.align}

    # ---------------------------------------------------------------------------------------
    def _check(self, examples) -> None:
        if not examples:
            raise ValueError("DualTokenizerCollator got an empty batch")
        needed = [c for c in (self.words_column or self.text_column, self.text_pair_column) if c]
        for example in examples:
            if not isinstance(example, Mapping):
                raise TypeError(f"DualTokenizerCollator needs dict examples, got {type(example).__name__}")
            missing = [c for c in needed if c not in example]
            if missing:
                fix = ("words_column=" if self.words_column else "text_column=") + "/text_pair_column=/label_column="
                raise ValueError(f"an example has no field(s) {missing} (fields: {sorted(example)}). The collator "
                                 f"reads raw text, not token ids. Fix: pass {fix} naming the dataset's columns")
        labelled = [self.label_column in e for e in examples]
        if any(labelled) and not all(labelled):
            raise ValueError(f"some examples of the batch have {self.label_column!r} and some do not; mix labelled "
                             "and unlabelled text only with labels on every example (or none)")

    def _encode(self, tokenizer, examples, max_length: int):
        kwargs = dict(truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        if self.align is not None:
            kwargs["return_offsets_mapping"] = True
        if self.words_column:
            return tokenizer([list(e[self.words_column]) for e in examples], is_split_into_words=True, **kwargs)
        texts = [e[self.text_column] for e in examples]
        if self.text_pair_column:
            return tokenizer(texts, [e[self.text_pair_column] for e in examples], **kwargs)
        return tokenizer(texts, **kwargs)

    def _spans(self, encoding, row: int) -> list:
        segments = encoding.word_ids(row) if self.words_column else encoding.sequence_ids(row)
        mask = encoding["attention_mask"][row].tolist()
        offsets = encoding["offset_mapping"][row].tolist()
        return [(-1, 0, 0) if not m else (seg, a, b) for seg, (a, b), m in zip(segments, offsets, mask)]

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        self._check(examples)
        enc_s = self._encode(self.student_tokenizer, examples, self.max_length)
        enc_t = self._encode(self.teacher_tokenizer, examples, self.teacher_max_length)
        student = {k: v for k, v in enc_s.items() if k != "offset_mapping"}
        teacher = {k: v for k, v in enc_t.items() if k != "offset_mapping"}
        batch: dict = {"student": student, "teacher": teacher}

        weights = keys = None
        if self.align is not None:
            pairs = [alignment_matrices(self._spans(enc_s, i), self._spans(enc_t, i), self.align)
                     for i in range(len(examples))]
            weights = torch.from_numpy(np.stack([w for w, _ in pairs]))
            keys = torch.from_numpy(np.stack([k for _, k in pairs]))
            batch["alignment"] = {"weights": weights, "keys": keys}

        if self.label_column in examples[0]:
            if self.words_column:
                labels = torch.full(student["input_ids"].shape, LABEL_PAD_ID, dtype=torch.long)
                for row, example in enumerate(examples):
                    previous = None
                    for pos, word in enumerate(enc_s.word_ids(row)):
                        if word is not None and word != previous:
                            labels[row, pos] = int(example[self.label_column][word])
                        previous = word
                if weights is not None:
                    cut = (labels != LABEL_PAD_ID) & (weights.sum(-1) == 0)  # words the teacher never saw
                    self.unaligned_labels += int(cut.sum())
                    labels[cut] = LABEL_PAD_ID
            else:
                values = [e[self.label_column] for e in examples]
                is_float = any(isinstance(v, float) or (isinstance(v, list) and v and isinstance(v[0], float))
                               for v in values)
                labels = torch.tensor(values, dtype=torch.float if is_float else torch.long)
            student["labels"] = labels
            batch["labels"] = labels
        for key in self.pass_through:
            if key in examples[0]:
                batch[key] = [e[key] for e in examples]
        return batch


def align_view(view, batch, task: str = "auto"):
    """Map a teacher view's positions onto the student's with ``batch["alignment"]`` (no-op without one)."""
    alignment = batch.get("alignment") if isinstance(batch, Mapping) else None
    if alignment is None or "weights" not in alignment:  # none, or spans (cross_lm.py), read by the strategy
        return view
    weights, keys = alignment["weights"], alignment["keys"]
    B, Ls, Lt = weights.shape

    def rows(x):  # (B, Lt, ...) -> (B, Ls, ...)
        flat = x.reshape(B, Lt, -1)
        return torch.bmm(weights.to(flat.dtype), flat).reshape(B, Ls, *x.shape[2:])

    def is_positional(x) -> bool:
        return isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == B and x.shape[1] == Lt

    logits = []
    for x in view.logits:
        if not isinstance(x, torch.Tensor):
            raise ValueError("top-k (sparse) teacher logits cannot be aligned across tokenizers (the vocabularies "
                             "differ anyway). Fix: cache dense logits, or distil hidden states only")
        logits.append(rows(x) if task not in _SEQUENCE_TASKS and is_positional(x) else x)
    features = {}
    for key, x in view.features.items():
        if key.startswith("attention:") and x.dim() == 4 and x.shape[-1] == Lt:
            w = weights.to(x.dtype)[:, None]
            k = keys.to(x.dtype)[:, None]
            features[key] = w @ x @ k.transpose(-1, -2)
        elif is_positional(x):
            features[key] = rows(x)
        else:
            features[key] = x
    view.logits, view.features = logits, features
    student = batch.get("student") if isinstance(batch.get("student"), Mapping) else {}
    view.inputs_mask = student.get("attention_mask")
    view.logits_mask = None
    return view
