"""Temperature schedules (parity with TextBrewer) and loss-weight schedules."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import textbrewer.losses as tb_losses
import textbrewer.schedulers as tb_sched
from distill_toolkit import losses as L
from distill_toolkit.schedulers import (
    WEIGHT_SCHEDULES,
    build_temperature_scheduler,
    scheduled_weight,
)


def _logits(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


SHAPES = [(8, 5), (3, 6, 7)]


@pytest.mark.parametrize("spec", [None, "none", "constant", ["constant"], {"name": "constant"}])
def test_constant(spec):
    sched = build_temperature_scheduler(spec)
    S, T = _logits(4, 5, seed=0), _logits(4, 5, seed=1)
    assert sched(S, T, 4.0) == 4.0
    assert tb_sched.constant_temperature_scheduler(S, T, 4.0) == sched(S, T, 4.0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "spec,tb_args",
    [
        (["flsw", 1, 2], (1, 2)),
        (["flsw", 0.5, 1.5], (0.5, 1.5)),
        ({"name": "flsw", "beta": 2, "gamma": 1}, (2, 1)),
        (["flsw", {"beta": 1, "gamma": 3}], (1, 3)),
        (["flsw", 1, 2, 0.5], (1, 2, 0.5)),  # eps
    ],
)
def test_flsw_matches_textbrewer(shape, spec, tb_args):
    S, T = _logits(*shape, seed=2), _logits(*shape, seed=3)
    ours = build_temperature_scheduler(spec)(S, T, 4.0)
    expected = tb_sched.flsw_temperature_scheduler_builder(*tb_args)(S, T, 4.0)
    assert ours.shape == shape[:-1]
    assert_close(ours, expected)
    assert ours.std() > 0  # really per position


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spec,beta", [(["cwsm", 1], 1), (["cwsm", 0.3], 0.3), ({"name": "cwsm", "beta": 2}, 2)])
def test_cwsm_matches_textbrewer(shape, spec, beta):
    S, T = _logits(*shape, seed=4), _logits(*shape, seed=5)
    ours = build_temperature_scheduler(spec)(S, T, 2.0)
    assert_close(ours, tb_sched.cwsm_temperature_scheduler_builder(beta)(S, T, 2.0))
    assert ours.shape == shape[:-1]


@pytest.mark.parametrize("spec", [["flsw", 1, 2], ["cwsm", 1]])
def test_schedules_carry_no_grad(spec):
    S = _logits(3, 4, 5, seed=6).requires_grad_()
    T = _logits(3, 4, 5, seed=7).requires_grad_()
    tau = build_temperature_scheduler(spec)(S, T, 4.0)
    assert not tau.requires_grad


@pytest.mark.parametrize("spec,tb_builder", [(["flsw", 1, 2], lambda: tb_sched.flsw_temperature_scheduler_builder(1, 2)),
                                             (["cwsm", 1], lambda: tb_sched.cwsm_temperature_scheduler_builder(1))])
def test_masked_schedule_and_kd_loss_match_textbrewer_pipeline(spec, tb_builder):
    # TextBrewer selects rows with logits_mask, schedules the temperature on them, then calls kd_ce.
    S, T = _logits(3, 6, 7, seed=8), _logits(3, 6, 7, seed=9)
    mask = torch.arange(6)[None, :] < torch.tensor([6, 2, 4])[:, None]
    tau = build_temperature_scheduler(spec)(S, T, 4.0, mask=mask)
    tb_tau = tb_builder()(S[mask], T[mask], 4.0)
    assert_close(tau[mask], tb_tau)
    assert_close(L.kd_ce(S, T, tau, mask=mask), tb_losses.kd_ce_loss(S[mask], T[mask], tb_tau))
    # Without the mask, the mean includes padding and the values differ.
    assert not torch.allclose(build_temperature_scheduler(spec)(S, T, 4.0)[mask], tb_tau)


@pytest.mark.parametrize(
    "spec",
    ["flsw", "cwsm", "linear", ["flsw", 1], ["cwsm"], ["cwsm", 1, 2], ["flsw", 1, 2, 3, 4],
     {"name": "flsw", "beta": 1}, {"beta": 1}, {"name": "cwsm", "beta": 1, "gamma": 2},
     ["flsw", "a", 2], ["cwsm", True], 5, [], ["bogus", 1]],
)
def test_bad_temperature_specs(spec):
    with pytest.raises(ValueError, match="temperature_scheduler") as info:
        build_temperature_scheduler(spec)
    assert '["flsw", beta, gamma]' in str(info.value) and '["cwsm", beta]' in str(info.value)


@pytest.mark.parametrize("schedule", WEIGHT_SCHEDULES)
def test_weight_schedules(schedule):
    expected = {
        "constant": [2.0, 2.0, 2.0],
        "linear_growth": [0.0, 1.0, 2.0],
        "linear_decay": [2.0, 1.0, 0.0],
    }[schedule]
    got = [scheduled_weight(schedule, 2.0, p) for p in (0.0, 0.5, 1.0)]
    assert got == pytest.approx(expected)
    # Progress outside [0, 1] is clamped.
    assert scheduled_weight(schedule, 2.0, -0.5) == pytest.approx(expected[0])
    assert scheduled_weight(schedule, 2.0, 1.5) == pytest.approx(expected[2])


def test_weight_schedules_match_textbrewer():
    for p in (0.0, 0.3, 1.0):
        assert scheduled_weight("linear_growth", 1.0, p) == pytest.approx(tb_sched.linear_growth_weight_scheduler(p))
        assert scheduled_weight("linear_decay", 1.0, p) == pytest.approx(tb_sched.linear_decay_weight_scheduler(p))
    assert scheduled_weight(None, 3.0, 0.7) == 3.0


def test_unknown_weight_schedule():
    with pytest.raises(ValueError, match="cosine") as info:
        scheduled_weight("cosine", 1.0, 0.5)
    for name in WEIGHT_SCHEDULES:
        assert name in str(info.value)
