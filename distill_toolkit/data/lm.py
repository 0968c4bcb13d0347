"""Causal-LM batches: plain text, or prompt + completion trained on the completion only.

Every batch here is right-padded and carries ``labels`` that are ``-100`` on padding and on the
prompt, so the ``causal_lm`` strategy (and any Hugging Face causal LM) learns the completion
tokens alone. Three producers share :func:`lm_batch`:

- :class:`CausalLMCollator` for data sets of text or prompt/completion pairs (text or token ids);
- :func:`distill_toolkit.teachers.teacher_completions` for sequence-level KD (train on the
  teacher's own completions of a set of prompts; Kim & Rush, 2016);
- on-policy distillation (``causal_lm`` with ``strategy_options.lmbda``), which replaces a batch's
  completions by the student's samples inside the loop (Agarwal et al., 2024, "GKD").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional, Sequence

import torch

from distill_toolkit.batch import LABEL_PAD_ID

__all__ = ["CausalLMCollator", "LMDataError", "check_pad_token", "lm_batch", "prompts_of"]

PAD_FIX = "set tokenizer.pad_token = tokenizer.eos_token (padding is masked out of every loss)"


class LMDataError(ValueError):
    """A causal-LM batch cannot be built or generated from; the message names the cause and the fix."""


def check_pad_token(tokenizer) -> int:
    """The tokenizer's pad id; a clear error when it has none (most causal-LM tokenizers)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise LMDataError(f"{type(tokenizer).__name__} has no pad token, so examples of different lengths cannot "
                          f"share a batch. Fix: {PAD_FIX}")
    return int(pad)


def lm_batch(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_token_id: int,
             max_length: Optional[int] = None) -> dict:
    """A right-padded batch from ``(prompt_ids, completion_ids)`` pairs.

    ``labels`` hold the completion tokens and ``-100`` on the prompt and the padding; sequences
    longer than ``max_length`` lose their last tokens. An empty prompt trains on the whole text.
    """
    rows = []
    for prompt, completion in pairs:
        ids = [int(t) for t in prompt] + [int(t) for t in completion]
        if max_length is not None:
            ids = ids[:max_length]
        rows.append((ids, min(len(prompt), len(ids))))
    width = max([1] + [len(ids) for ids, _ in rows])
    input_ids = torch.full((len(rows), width), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, LABEL_PAD_ID)
    for row, (ids, n_prompt) in enumerate(rows):
        if ids:
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention[row, :len(ids)] = 1
            labels[row, n_prompt:len(ids)] = torch.tensor(ids[n_prompt:], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def prompts_of(inputs: Mapping) -> list[list[int]]:
    """Each row's prompt: its real tokens before the first one with a label (``-100`` marks the prompt).

    Raises:
        LMDataError: the batch has no ``labels`` or a row has no prompt to continue.
    """
    if "labels" not in inputs:
        raise LMDataError("on-policy generation continues each example's prompt, marked by labels -100, but the "
                          "batch has no `labels`. Fix: batch prompt/completion examples with CausalLMCollator")
    ids, labels = inputs["input_ids"], inputs["labels"]
    mask = inputs.get("attention_mask", torch.ones_like(ids)).bool()
    prompts = []
    for row in range(ids.shape[0]):
        real = mask[row].nonzero().squeeze(-1)
        counted = (labels[row, real] != LABEL_PAD_ID).nonzero()
        length = int(counted[0]) if len(counted) else len(real)
        if length == 0:
            raise LMDataError(
                f"row {row} of the batch has no prompt (its first token already has a label), so there is nothing "
                "for the student to continue on-policy. Fix: give examples a prompt (prompt/completion pairs in "
                "CausalLMCollator, where the prompt gets labels -100), or set strategy_options.lmbda: 0")
        prompts.append(ids[row, real[:length]].tolist())
    return prompts


class CausalLMCollator:
    """Batches for next-token training from raw examples, tokenised per batch.

    An example is a string, or a dict with ``text_column`` (the whole text is learnt), or with
    ``prompt_column`` and ``completion_column`` (only the completion is learnt: the prompt's labels
    are ``-100``), or with ``prompt_ids`` and ``completion_ids`` (token ids, e.g. from
    :func:`teacher_completions`). An ``id`` field is passed through (teacher caches read it).

    Args:
        tokenizer: needs a pad token (``tokenizer.pad_token = tokenizer.eos_token`` for most LMs).
        max_length: tokens per example at most (prompt + completion); longer ones lose their end.
    """

    def __init__(self, tokenizer, max_length: int = 128, text_column: str = "text",
                 prompt_column: Optional[str] = "prompt", completion_column: str = "completion"):
        self.tokenizer = tokenizer
        self.pad_token_id = check_pad_token(tokenizer)
        if not isinstance(max_length, int) or max_length < 2:
            raise LMDataError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.max_length = max_length
        self.text_column, self.prompt_column, self.completion_column = text_column, prompt_column, completion_column

    def fingerprint(self) -> dict:
        return {"collator": type(self).__name__, "max_length": self.max_length, "text_column": self.text_column,
                "prompt_column": self.prompt_column, "completion_column": self.completion_column}

    def _pair(self, example) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        if isinstance(example, str):
            return [], tok(example)["input_ids"]
        if not isinstance(example, Mapping):
            raise LMDataError(f"an example must be a string or a dict, got {type(example).__name__}")
        if "prompt_ids" in example and "completion_ids" in example:
            return list(example["prompt_ids"]), list(example["completion_ids"])
        if self.prompt_column is not None and self.prompt_column in example and self.completion_column in example:
            prompt = tok(example[self.prompt_column])["input_ids"]
            return prompt, tok(example[self.completion_column], add_special_tokens=False)["input_ids"]
        if self.text_column in example:
            return [], tok(example[self.text_column])["input_ids"]
        raise LMDataError(f"an example has none of the fields {self.text_column!r}, ({self.prompt_column!r}, "
                          f"{self.completion_column!r}) or (prompt_ids, completion_ids); it has {sorted(example)}. "
                          "Fix: name the columns with text_column= / prompt_column= / completion_column=")

    def __call__(self, examples: Sequence) -> dict:
        batch = lm_batch([self._pair(e) for e in examples], self.pad_token_id, self.max_length)
        if examples and all(isinstance(e, Mapping) and "id" in e for e in examples):
            batch["id"] = [e["id"] for e in examples]
        return batch
