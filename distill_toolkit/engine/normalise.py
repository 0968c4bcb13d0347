"""Losses summed over items (tokens) made means over every item of an accumulation window on every rank.

A strategy whose ``loss_items(batch)`` is not None returns a sum; the loop divides it by the items of the
whole window on all ranks, so uneven micro-batches equal one big batch (see docs/design.md, The loop).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import nn


def deepspeed_scale(accelerator: Accelerator, items: int, strategy: str) -> float:
    """Under DeepSpeed, the factor that makes a summed loss the mean over the tokens of all ranks.

    DeepSpeed's engine averages gradients over ranks and steps inside ``backward``, so the
    gradients cannot be rescaled afterwards; with one micro-batch per step the global token
    count is known before backward (all-reduced here), with several it is not.
    """
    acc = accelerator
    if acc.gradient_accumulation_steps > 1:
        raise NotImplementedError(
            "training.gradient_accumulation_steps > 1: a per-token loss (strategy "
            f"{strategy!r}) cannot be normalised over an accumulation window under DeepSpeed, "
            "whose engine steps inside backward. Fix: set gradient_accumulation_steps: 1 with a larger "
            "batch_size, or launch DDP (launch/ddp.yaml, with teacher_placement: fsdp to shard the teacher)")
    total = torch.tensor(float(items), device=acc.device)
    if acc.num_processes > 1:
        total = acc.reduce(total, "sum")
    return acc.num_processes / max(float(total), 1.0)


def normalise_gradients(accelerator: Accelerator, module: nn.Module, window_items: int) -> None:
    """Turn summed-loss gradients into the mean over every item of the window on every rank.

    Accelerate divided each micro-batch's loss by the accumulation steps and DDP averaged over
    ranks, so the gradients are rescaled by ``steps * ranks / total items``.
    """
    acc = accelerator
    total = torch.tensor(float(window_items), device=acc.device)
    if acc.num_processes > 1:
        total = acc.reduce(total, "sum")
    factor = acc.gradient_accumulation_steps * acc.num_processes / max(float(total), 1.0)
    for param in module.parameters():
        if param.grad is not None:
            param.grad.mul_(factor)
