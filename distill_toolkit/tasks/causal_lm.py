"""Causal language modelling: next-token prediction, scored by perplexity.

Position ``t`` predicts token ``t + 1``; positions whose next token is padding or carries a
``-100`` label (a prompt) do not count. At evaluation each counted position's prediction is
the negative log-likelihood of the true next token, and the metric is ``exp`` of their mean.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from distill_toolkit.batch import LABEL_PAD_ID
from distill_toolkit.config import DataSpec
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.features import ModelView, unwrap
from distill_toolkit.tasks.base import Task, _base_view, _logits, register_task


def next_token_mask(inputs: dict) -> Optional[torch.Tensor]:
    """``(B, L-1)``: which positions predict a real next token (not padding, not ``-100``)."""
    mask = inputs["attention_mask"][:, 1:].bool() if inputs.get("attention_mask") is not None else None
    labels = inputs.get("labels")
    if labels is not None:
        shifted = labels[:, 1:] != LABEL_PAD_ID
        mask = shifted if mask is None else mask & shifted
    return mask


@register_task("causal_lm")
class CausalLM(Task):
    """Decoder LMs (``AutoModelForCausalLM``: Llama, GPT-2, ...); data: text or prompt + completion."""

    auto_class = "AutoModelForCausalLM"
    metric_name = "perplexity"
    greater_is_better = False

    def read_outputs(self, outputs: Any, inputs: dict) -> ModelView:
        view = _base_view(outputs, inputs)
        view.logits, view.logits_mask = [_logits(outputs)[:, :-1]], next_token_mask(inputs)
        return view

    def predictions(self, view: ModelView) -> torch.Tensor:
        """Per position, the negative log-likelihood of the true next token."""
        logits = view.logits[0].float()
        targets = view.labels[:, 1:].clamp(min=0)  # -100 positions are scored by gold() as not counted
        return -torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def gold(self, inputs: dict) -> Optional[torch.Tensor]:
        labels = inputs.get("labels", inputs["input_ids"])[:, 1:]
        mask = inputs.get("attention_mask")
        return labels if mask is None else labels.masked_fill(mask[:, 1:] == 0, LABEL_PAD_ID)

    def metric(self, predictions, labels, label_names: Optional[Sequence[str]] = None) -> dict:
        keep = np.asarray(labels) != LABEL_PAD_ID
        tokens = int(keep.sum())
        nll = float(np.asarray(predictions, dtype=np.float64)[keep].sum())
        return {"perplexity": math.exp(nll / tokens) if tokens else float("nan"), "tokens": tokens}

    def eval_overrides(self) -> dict:
        return {"use_cache": False}

    def label_names(self, splits, spec: DataSpec) -> None:
        return None

    def encode(self, splits, tokenizer, spec: DataSpec, labels=None):
        """Text splits stay raw: :meth:`collator` tokenizes per batch."""
        return splits

    def collator(self, tokenizer, spec: DataSpec):
        return CausalLMCollator(tokenizer, max_length=spec.max_length, text_column=spec.text_column,
                                prompt_column=spec.prompt_column, completion_column=spec.text_column)


@torch.no_grad()
def perplexity(model: nn.Module, examples: Sequence, collate_fn, batch_size: int = 16) -> dict:
    """``{"perplexity", "tokens"}`` of ``model`` over every labelled next token of ``examples``."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    task = CausalLM()
    preds, golds = [], []
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate_fn([examples[i] for i in range(start, min(len(examples), start + batch_size))])
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
            view = task.read_outputs(model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]),
                                     inputs)
            preds.append(task.predictions(view).flatten().cpu().numpy())
            golds.append(task.gold(inputs).flatten().cpu().numpy())
    finally:
        model.train(was_training)
    return task.metric(np.concatenate(preds), np.concatenate(golds))
