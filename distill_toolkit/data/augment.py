"""Augmented transfer sets (Tang et al., 2019, "Distilling Task-Specific Knowledge from BERT into Simple
Neural Networks"): more unlabelled text for the teacher to label, made from the training texts.

Each augmented copy of an example is made word by word (words are whitespace-separated tokens):

1. every word draws ``u ~ U[0, 1)``: ``u < p_mask`` -> the mask token (``[MASK]``);
   ``p_mask <= u < p_mask + p_replace`` -> another word (see below); else it is kept;
2. then, with probability ``p_ngram``, only a random n-gram is kept: ``n ~ U{1 .. max_ngram}``
   (at most the number of words), its start uniform.

Replacement words need no part-of-speech tagger: ``replace_with: vocabulary`` draws uniformly from
the other words of the training split; ``replace_with: embedding`` takes the word's nearest other
training word in the teacher's input-embedding space (cosine of the mean of each word's word-piece
embeddings).

Reproducible: a copy's random draws come from ``numpy.random.default_rng([seed, row, copy])`` and
nothing else, so the same data and spec give the same texts on every machine and every run (and a
teacher cache built once stays valid). Layout: the ``N`` original rows first, then copy ``c`` (1-based)
of row ``r`` at ``N + r * factor + c - 1``. Augmented rows carry no gold label: after encoding, their
``labels`` are ``-100`` (a list of them for list labels), so only the teacher's outputs teach on them;
with a teacher cache each gets its own example id (its row).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
from datasets import Dataset, DatasetDict, concatenate_datasets

from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.config import DataSpec
from distill_toolkit.config.augment import AugmentSpec
from distill_toolkit.data.loading import DataError

__all__ = ["WordAugmenter", "augment_split", "embedding_neighbours", "encode_augmented", "training_vocabulary",
           "unlabel_rows"]


def training_vocabulary(texts: Sequence[str]) -> list[str]:
    """The distinct whitespace-separated words of ``texts``, sorted (so the order is the same everywhere)."""
    return sorted({word for text in texts for word in text.split()})


class WordAugmenter:
    """Makes augmented copies of texts by masking, word replacement and n-gram sampling (module docstring).

    Args:
        spec: the probabilities (:class:`~distill_toolkit.config.augment.AugmentSpec`).
        vocabulary: the words replacements are drawn from (the training split's words).
        mask_token: the string that stands for a masked word (the tokenizer's ``mask_token``); may be
            None only when ``spec.p_mask`` is 0.
        neighbours: ``{word: nearest other word}`` for ``replace_with: embedding``; words without an
            entry fall back to a uniform draw from ``vocabulary``.
    """

    def __init__(self, spec: AugmentSpec, vocabulary: Sequence[str], mask_token: Optional[str] = None,
                 neighbours: Optional[dict] = None):
        if spec.p_mask > 0 and not mask_token:
            raise DataError("data.augment.p_mask > 0 but the tokenizer has no mask token. Fix: set p_mask: 0, or use "
                            "a tokenizer with one (BERT-style)")
        if spec.p_replace > 0 and len(vocabulary) < 2:
            raise DataError("data.augment.p_replace > 0 needs at least two distinct training words to swap. Fix: set "
                            "p_replace: 0, or give more training text")
        self.spec, self.vocabulary = spec, list(vocabulary)
        self.mask_token, self.neighbours = mask_token, dict(neighbours or {})

    def _replacement(self, word: str, draw: int) -> str:
        if word in self.neighbours:
            return self.neighbours[word]
        other = self.vocabulary[draw % len(self.vocabulary)]
        return other if other != word else self.vocabulary[(draw + 1) % len(self.vocabulary)]

    def augment(self, text: str, rng: np.random.Generator) -> str:
        """One augmented copy of ``text``; the draws are made in a fixed order whatever their outcome."""
        words = text.split()
        u = rng.random(len(words))
        draws = rng.integers(0, max(len(self.vocabulary), 1), size=len(words))
        ngram, n, start = rng.random(), int(rng.integers(1, self.spec.max_ngram + 1)), rng.random()
        s = self.spec
        out = [self.mask_token if u[i] < s.p_mask else
               self._replacement(w, int(draws[i])) if u[i] < s.p_mask + s.p_replace else w
               for i, w in enumerate(words)]
        if ngram < s.p_ngram and out:
            n = min(n, len(out))
            first = int(start * (len(out) - n + 1))
            out = out[first:first + n]
        return " ".join(out)


def _check_text_columns(part: Dataset, columns: Sequence[str]) -> None:
    for column in columns:
        if column not in part.column_names:
            raise DataError(f"data.augment: the training split has no text column {column!r} (its columns are "
                            f"{part.column_names}). Fix: set data.text_column, or remove data.augment")
        bad = [i for i, value in enumerate(part[column]) if not isinstance(value, str)]
        if bad:
            raise DataError(f"data.augment works on texts, but column {column!r} row {bad[0]} holds a "
                            f"{type(part[column][bad[0]]).__name__} (e.g. the word lists of token classification). "
                            "Fix: remove data.augment for this task")


def augment_split(part: Dataset, spec: AugmentSpec, columns: Sequence[str], augmenter: WordAugmenter) -> Dataset:
    """``part`` followed by ``spec.factor`` augmented copies of each row (module docstring for the layout);
    only ``columns`` (the text columns) change, every other column is copied from the original row."""
    _check_text_columns(part, columns)
    rows = part.to_list()
    copies = []
    for r, row in enumerate(rows):
        for c in range(1, spec.factor + 1):
            rng = np.random.default_rng([spec.seed, r, c])
            copies.append({**row, **{col: augmenter.augment(row[col], rng) for col in columns}})
    if not copies:
        return part
    return concatenate_datasets([part, Dataset.from_list(copies, features=part.features)])


def _no_label(value):
    if isinstance(value, (list, tuple)):
        return [_no_label(v) for v in value]
    return type(value)(LABEL_PAD_ID) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def unlabel_rows(encoded: Dataset, start: int, column: str = "labels") -> Dataset:
    """``encoded`` with ``column`` set to ``-100`` (keeping its structure) in every row from ``start`` on."""
    if column not in encoded.column_names or start >= len(encoded):
        return encoded

    def clear(example: dict, index: int) -> dict:
        return {column: _no_label(example[column]) if index >= start else example[column]}

    return encoded.map(clear, with_indices=True, desc="Unlabelling augmented rows")


def embedding_neighbours(words: Sequence[str], tokenizer, embeddings: torch.Tensor,
                         chunk_size: int = 1024) -> dict[str, str]:
    """``{word: its nearest other word}`` by cosine similarity of word vectors in an input-embedding space.

    A word's vector is the mean of the embedding rows of its word pieces (``tokenizer`` without special
    tokens); words with no piece are left out. Ties go to the first word in ``words`` order.

    Args:
        words: the candidate words (the training vocabulary), also the words looked up.
        tokenizer: the tokenizer whose ids index ``embeddings`` (the teacher's).
        embeddings: ``(vocab_size, dim)``, e.g. ``teacher.get_input_embeddings().weight``.
    """
    pieces = tokenizer(list(words), add_special_tokens=False)["input_ids"]
    kept = [(w, ids) for w, ids in zip(words, pieces) if ids]
    if len(kept) < 2:
        return {}
    if max(max(ids) for _, ids in kept) >= embeddings.shape[0]:
        raise DataError(f"data.augment.replace_with: embedding: the tokenizer's ids reach beyond the teacher's "
                        f"{embeddings.shape[0]} input embeddings. Fix: use the teacher's tokenizer, or "
                        "replace_with: vocabulary")
    table = embeddings.detach().float().cpu()
    vectors = torch.stack([table[ids].mean(dim=0) for _, ids in kept])
    vectors = torch.nn.functional.normalize(vectors, dim=-1)
    nearest = []
    for begin in range(0, len(kept), chunk_size):
        sims = vectors[begin:begin + chunk_size] @ vectors.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + begin] = -float("inf")  # never the word itself
        nearest.extend(sims.argmax(dim=-1).tolist())
    return {kept[i][0]: kept[j][0] for i, j in enumerate(nearest)}


def encode_augmented(splits: DatasetDict, spec: DataSpec, encode: Callable[[DatasetDict], DatasetDict], *,
                     tokenizer, embeddings: Optional[torch.Tensor] = None) -> DatasetDict:
    """``encode(splits)`` with the training split grown by ``spec.augment`` (none: unchanged).

    The augmented rows (after the originals) get ``labels`` of ``-100``; ``dev`` and ``test`` are never
    augmented. ``embeddings`` (the teacher's input embeddings) are needed for ``replace_with: embedding``.
    """
    if spec.augment is None:
        return encode(splits)
    aug = AugmentSpec.from_dict(spec.augment, "data.augment.")
    aug.validate("data.augment")
    columns = [c for c in (spec.text_column, spec.text_pair_column) if c]
    train = splits["train"]
    _check_text_columns(train, columns)
    vocabulary = training_vocabulary([t for c in columns for t in train[c]])
    neighbours = None
    if aug.replace_with == "embedding":
        if embeddings is None:
            raise DataError("data.augment.replace_with: embedding needs the teacher's input embeddings, and there is "
                            "no teacher here. Fix: give a teacher, or use replace_with: vocabulary")
        neighbours = embedding_neighbours(vocabulary, tokenizer, embeddings)
    augmenter = WordAugmenter(aug, vocabulary, getattr(tokenizer, "mask_token", None), neighbours)
    grown = DatasetDict({**splits, "train": augment_split(train, aug, columns, augmenter)})
    encoded = encode(grown)
    if len(encoded["train"]) != len(grown["train"]):
        raise DataError(f"data.augment: the task encoded {len(grown['train'])} training texts into "
                        f"{len(encoded['train'])} rows, so the augmented rows cannot be told apart. Fix: remove "
                        "data.augment for this task")
    encoded["train"] = unlabel_rows(encoded["train"], len(train))
    return encoded
