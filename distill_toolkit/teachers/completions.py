"""Sequence-level KD data: the teacher's own completions of a set of prompts (Kim & Rush, 2016)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from distill_toolkit.data.lm import LMDataError, check_pad_token
from distill_toolkit.features import max_positions
from distill_toolkit.strategies.generation import generate_completions


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


