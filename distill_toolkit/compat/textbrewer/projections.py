"""TextBrewer's projections (``textbrewer.projections``), on :func:`distill_toolkit.projections.build_projection`.

Built alike (``nn.Linear`` with bias, weights ``N(0, 0.02)``, zero bias), so a projection built
under the same random state holds the same values as TextBrewer's.
"""

from __future__ import annotations

import torch
from torch import nn

from distill_toolkit.projections import build_projection

_BUILT_IN = {"ReLU": "relu", "Tanh": "tanh"}


def linear_projection(dim_in: int, dim_out: int) -> nn.Module:
    """A linear map ``dim_in -> dim_out`` (TextBrewer's ``'linear'``)."""
    return build_projection("linear", dim_in, dim_out)


def projection_with_activation(act_fn):
    """A builder ``(dim_in, dim_out) -> nn.Sequential(linear, act_fn)``.

    ``act_fn`` is the name of a ``torch.nn`` activation (``'ReLU'``, ``'Tanh'``, ``'GELU'`` ...) or an
    activation class, as in TextBrewer.
    """
    if isinstance(act_fn, str):
        if not hasattr(torch.nn.modules.activation, act_fn):
            raise ValueError(f"projection_with_activation: unknown activation {act_fn!r}. Fix: use the name of a "
                             "torch.nn activation, e.g. 'ReLU', 'Tanh', 'GELU'")
        name, make = act_fn, getattr(torch.nn.modules.activation, act_fn)
    else:
        name, make = getattr(act_fn, "__name__", ""), act_fn

    def projection(dim_in: int, dim_out: int) -> nn.Module:
        """The projection ``dim_in -> dim_out`` followed by the activation."""
        if name in _BUILT_IN:
            return build_projection(_BUILT_IN[name], dim_in, dim_out)
        return nn.Sequential(build_projection("linear", dim_in, dim_out), make())

    return projection
