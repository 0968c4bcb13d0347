"""Extractive question answering (SQuAD-style) data: question + context tokenized as a pair, the
answer's character span mapped onto token positions.

An example holds a question, a context and its answer, in either of two layouts:

- SQuAD: one ``answers`` column of ``{"text": [...], "answer_start": [...]}`` (the first answer is
  learnt; empty lists mean "no answer", SQuAD 2.0 style, and point at position 0);
- flat: an answer text column plus an ``answer_start`` column (the answer's 0-based character
  offset in the context).

Only the context is truncated (``truncation="only_second"``). The fast tokenizer's
``offset_mapping`` puts ``start_positions`` / ``end_positions`` on the first and last token of
the answer; an answer the truncation cut (in whole or in part) points at position 0 (``[CLS]``),
the usual "no answer in this window" target. Examples are not padded (the collator pads per batch,
on the right, so positions stay valid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

from distill_toolkit.data.loading import DataError

__all__ = ["answer_span", "char_span_to_tokens", "tokenize_question_answering"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_START_FIX = ("answer_start is the 0-based character offset of the answer in the context; correct it "
              "or the answer text")


def char_span_to_tokens(offsets: Sequence, sequence_ids: Sequence, start_char: int,
                        end_char: int, context_id: int = 1) -> tuple[int, int]:
    """Token positions ``(start, end)`` (inclusive) covering characters ``[start_char, end_char)`` of the
    context (the tokens whose sequence id is ``context_id``), from a fast tokenizer's ``offsets``.

    ``(0, 0)`` (the ``[CLS]`` position) when the span is empty (no answer) or the context tokens left
    after truncation do not hold the whole span.
    """
    context = [i for i, s in enumerate(sequence_ids) if s == context_id]
    if end_char <= start_char or not context:
        return 0, 0
    first, last = context[0], context[-1]
    if offsets[first][0] > start_char or offsets[last][1] < end_char:
        return 0, 0  # the answer was truncated away (or begins before the context's first kept token)
    start = first
    while start <= last and offsets[start][1] <= start_char:  # tokens that end before the answer begins
        start += 1
    end = last
    while end >= first and offsets[end][0] >= end_char:  # tokens that begin after the answer ends
        end -= 1
    return (start, end) if start <= end else (0, 0)


def answer_span(answer, start, context: str, where: str) -> Optional[tuple[int, int]]:
    """The character span ``(start, end)`` of one example's answer, checked against its context.

    ``answer`` is a SQuAD ``{"text": [...], "answer_start": [...]}`` dict (``start`` unused) or the
    answer's text with its offset ``start``. ``None`` for a SQuAD example without answers.

    Raises:
        DataError: the answer is missing, malformed, or its text is not at ``start`` in the context.
    """
    if isinstance(answer, Mapping):
        texts, starts = answer.get("text"), answer.get("answer_start")
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        starts = [starts] if isinstance(starts, int) else list(starts or [])
        if not texts and not starts:
            return None
        if not texts or not starts:
            raise DataError(f"{where}: the answer {dict(answer)!r} needs both `text` and `answer_start`. Fix: write "
                            "e.g. {\"text\": [\"Paris\"], \"answer_start\": [31]}, or empty lists for no answer")
        answer, start = texts[0], starts[0]
    if not isinstance(answer, str) or not answer:
        raise DataError(f"{where}: the answer is {answer!r}, not a text. Fix: give the answer's text (or drop the row)")
    if isinstance(start, bool) or not isinstance(start, int):
        raise DataError(f"{where}: answer_start is {start!r}, not a character offset. Fix: {_START_FIX}")
    if context[start:start + len(answer)] != answer:
        found = context.find(answer)
        hint = f" (the text occurs at offset {found})" if found >= 0 else " (the text is not in the context at all)"
        raise DataError(f"{where}: the answer {answer!r} is not at answer_start {start} of the context, which holds "
                        f"{context[start:start + len(answer)]!r} there{hint}. Fix: {_START_FIX}")
    return start, start + len(answer)


def _check_columns(part, split: str, question: str, context: str, answer: str, answer_start: str) -> bool:
    """Whether ``part`` uses the flat layout (answer text + ``answer_start`` columns); missing columns raise."""
    names = part.column_names
    for column, field in ((question, "question_column"), (context, "context_column"), (answer, "answer_column")):
        if column not in names:
            raise DataError(f"data: split {split!r} has no column {column!r} (data.{field}); its columns are "
                            f"{names}. Fix: set data.{field} to the column holding it")
    if len(part) == 0:
        raise DataError(f"data: split {split!r} is empty. Fix: give it at least one example")
    flat = not isinstance(part[0][answer], Mapping)
    if flat and answer_start not in names:
        raise DataError(f"data: split {split!r}: column {answer!r} holds answer texts but there is no column "
                        f"{answer_start!r} with their character offsets (data.answer_start_column). Fix: add it, set "
                        "data.answer_start_column, or use SQuAD's {text: [...], answer_start: [...]} answers")
    return flat


def tokenize_question_answering(splits, tokenizer, *, max_length: int = 384, question_column: str = "question",
                                context_column: str = "context", answer_column: str = "answers",
                                answer_start_column: str = "answer_start"):
    """Tokenize every split of a QA ``DatasetDict`` into question/context pairs with answer positions.

    Returns:
        The splits with ``input_ids``, ``attention_mask``, ``token_type_ids`` (if produced),
        ``start_positions`` and ``end_positions`` (token indices; 0 where the answer was truncated
        away or there is none); every other column is removed.

    Raises:
        DataError: a column is missing, a question or context is empty, a question leaves no room for
            the context within ``max_length``, an answer is not at its ``answer_start``, or the
            tokenizer is not a fast one (``offset_mapping`` needs it). Messages name split, row and fix.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"{type(tokenizer).__name__} is not a fast tokenizer, and mapping answers onto tokens needs "
                        "its offset_mapping. Fix: save the model with a fast tokenizer (tokenizer.json), e.g. "
                        "AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(folder)")
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    out = {}
    for split, part in splits.items():
        flat = _check_columns(part, split, question_column, context_column, answer_column, answer_start_column)

        def encode(batch: dict, indices: list[int], split=split, flat=flat) -> dict:
            questions, contexts = batch[question_column], batch[context_column]
            _check_texts(split, indices, questions, contexts, tokenizer, room)
            enc = tokenizer(questions, contexts, truncation="only_second", max_length=max_length,
                            return_offsets_mapping=True)
            starts, ends = [], []
            for i, row in enumerate(indices):
                where = f"data: split {split!r}, row {row}"
                start = batch[answer_start_column][i] if flat else None
                span = answer_span(batch[answer_column][i], start, contexts[i], where)
                s, e = char_span_to_tokens(enc["offset_mapping"][i], enc.sequence_ids(i), *(span or (0, 0)))
                starts.append(s)
                ends.append(e)
            return {**{k: enc[k] for k in _MODEL_INPUTS if k in enc}, "start_positions": starts,
                    "end_positions": ends}

        out[split] = part.map(encode, batched=True, with_indices=True, remove_columns=part.column_names,
                              desc=f"Tokenizing {split}")
    return type(splits)(out)


def _check_texts(split: str, indices: list[int], questions: list, contexts: list, tokenizer, room: int) -> None:
    """Each question and context is a non-empty text, and each question leaves the context a token."""
    for column, texts in (("question", questions), ("context", contexts)):
        for row, text in zip(indices, texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"data: split {split!r}, row {row}: the {column} is {text!r}, not a text. "
                                "Fix: fill it in or drop the row")
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for row, length in zip(indices, lengths):
        if length >= room:
            raise DataError(f"data: split {split!r}, row {row}: the question alone has {length} tokens, which leaves "
                            f"no room for the context within data.max_length. Fix: raise data.max_length above "
                            f"{length + (tokenizer.num_special_tokens_to_add(pair=True))}, or shorten the question")
