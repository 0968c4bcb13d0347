"""Masked-LM data: texts tokenized once, masked per batch by a seeded, reproducible collator.

The mask of an example is a pure function of ``(seed, its token ids)``: :class:`MaskedLMCollator`
draws it from a ``torch.Generator`` seeded by a hash of the two, never from the global RNG. So

- the teacher and the student see the same masked tokens (they share the batch);
- every epoch, every rank and a resumed run mask an example the same way (static masking, as in
  BERT's original pre-processing), whatever the shuffling, the number of data-loader workers or
  the RNG state a checkpoint restored;
- a teacher cache built once (``cache-teacher``) holds the teacher's outputs on exactly the
  masked inputs the student trains on, and evaluation scores the same masks at every step.

Identical texts get identical masks; set ``data.seed`` to draw another set. The rule is BERT's:
of the tokens that may be chosen (not special, not padding), ``round(mlm_probability * n)`` (at
least one) are chosen; of those 80% become ``[MASK]``, 10% a random non-special token and 10% stay
as they are. ``labels`` hold the original token at the chosen positions and ``-100`` elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.data.collators import PaddingCollator
from distill_toolkit.data.loading import DataError

__all__ = ["MaskedLMCollator", "example_generator", "mask_tokens", "tokenize_texts"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize_texts(splits, tokenizer, *, max_length: int, text_column: str = "text"):
    """Each split's ``text_column`` tokenized (special tokens added, truncated to ``max_length``, unpadded).

    Raises:
        DataError: a split lacks the column, or a row's text is empty (naming split, row and fix).
    """
    out = {}
    for split, part in splits.items():
        if text_column not in part.column_names:
            raise DataError(f"data: split {split!r} has no column {text_column!r} (data.text_column); its columns "
                            f"are {part.column_names}. Fix: set data.text_column to the column holding the text")
        empty = [row for row, text in enumerate(part[text_column]) if not isinstance(text, str) or not text.strip()]
        if empty:
            raise DataError(f"data: split {split!r}, row {empty[0]}: column {text_column!r} has no text "
                            f"({len(empty)} row(s) like it). Fix: fill in or drop those rows")

        def encode(batch: dict) -> dict:
            enc = tokenizer(batch[text_column], truncation=True, max_length=max_length)
            return {k: enc[k] for k in _MODEL_INPUTS if k in enc}

        out[split] = part.map(encode, batched=True, remove_columns=part.column_names, desc=f"Tokenizing {split}")
    return type(splits)(out)


def example_generator(token_ids: Sequence[int], seed: int) -> torch.Generator:
    """A CPU generator seeded by a hash (BLAKE2b) of ``seed`` and the example's ``token_ids`` (its content):
    the same example and seed give the same draws in any process, batch or epoch."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(int(seed).to_bytes(8, "little", signed=True))
    digest.update(np.asarray(list(token_ids), dtype="<i8").tobytes())  # little-endian on every machine
    return torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1)


def mask_tokens(token_ids: Sequence[int], eligible: Sequence[bool], *, mask_token_id: int,
                replacement_ids: torch.Tensor, generator: torch.Generator, mlm_probability: float = 0.15,
                mask_ratio: float = 0.8, random_ratio: float = 0.1) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one example masked BERT-style.

    ``round(mlm_probability * n)`` of the ``n`` eligible positions (at least one, if any) are chosen
    with ``generator``; each becomes ``mask_token_id`` with probability ``mask_ratio``, a token drawn
    from ``replacement_ids`` with probability ``random_ratio``, else stays. ``labels`` are the original
    ids at the chosen positions, ``-100`` elsewhere.
    """
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    labels = torch.full_like(ids, LABEL_PAD_ID)
    candidates = torch.as_tensor(list(eligible), dtype=torch.bool).nonzero().squeeze(-1)
    count = min(len(candidates), max(1, round(mlm_probability * len(candidates)))) if len(candidates) else 0
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[:count]]
    labels[chosen] = ids[chosen]
    action = torch.rand(count, generator=generator)
    random_tokens = replacement_ids[torch.randint(len(replacement_ids), (count,), generator=generator)]
    masked = ids.clone()
    masked[chosen[action < mask_ratio]] = mask_token_id
    swap = (action >= mask_ratio) & (action < mask_ratio + random_ratio)
    masked[chosen[swap]] = random_tokens[swap]
    return masked.tolist(), labels.tolist()


class MaskedLMCollator:
    """Batches for masked-LM training from tokenized examples (``input_ids`` ...), masked reproducibly.

    Each example is masked by :func:`mask_tokens` with a generator from :func:`example_generator`
    (``seed`` and its token ids), then the batch is padded on the right (``labels`` with ``-100``).
    Never chosen: the tokenizer's special tokens (``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ``[MASK]``
    ...), positions whose ``attention_mask`` is 0, and padding. An ``id`` field is passed through.

    Args:
        tokenizer: needs a mask token and a pad token (BERT-style tokenizers have both).
        mlm_probability: the share of eligible tokens chosen (``data.mlm_probability``).
        seed: mixed into every example's generator (``data.seed``); another seed, other masks.
        mask_ratio, random_ratio: of the chosen tokens, the shares replaced by ``[MASK]`` and by a
            random non-special token (the rest stay as they are).
    """

    def __init__(self, tokenizer, mlm_probability: float = 0.15, seed: int = 0, mask_ratio: float = 0.8,
                 random_ratio: float = 0.1):
        if getattr(tokenizer, "mask_token_id", None) is None:
            raise DataError(f"{type(tokenizer).__name__} has no mask token, so tokens cannot be masked. Fix: use a "
                            "masked-LM tokenizer (BERT, RoBERTa ...), or set tokenizer.mask_token")
        if not 0 < mlm_probability <= 1 or not 0 <= mask_ratio <= 1 or not 0 <= random_ratio <= 1 - mask_ratio:
            raise ValueError(f"need 0 < mlm_probability <= 1 and mask_ratio + random_ratio <= 1, got "
                             f"{mlm_probability}, {mask_ratio}, {random_ratio}")
        self.padding = PaddingCollator(tokenizer)
        self.padding.padding_side = "right"
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.special_ids = frozenset(int(i) for i in tokenizer.all_special_ids)
        self.replacement_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in self.special_ids])
        if len(self.replacement_ids) == 0:
            raise DataError("the tokenizer's vocabulary holds only special tokens. Fix: use a real vocabulary")
        self.mlm_probability, self.seed = float(mlm_probability), int(seed)
        self.mask_ratio, self.random_ratio = float(mask_ratio), float(random_ratio)

    def fingerprint(self) -> dict:
        """What decides the batches (e.g. to compare with a teacher cache's record)."""
        return {"collator": type(self).__name__, "masking": "bert-static-v1", "mlm_probability": self.mlm_probability,
                "seed": self.seed,
                "mask_ratio": self.mask_ratio, "random_ratio": self.random_ratio}

    def mask(self, example: Mapping) -> dict:
        """One example with masked ``input_ids`` and its ``labels``."""
        if not isinstance(example, Mapping) or "input_ids" not in example:
            raise DataError("a masked-LM example must be a dict with `input_ids` (tokenized text); got "
                            f"{type(example).__name__}. Fix: tokenize the texts first (tokenize_texts)")
        ids = [int(t) for t in _as_list(example["input_ids"])]
        attention = [int(a) for a in _as_list(example.get("attention_mask", [1] * len(ids)))]
        eligible = [a == 1 and t not in self.special_ids for t, a in zip(ids, attention)]
        masked, labels = mask_tokens(ids, eligible, mask_token_id=self.mask_token_id,
                                     replacement_ids=self.replacement_ids, generator=example_generator(ids, self.seed),
                                     mlm_probability=self.mlm_probability, mask_ratio=self.mask_ratio,
                                     random_ratio=self.random_ratio)
        return {**{k: v for k, v in example.items() if k != "labels"}, "input_ids": masked, "labels": labels}

    def __call__(self, examples: Sequence[Mapping]) -> dict:
        return self.padding([self.mask(e) for e in examples])


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") else list(value)
