"""Causal-LM batches: plain text, or prompt + completion trained on the completion only.

Every batch here is right-padded and carries ``labels`` that are ``-100`` on padding and on the
prompt, so the ``causal_lm`` strategy (and any Hugging Face causal LM) learns the completion
tokens alone. Three producers share :func:`lm_batch`:

- :class:`CausalLMCollator` for data sets of text or prompt/completion pairs (text or token ids);
- :func:`generate_completions` + :func:`teacher_completions` for sequence-level KD (train on the
  teacher's own completions of a set of prompts; Kim & Rush, 2016);
- on-policy distillation (``causal_lm`` with ``strategy_options.lmbda``), which replaces a batch's
  completions by the student's samples inside the loop (Agarwal et al., 2024, "GKD").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional, Sequence, Union

import torch
from torch import nn

from distill_toolkit.features import unwrap

__all__ = [
    "CausalLMCollator",
    "LMDataError",
    "check_pad_token",
    "generate_completions",
    "lm_batch",
    "max_positions",
    "perplexity",
    "prompts_of",
    "teacher_completions",
]

LABEL_PAD_ID = -100
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


def max_positions(model: nn.Module) -> Optional[int]:
    """The longest sequence ``model`` accepts (``max_position_embeddings`` / ``n_positions``), or None."""
    config = getattr(unwrap(model), "config", None)
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


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


def _eos_ids(model: nn.Module, eos_token_id) -> list[int]:
    if eos_token_id is None:
        config = getattr(model, "generation_config", None) or getattr(model, "config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    return [int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])]


@torch.no_grad()
def generate_completions(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                         temperature: float = 0.0, pad_token_id: int, eos_token_id: Union[int, list, None] = None,
                         batch_size: Optional[int] = None) -> list[list[int]]:
    """The new tokens ``model`` writes after each prompt: greedy (``temperature == 0``) or sampled.

    Prompts are left-padded for ``generate``; each completion ends with its first EOS (kept, so the
    student learns to stop) and never includes the padding ``generate`` adds after it. The model is
    unwrapped (DDP, DeepSpeed), put in eval mode for sampling and given back in the mode it was in.

    Args:
        prompts: token ids per prompt (no padding).
        temperature: 0 for greedy decoding, else the sampling temperature (pure sampling: no top-k/top-p).
        eos_token_id: stop token(s); default the model's ``generation_config``/``config``.
        batch_size: prompts per ``generate`` call (default: all at once).
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise LMDataError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    model = unwrap(model)
    eos = _eos_ids(model, eos_token_id)
    sample = temperature > 0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, pad_token_id=int(pad_token_id),
                              eos_token_id=eos or None, **({"temperature": float(temperature), "top_k": 0,
                                                           "top_p": 1.0} if sample else {}))
    params = list(model.parameters())
    device = params[0].device
    synced = any(hasattr(p, "ds_id") for p in params)  # ZeRO-3: every rank must run as many forwards
    was_training = model.training
    model.eval()
    out: list[list[int]] = []
    step = batch_size or max(1, len(prompts))
    try:
        for start in range(0, len(prompts), step):
            chunk = [list(p) for p in prompts[start:start + step]]
            width = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), width), int(pad_token_id), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(chunk):
                ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[row, width - len(p):] = 1
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config, synced_gpus=synced)
            for row in generated[:, width:].tolist():
                stop = next((i for i, t in enumerate(row) if t in eos), None)
                out.append(row if stop is None else row[:stop + 1])
    finally:
        model.train(was_training)
    return out


def teacher_completions(teacher: nn.Module, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 64,
                        temperature: float = 0.0, samples_per_prompt: int = 1, batch_size: int = 16,
                        max_prompt_length: Optional[int] = None, seed: int = 0):
    """Sequence-level KD data: the teacher's completions of ``prompts`` as a ``datasets.Dataset``.

    Columns: ``prompt`` and ``completion`` (text, for reading) and ``prompt_ids`` /
    ``completion_ids`` (the exact tokens, which :class:`CausalLMCollator` trains on with the
    prompt masked). Greedy by default; ``temperature > 0`` samples ``samples_per_prompt``
    completions per prompt (seeded by ``seed``).
    """
    import datasets

    pad = check_pad_token(tokenizer)
    if temperature <= 0 and samples_per_prompt != 1:
        raise LMDataError("samples_per_prompt > 1 needs sampling: greedy decoding gives the same completion every "
                          "time. Fix: set temperature > 0 (e.g. 1.0) or samples_per_prompt: 1")
    encoded = [tokenizer(p, truncation=max_prompt_length is not None, max_length=max_prompt_length)["input_ids"]
               for p in prompts]
    empty = [i for i, ids in enumerate(encoded) if not ids]
    if empty:
        raise LMDataError(f"prompts {empty[:5]} are empty after tokenisation; the teacher needs a token to continue")
    limit = max_positions(teacher)
    longest = max(len(ids) for ids in encoded) + max_new_tokens
    if limit is not None and longest > limit:
        raise LMDataError(f"prompt + max_new_tokens reach {longest} tokens but the teacher accepts at most {limit} "
                          "(max_position_embeddings). Fix: lower max_new_tokens or max_prompt_length")
    torch.manual_seed(seed)
    rows = {"prompt": [], "completion": [], "prompt_ids": [], "completion_ids": []}
    for _ in range(samples_per_prompt):
        completions = generate_completions(teacher, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                                           pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                                           batch_size=batch_size)
        for text, ids, completion in zip(prompts, encoded, completions):
            rows["prompt"].append(text)
            rows["completion"].append(tokenizer.decode(completion, skip_special_tokens=True))
            rows["prompt_ids"].append(list(ids))
            rows["completion_ids"].append(completion)
    return datasets.Dataset.from_dict(rows)


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


@torch.no_grad()
def perplexity(model: nn.Module, examples: Sequence, collate_fn, batch_size: int = 16) -> dict:
    """``{"perplexity", "tokens"}`` of ``model`` over every labelled next token of ``examples``."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate_fn([examples[i] for i in range(start, min(len(examples), start + batch_size))])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits[:, :-1]
            targets = batch["labels"][:, 1:].to(device)
            keep = targets != LABEL_PAD_ID
            nll += float(torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum"))
            tokens += int(keep.sum())
    finally:
        model.train(was_training)
    return {"perplexity": math.exp(nll / tokens) if tokens else float("nan"), "tokens": tokens}
