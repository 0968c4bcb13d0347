"""Gradient (activation) checkpointing of the student: ``training.gradient_checkpointing: true``.

The student's blocks keep no activations for the backward pass and recompute them instead, through
transformers' own ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before 5.x)
in its non-reentrant form (``use_reentrant:
False``): the same loss and gradients as without it, random streams (dropout) replayed, and no
need for any input to require a gradient. Reentrant checkpointing would need one; LoRA students
(frozen embeddings) also get ``enable_input_require_grads`` so either form sees a gradient path.
"""

from __future__ import annotations

from torch import nn

from distill_toolkit.config import ConfigError
from distill_toolkit.lora import base_model, is_lora

FIELD = "training.gradient_checkpointing"


def enable_gradient_checkpointing(student: nn.Module) -> nn.Module:
    """Turn on non-reentrant gradient checkpointing in ``student`` (a transformers model, or a ``peft``
    model around one); a :class:`ConfigError` naming ``training.gradient_checkpointing`` when it cannot."""
    model = base_model(student)
    if not getattr(model, "supports_gradient_checkpointing", False) or \
            not hasattr(model, "gradient_checkpointing_enable"):
        raise ConfigError(FIELD, f"the student ({type(model).__name__}) does not support gradient checkpointing",
                          "remove it, or use a transformers model whose class supports it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if is_lora(student) and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    return student
