"""Projections between hidden sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import textbrewer.presets as tb_presets
from distill_toolkit.projections import PROJECTIONS, build_projection


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_shapes_and_structure_match_textbrewer(kind):
    proj = build_projection(kind, 16, 24)
    x = torch.randn(2, 5, 16)
    assert proj(x).shape == (2, 5, 24)
    tb = tb_presets.PROJ_MAP[kind](16, 24)
    assert [type(m) for m in proj.modules()] == [type(m) for m in tb.modules()]
    assert [p.shape for p in proj.parameters()] == [p.shape for p in tb.parameters()]


@pytest.mark.parametrize("kind,act", [("linear", lambda z: z), ("relu", torch.relu), ("tanh", torch.tanh)])
def test_activation(kind, act):
    torch.manual_seed(0)
    proj = build_projection(kind, 8, 6)
    linear = proj if isinstance(proj, nn.Linear) else proj[0]
    with torch.no_grad():
        linear.weight.normal_()  # make pre-activations large enough to reach both signs
    x = torch.randn(10, 8)
    out = proj(x)
    torch.testing.assert_close(out, act(x @ linear.weight.T + linear.bias))
    if kind == "relu":
        assert (out >= 0).all() and (out == 0).any()
    if kind == "tanh":
        assert (out.abs() <= 1).all() and (out.abs() > 0.9).any()
    if kind == "linear":
        assert (out < 0).any()


@pytest.mark.parametrize("kind", PROJECTIONS)
def test_init_stats(kind):
    torch.manual_seed(0)
    proj = build_projection(kind, 256, 512)
    linear = proj if isinstance(proj, nn.Linear) else proj[0]
    w = linear.weight
    assert abs(w.mean().item()) < 1e-3
    assert w.std().item() == pytest.approx(0.02, rel=0.02)
    assert torch.equal(linear.bias, torch.zeros(512))


def test_bad_kind_lists_kinds():
    with pytest.raises(ValueError, match="gelu") as info:
        build_projection("gelu", 4, 4)
    for kind in PROJECTIONS:
        assert kind in str(info.value)
    with pytest.raises(ValueError, match="dim_out"):
        build_projection("linear", 4, 0)
