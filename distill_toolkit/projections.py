"""Learnable maps between student and teacher hidden sizes (TextBrewer's ``proj``)."""

from __future__ import annotations

from torch import nn

PROJECTIONS = ("linear", "relu", "tanh")

_ACTIVATIONS = {"linear": None, "relu": nn.ReLU, "tanh": nn.Tanh}


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    # Same initialisation as TextBrewer (and BERT): N(0, 0.02) weights, zero bias.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_projection(kind: str, dim_in: int, dim_out: int) -> nn.Module:
    """Build a projection from ``dim_in`` (usually the student's size) to ``dim_out``.

    Args:
        kind: ``"linear"`` (an ``nn.Linear`` with bias), ``"relu"`` or ``"tanh"`` (the linear
            layer followed by that activation, as an ``nn.Sequential``).
        dim_in, dim_out: feature sizes (positive ints).
    """
    if kind not in _ACTIVATIONS:
        raise ValueError(f"unknown projection {kind!r}; use one of {', '.join(PROJECTIONS)} (proj: [kind, dim_S, dim_T]).")
    for name, dim in (("dim_in", dim_in), ("dim_out", dim_out)):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"build_projection: {name} must be a positive int, got {dim!r}.")
    linear = nn.Linear(dim_in, dim_out, bias=True)
    activation = _ACTIVATIONS[kind]
    module = linear if activation is None else nn.Sequential(linear, activation())
    module.apply(_init_weights)
    return module
