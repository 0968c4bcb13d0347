"""Tokenization of the toolkit's datasets and dynamic-padding batch collation.

Tokenization truncates but never pads: :class:`PaddingCollator` pads each batch to
its own longest example, so short batches stay short.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ["PaddingCollator", "tokenize_classification", "tokenize_token_classification"]

LABEL_PAD_ID = -100  # ignored by torch.nn.CrossEntropyLoss and the toolkit's losses
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _column_names(dataset) -> list[str]:
    names = dataset.column_names
    if isinstance(names, dict):  # DatasetDict: {split: [columns]}
        return sorted({c for cols in names.values() for c in cols})
    return list(names)


def _require_columns(dataset, needed: Sequence[str], fix: str) -> None:
    names = dataset.column_names
    per_split = names.items() if isinstance(names, dict) else [("dataset", names)]
    for split, cols in per_split:
        missing = [c for c in needed if c not in cols]
        if missing:
            raise ValueError(f"{split} has no column(s) {missing} (columns: {cols}); {fix}")


def tokenize_classification(dataset_dict, tokenizer, max_length: int = 64,
                            text_column: str = "text", label_column: str = "label"):
    """Tokenize a text-classification ``DatasetDict`` (or ``Dataset``).

    Texts are truncated to ``max_length`` tokens, special tokens included, and left
    unpadded (pad per batch with :class:`PaddingCollator`).

    Returns:
        The same container type with columns ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (only if the tokenizer produces it) and ``labels`` (from
        ``label_column``); every other column is removed.
    """
    _require_columns(dataset_dict, [text_column, label_column],
                     "pass text_column=/label_column= naming the right columns.")

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        out = {key: enc[key] for key in _MODEL_INPUTS if key in enc}
        out["labels"] = batch[label_column]
        return out

    return dataset_dict.map(encode, batched=True,
                            remove_columns=_column_names(dataset_dict),
                            desc="Tokenizing")


def tokenize_token_classification(dataset_dict, tokenizer, max_length: int = 64,
                                  tokens_column: str = "tokens",
                                  tags_column: str = "ner_tags"):
    """Tokenize a pre-split token-classification ``DatasetDict`` (e.g. NER).

    Word pieces are aligned to words with the fast tokenizer's ``word_ids()``: the
    first sub-token of each word carries the word's tag; the word's other sub-tokens
    and the special tokens ([CLS], [SEP], ...) get ``-100`` so losses and metrics skip
    them. Words cut off by ``max_length`` truncation lose their tags; a word the
    tokenizer maps to no token at all is likewise skipped.

    Returns:
        The same container type with ``input_ids``, ``attention_mask``,
        ``token_type_ids`` (if produced) and ``labels`` (list of ints per example);
        every other column is removed.

    Raises:
        ValueError: the tokenizer is not a fast tokenizer (``word_ids()`` needs one).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; word-piece "
                         "alignment needs word_ids(). Load it with "
                         "AutoTokenizer.from_pretrained(..., use_fast=True).")
    _require_columns(dataset_dict, [tokens_column, tags_column],
                     "pass tokens_column=/tags_column= naming the right columns.")

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch[tokens_column], is_split_into_words=True,
                        truncation=True, max_length=max_length)
        labels = []
        for i, tags in enumerate(batch[tags_column]):
            aligned, previous = [], None
            for word in enc.word_ids(batch_index=i):
                if word is None or word == previous:
                    aligned.append(LABEL_PAD_ID)
                else:
                    aligned.append(int(tags[word]))
                previous = word
            labels.append(aligned)
        out = {key: enc[key] for key in _MODEL_INPUTS if key in enc}
        out["labels"] = labels
        return out

    return dataset_dict.map(encode, batched=True,
                            remove_columns=_column_names(dataset_dict),
                            desc="Tokenizing")


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy
        return value.tolist()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))  # bool is an int: collated as long


class PaddingCollator:
    """Collate a list of tokenized examples into a dict of tensors, padding
    dynamically to the longest sequence in the batch.

    Padding values: ``input_ids`` with the tokenizer's pad id; ``attention_mask``,
    ``token_type_ids`` and other integer sequences with 0; sequence ``labels`` with
    ``-100``. Scalar ``labels`` become a 1-D tensor. Integers become ``torch.long``,
    floats ``torch.float`` (e.g. regression or multi-label targets). Non-numeric
    fields (e.g. ``id`` or a ``task`` name) are passed through as lists.

    Args:
        tokenizer_or_pad_id: a tokenizer (its ``pad_token_id`` and ``padding_side``
            are used) or the pad id as an int (right padding).
        pad_to_multiple_of: round the padded length up to a multiple of this (tensor
            cores like multiples of 8).
        label_pad_id: pad value for sequence labels.
    """

    def __init__(self, tokenizer_or_pad_id, pad_to_multiple_of: int | None = None,
                 label_pad_id: int = LABEL_PAD_ID):
        if isinstance(tokenizer_or_pad_id, int) and not isinstance(tokenizer_or_pad_id, bool):
            pad_id, side = tokenizer_or_pad_id, "right"
        else:
            pad_id = getattr(tokenizer_or_pad_id, "pad_token_id", None)
            side = getattr(tokenizer_or_pad_id, "padding_side", "right") or "right"
            if pad_id is None:
                raise ValueError(
                    f"{type(tokenizer_or_pad_id).__name__} has no pad token; set one "
                    "(e.g. tokenizer.pad_token = tokenizer.eos_token) or pass the pad id "
                    "as an int.")
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be >= 1 or None, got {pad_to_multiple_of}")
        self.pad_token_id = int(pad_id)
        self.padding_side = side
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_id = label_pad_id

    def _pad_value(self, key: str) -> int:
        if key == "input_ids":
            return self.pad_token_id
        if key == "labels":
            return self.label_pad_id
        return 0

    def _pad(self, key: str, rows: list[list]) -> list[list]:
        length = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            length = -(-length // m) * m
        fill = self._pad_value(key)
        if self.padding_side == "left":
            return [[fill] * (length - len(r)) + list(r) for r in rows]
        return [list(r) + [fill] * (length - len(r)) for r in rows]

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not features:
            raise ValueError("PaddingCollator got an empty batch.")
        keys = list(features[0].keys())
        batch: dict[str, Any] = {}
        for key in keys:
            if any(key not in f for f in features):
                raise ValueError(f"Key {key!r} is missing from some examples of the batch; "
                                 "every example must have the same fields.")
            values = [_to_python(f[key]) for f in features]
            first = values[0]
            if isinstance(first, (list, tuple)):
                flat = [x for v in values for x in v]
                if not all(_is_number(x) for x in flat):
                    batch[key] = values  # nested or non-numeric: pass through
                    continue
                is_float = any(isinstance(x, float) for x in flat)
                padded = self._pad(key, values)
                batch[key] = torch.tensor(padded, dtype=torch.float if is_float else torch.long)
            elif _is_number(first) and all(_is_number(v) for v in values):
                is_float = any(isinstance(v, float) for v in values)
                batch[key] = torch.tensor(values, dtype=torch.float if is_float else torch.long)
            else:
                batch[key] = values
        return batch
