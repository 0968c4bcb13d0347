"""Two tokenisations of one text, aligned: spans both cover exactly, and the vocabulary they share.

Spans (:func:`offset_spans`): walking both token lists by their character *ends*, a span closes as
soon as the last student token and the last teacher token end at the same character. Tokens of one
word then form one span (``play ##ing`` | ``Ġplaying``), and single tokens with equal ends pair
one to one. Leading spaces do not matter (a byte-level BPE token ``Ġthe`` starts one character
before WordPiece's ``the``; both end at the same place). Zero-width tokens (special tokens such as
``[CLS]``) belong to no span. A span that does not close before either list runs out (e.g. one
tokenizer's ``max_length`` cut the text) is dropped, with everything after it.

Shared vocabulary (:func:`shared_vocabulary`): token pairs whose *surface strings* are equal, the
string being what the token adds to decoded text: a byte-level BPE token's bytes (``Ġ`` a space), a
SentencePiece piece with ``▁`` as a space, a WordPiece word-start token with a leading space (``##``
continuations without it; punctuation without it too, as the WordPiece decoder joins it).
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from typing import Optional, Sequence

import torch

__all__ = ["offset_spans", "shared_vocabulary", "token_strings"]


def offset_spans(offsets_S: Sequence[tuple[int, int]], offsets_T: Sequence[tuple[int, int]]) -> tuple[list, list]:
    """``(spans_S, spans_T)``: each token's span id (``-1``: none) for two offset lists of one text."""
    spans_S, spans_T = [-1] * len(offsets_S), [-1] * len(offsets_T)
    real_S = [i for i, (a, b) in enumerate(offsets_S) if b > a]
    real_T = [j for j, (a, b) in enumerate(offsets_T) if b > a]
    i = j = span = 0
    while i < len(real_S) and j < len(real_T):
        group_S, group_T = [real_S[i]], [real_T[j]]
        end_S, end_T = offsets_S[real_S[i]][1], offsets_T[real_T[j]][1]
        i, j = i + 1, j + 1
        while end_S != end_T:
            if end_S < end_T and i < len(real_S):
                group_S.append(real_S[i])
                end_S, i = max(end_S, offsets_S[real_S[i]][1]), i + 1
            elif end_T < end_S and j < len(real_T):
                group_T.append(real_T[j])
                end_T, j = max(end_T, offsets_T[real_T[j]][1]), j + 1
            else:  # one side ran out before the span closed
                return spans_S, spans_T
        # tokens ending inside the span (overlapping offsets of multi-byte characters) join it
        while i < len(real_S) and offsets_S[real_S[i]][1] <= end_S:
            group_S.append(real_S[i])
            i += 1
        while j < len(real_T) and offsets_T[real_T[j]][1] <= end_T:
            group_T.append(real_T[j])
            j += 1
        for k in group_S:
            spans_S[k] = span
        for k in group_T:
            spans_T[k] = span
        span += 1
    return spans_S, spans_T


@lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def _model_kind(tokenizer) -> tuple[str, str]:
    """``(kind, continuation prefix)`` of a fast tokenizer's model: ``wordpiece``, ``bytelevel`` or ``other``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return "other", ""
    model = type(backend.model).__name__
    if model == "WordPiece":
        return "wordpiece", getattr(backend.model, "continuing_subword_prefix", "##") or "##"
    if "ByteLevel" in repr(backend.pre_tokenizer) or "ByteLevel" in repr(backend.decoder):
        return "bytelevel", ""
    return "other", ""


def _surface(token: str, kind: str, prefix: str) -> Optional[str]:
    if kind == "wordpiece":
        if token.startswith(prefix):
            return token[len(prefix):] or None
        return token if unicodedata.category(token[0]).startswith("P") else " " + token
    if kind == "bytelevel":
        decoder = _byte_decoder()
        if any(c not in decoder for c in token):
            return None
        try:
            return bytes(decoder[c] for c in token).decode("utf-8")
        except UnicodeDecodeError:  # a piece of a multi-byte character
            return None
    return token.replace("▁", " ")


def token_strings(tokenizer) -> list[Optional[str]]:
    """Per token id, the string the token adds to decoded text (``None``: special or not a whole character)."""
    kind, prefix = _model_kind(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = tokenizer.get_vocab()
    out: list[Optional[str]] = [None] * (max(vocab.values()) + 1 if vocab else 0)
    for token, index in vocab.items():
        if index not in special and token:
            out[index] = _surface(token, kind, prefix)
    return out


def shared_vocabulary(student_tokenizer, teacher_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids_S, ids_T)``: the token ids of both vocabularies whose strings are equal, paired by position
    (where one side has several ids for one string, the lowest id)."""
    teacher: dict = {}
    for index, string in enumerate(token_strings(teacher_tokenizer)):
        if string is not None:
            teacher.setdefault(string, index)
    ids_S, ids_T, seen = [], [], set()
    for index, string in enumerate(token_strings(student_tokenizer)):
        if string is not None and string in teacher and string not in seen:
            seen.add(string)
            ids_S.append(index)
            ids_T.append(teacher[string])
    return torch.tensor(ids_S, dtype=torch.long), torch.tensor(ids_T, dtype=torch.long)
