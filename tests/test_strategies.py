"""Strategies: the single-teacher loss equals a hand computation; registry, schedules, projections, bf16."""

import pytest
import torch
import textbrewer.losses as tb
from textbrewer.distiller_utils import probability_shift_

from distill_toolkit import ConfigError, DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.losses import probability_shift
from distill_toolkit.strategies import (Strategy, UnknownStrategyError, available_strategies, build_strategy,
                                        check_distillation, get, register_strategy)
from distill_toolkit.strategies import base as strategy_base
from distill_toolkit.teachers import TeacherRunner

from helpers import ToyTask, collate, tiny_bert


def _views(distill, batch, teacher, student):
    strategy = build_strategy(distill)
    module = DistillationModule(student, strategy)
    runner = TeacherRunner(teacher, "teacher", strategy.feature_keys()["teacher"])
    teacher_view = runner(batch)
    with torch.no_grad():
        student_view = module.student_view(batch)
    strategy.setup(student_view, {"teacher": teacher_view})
    return module, runner


@pytest.mark.parametrize("progress", [0.0, 0.5])
def test_single_loss_equals_hand_computation(progress):
    torch.manual_seed(0)
    teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
    batch = collate([ToyTask(8)[i] for i in range(8)])
    distill = DistillationConfig(
        temperature=3.0, kd_loss_weight=2.0, kd_loss_weight_schedule="linear_decay", hard_label_weight=0.5,
        matches=[Match(teacher_layer=4, student_layer=2, projection="relu", weight=0.7),
                 Match(teacher_layer=1, student_layer=1, feature="attention", loss="attention_ce_mean", weight=0.3,
                       weight_schedule="linear_growth")])
    module, runner = _views(distill, batch, teacher, student)
    loss, terms, _ = module(batch, {"teacher": runner(batch)}, progress)

    out_T = teacher(**batch, output_hidden_states=True, output_attentions=True)
    out_S = student(**batch, output_hidden_states=True, output_attentions=True)
    mask = batch["attention_mask"]
    kd = tb.kd_ce_loss(out_S.logits, out_T.logits, 3.0)
    hidden = tb.hid_mse_loss(module.strategy.projections[0](out_S.hidden_states[2]), out_T.hidden_states[4], mask)
    attention = tb.att_ce_mean_loss(out_S.attentions[1], out_T.attentions[1], mask)
    expected = 2.0 * (1 - progress) * kd + 0.5 * out_S.loss + 0.7 * hidden + 0.3 * progress * attention
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["kd"], kd.detach())
    torch.testing.assert_close(terms["hidden_mse/S2-T4"], hidden.detach())
    # gradients reach the student and the projection, never the teacher
    loss.backward()
    assert student.classifier.weight.grad is not None
    assert module.strategy.projections[0][0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())


def test_without_matches_single_is_basic_kd():
    teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
    batch = collate([ToyTask(8)[i] for i in range(8)])
    distill = DistillationConfig(temperature=2.0, kd_loss="kd_mse")
    module, runner = _views(distill, batch, teacher, student)
    loss, terms, _ = module(batch, {"teacher": runner(batch)}, 0.0)
    assert set(terms) == {"kd"}
    torch.testing.assert_close(loss, tb.kd_mse_loss(student(**batch).logits, teacher(**batch).logits, 2.0))


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 5)])
def test_probability_shift_matches_textbrewer(shape):
    torch.manual_seed(1)
    logits = torch.randn(*shape)
    labels = torch.randint(0, shape[-1], shape[:-1])
    if len(shape) == 3:
        labels[0, 0] = -100
    ours = probability_shift(logits.reshape(-1, shape[-1]), labels.reshape(-1))
    theirs = probability_shift_(logits.clone(), labels.clone()).reshape(-1, shape[-1])
    torch.testing.assert_close(ours, theirs)
    keep = labels.reshape(-1) >= 0
    assert torch.equal(ours.argmax(-1)[keep], labels.reshape(-1)[keep])


def test_projection_has_its_own_learning_rate(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=1, batch_size=8, learning_rate=1e-4,
                         projection_learning_rate=3e-3, trackers=[], progress_bar=False, eval_every_epochs=None)
    trainer = Trainer(tiny_bert(2, 32), cfg, DistillationConfig(matches=[
        Match(teacher_layer=4, student_layer=2, projection="tanh")]), ToyTask(8), teacher=tiny_bert(4, 48),
        collate_fn=collate)
    trainer.train()
    lrs = sorted(g["initial_lr"] if "initial_lr" in g else g["lr"] for g in trainer.optimizer.param_groups)
    assert lrs == [1e-4, 3e-3]


def test_bf16_autocast_trains(tmp_path):
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=3, batch_size=8, mixed_precision="bf16", trackers=[],
                         progress_bar=False, eval_every_epochs=None)
    result = Trainer(tiny_bert(2, 32), cfg, DistillationConfig(hard_label_weight=1.0, matches=[
        Match(teacher_layer=4, student_layer=2, projection="linear")]), ToyTask(24), teacher=tiny_bert(4, 48),
        collate_fn=collate).train()
    assert result["global_step"] == 3
    assert all(torch.isfinite(torch.tensor(v)) for row in result["history"] for v in row.values())


def test_registry_finds_strategies_and_lists_known_ones():
    assert {"single", "supervised"} <= set(available_strategies())
    assert get("single").name == "single"
    with pytest.raises(UnknownStrategyError, match=r"unknown strategy 'multi'.*single.*supervised"):
        get("multi")


# ---- the protocol's hooks and the up-front name checks ----------------------------------------------
class _Bare(Strategy):
    """A strategy that declares no hook: it gets the base class's defaults."""

    def forward(self, batch, student, teachers, progress):
        return student.loss, {}


def test_a_strategy_without_hooks_gets_the_defaults():
    bare = _Bare(DistillationConfig(strategy_options={"tau": 2.0}))
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    assert bare.prepare_batch(batch, None, {"teacher": None}, (0, 0, 0)) is batch
    assert bare.prepare_batch(batch, None, {}, None) is batch  # the probe batch
    assert bare.loss_items(batch) is None  # the loss is a mean
    assert bare.forward_overrides("student") == {} and bare.forward_overrides("teacher") == {}
    options = {"tau": 2.0}
    assert _Bare.check_options(options, "distillation.strategy_options") is options
    assert bare.options == options


def test_check_distillation_runs_the_strategys_own_option_check():
    class Strict(_Bare):
        @classmethod
        def check_options(cls, options, where="distillation.strategy_options"):
            if "tau" in options and options["tau"] <= 0:
                raise ConfigError(f"{where}.tau", f"must be > 0, got {options['tau']!r}", "set e.g. `tau: 1.0`")
            return options

    register_strategy("test_strict_options", Strict)
    try:
        check_distillation(DistillationConfig(strategy="test_strict_options", strategy_options={"tau": 1.0}))
        with pytest.raises(ConfigError, match=r"distillation.strategy_options.tau: must be > 0, got -1.*Fix:"):
            build_strategy(DistillationConfig(strategy="test_strict_options", strategy_options={"tau": -1}))
    finally:
        strategy_base._STRATEGIES.classes.pop("test_strict_options")


@pytest.mark.parametrize("change, field, message", [
    ({"strategy": "singel"}, "distillation.strategy", r"unknown strategy 'singel'; known strategies: .*single.*"
                                                      r"register_strategy"),
    ({"task": "summarization"}, "distillation.task", r"unknown task 'summarization'; known tasks: .*causal_lm.*"
                                                     r"sequence_classification.*auto.*register_task"),
    ({"kd_loss": "kld"}, "distillation.kd_loss", r"unknown loss 'kld'.*forward_kl"),
    ({"kd_loss": "hidden_mse"}, "distillation.kd_loss", r"'hidden_mse' is a feature loss, not a logits loss"),
    ({"hard_label_weight_schedule": "cosine"}, "distillation.hard_label_weight_schedule",
     r"unknown schedule 'cosine'.*linear_decay"),
    ({"temperature_scheduler": ["cwsm"]}, "distillation.temperature_scheduler", r"cwsm"),
    ({"matches": [Match(teacher_layer=1, student_layer=1, loss="kd_ce")]}, "distillation.matches[0].loss",
     r"'kd_ce' is a logits loss, not a feature loss"),
    ({"matches": [Match(teacher_layer=1, student_layer=1, weight_schedule="step")]},
     "distillation.matches[0].weight_schedule", r"unknown schedule 'step'"),
    ({"matches": [Match(teacher_layer=1, student_layer=1, projection="gelu")]}, "distillation.matches[0].projection",
     r"unknown projection 'gelu'.*linear, relu, tanh"),
])
def test_registry_names_are_checked_before_the_strategy_is_built(change, field, message):
    config = DistillationConfig(**change)
    config.validate()  # values are fine: these are names, checked against the registries
    with pytest.raises(ConfigError, match=message) as err:
        build_strategy(config)
    assert err.value.field == field and "Fix:" in str(err.value)
