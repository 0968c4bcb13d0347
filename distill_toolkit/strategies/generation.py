"""The student's own samples, for on-policy distillation (GKD): greedy or sampled completions of prompts.

Used inside the loop by the ``causal_lm`` strategy (``strategy_options.lmbda``), and by
:func:`distill_toolkit.teachers.teacher_completions` to write sequence-level KD data.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn
from transformers import GenerationConfig

from distill_toolkit.data.lm import LMDataError
from distill_toolkit.features import unwrap


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


