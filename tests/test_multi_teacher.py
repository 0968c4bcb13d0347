"""multi_teacher: the loss equals a hand computation; one teacher equals `single`; bad input is named."""

import pytest
import textbrewer.losses as tb
import torch

from distill_toolkit import ConfigError, DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.teachers import TeacherRunner, named_teachers
from distill_toolkit.strategies import (StrategyError, UnknownStrategyError, build_strategy, check_distillation,
                                       get)

from helpers import ToyTask, collate, tiny_bert


def _teachers():
    # different depths and widths: 4 blocks x 48 and 3 blocks x 64
    return [tiny_bert(4, 48, seed=1), tiny_bert(3, 64, seed=3)]


def _run(distill, batch, student, teachers, progress=0.0):
    """The strategy through the same calls the Trainer makes; returns (loss, terms, strategy)."""
    given = named_teachers(teachers)
    strategy = build_strategy(distill)
    strategy.bind(list(given))
    module = DistillationModule(student, strategy)
    runners = {r: TeacherRunner(m, r, strategy.feature_keys()[r]) for r, m in given.items()}
    with torch.no_grad():
        strategy.setup(module.student_view(batch), {r: run(batch) for r, run in runners.items()})
    loss, terms, _ = module(batch, {r: run(batch) for r, run in runners.items()}, progress)
    return loss, terms, strategy


def _training(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=3, batch_size=8, learning_rate=1e-3, trackers=[],
                progress_bar=False, eval_every_epochs=None, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


@pytest.mark.parametrize("combination", ["mean", "weights", "confidence"])
def test_loss_equals_hand_computation(combination):
    teachers, student = _teachers(), tiny_bert(2, 32, seed=2)
    batch = collate([ToyTask(8)[i] for i in range(8)])
    distill = DistillationConfig(
        strategy="multi_teacher", temperature=2.0, hard_label_weight=0.5, teacher_combination=combination,
        teacher_weights=[3.0, 1.0] if combination == "weights" else None,
        matches=[Match(teacher_layer=2, student_layer=1, projection="linear", weight=0.7),  # both teachers
                 Match(teacher="teacher0", teacher_layer=4, student_layer=2, projection="relu", weight=0.2),
                 Match(teacher="teacher1", teacher_layer=1, student_layer=1, feature="attention",
                       loss="attention_ce_mean", weight=0.3)])
    loss, terms, strategy = _run(distill, batch, student, teachers, progress=0.3)

    mask = batch["attention_mask"]
    out_S = student(**batch, output_hidden_states=True, output_attentions=True)
    out_T = [t(**batch, output_hidden_states=True, output_attentions=True) for t in teachers]
    l0, l1 = out_T[0].logits, out_T[1].logits
    if combination == "mean":
        combined = (l0 + l1) / 2
    elif combination == "weights":
        combined = 0.75 * l0 + 0.25 * l1
    else:
        c0, c1 = l0.softmax(-1).max(-1).values, l1.softmax(-1).max(-1).values
        combined = (c0 / (c0 + c1))[:, None] * l0 + (c1 / (c0 + c1))[:, None] * l1
    kd = tb.kd_ce_loss(out_S.logits, combined, 2.0)
    proj = strategy.projections  # one per (match, teacher): (m0,t0) (m0,t1) (m1,t0) (m2,t1)
    h0 = tb.hid_mse_loss(proj[0](out_S.hidden_states[1]), out_T[0].hidden_states[2], mask)
    h1 = tb.hid_mse_loss(proj[1](out_S.hidden_states[1]), out_T[1].hidden_states[2], mask)
    h2 = tb.hid_mse_loss(proj[2](out_S.hidden_states[2]), out_T[0].hidden_states[4], mask)
    att = tb.att_ce_mean_loss(out_S.attentions[1], out_T[1].attentions[1], mask)
    expected = kd + 0.5 * out_S.loss + 0.7 * (h0 + h1) + 0.2 * h2 + 0.3 * att
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["kd"], kd.detach())
    torch.testing.assert_close(terms["teacher1/hidden_mse/S1-T2"], h1.detach())
    torch.testing.assert_close(terms["teacher1/attention_ce_mean/S1-T1"], att.detach())
    assert proj[0].weight.shape == (48, 32) and proj[1].weight.shape == (64, 32)  # a projection per width
    loss.backward()
    assert proj[1].weight.grad is not None and student.classifier.weight.grad is not None
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_combinations_agree_on_identical_teachers():
    logits = torch.randn(5, 3)
    from distill_toolkit.strategies import combine_logits

    for mode, w in [("mean", None), ("weights", [2.0, 7.0]), ("confidence", None)]:
        torch.testing.assert_close(combine_logits([logits, logits.clone()], mode, w), logits)


def test_one_teacher_equals_single(tmp_path):
    matches = [Match(teacher_layer=4, student_layer=2, projection="linear"),
               Match(teacher_layer=1, student_layer=1, feature="attention", loss="attention_mse")]
    runs = {}
    for name, strategy, teacher in [("single", "single", tiny_bert(4, 48, seed=1)),
                                    ("multi", "multi_teacher", [tiny_bert(4, 48, seed=1)])]:
        distill = DistillationConfig(strategy=strategy, temperature=2.0, hard_label_weight=0.5, matches=matches)
        result = Trainer(tiny_bert(2, 32, seed=2), _training(tmp_path / name), distill, ToyTask(24),
                         teacher=teacher, collate_fn=collate).train()
        runs[name] = result["history"]
    for a, b in zip(runs["single"], runs["multi"]):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key


def test_one_teacher_is_exactly_the_single_objective():
    """The strategies compose one KD objective: with one teacher, multi_teacher's loss and terms are single's."""
    batch = collate([ToyTask(8)[i] for i in range(8)])
    matches = [Match(teacher_layer=4, student_layer=2, projection="linear", weight_schedule="linear_growth"),
               Match(teacher_layer=1, student_layer=1, feature="attention", loss="attention_mse")]
    out = {}
    for strategy in ("single", "multi_teacher"):
        torch.manual_seed(0)  # the same projection initialisation
        distill = DistillationConfig(strategy=strategy, temperature=2.0, hard_label_weight=0.5, matches=matches,
                                     temperature_scheduler=["cwsm", 0.5], probability_shift=True)
        out[strategy] = _run(distill, batch, tiny_bert(2, 32, seed=2), tiny_bert(4, 48, seed=1), progress=0.4)
    (loss_1, terms_1, _), (loss_n, terms_n, _) = out["single"], out["multi_teacher"]
    assert torch.equal(loss_1, loss_n)
    assert terms_1.keys() == terms_n.keys() and all(torch.equal(terms_1[k], terms_n[k]) for k in terms_1)


def test_trainer_logs_per_teacher_terms(tmp_path):
    distill = DistillationConfig(strategy="multi_teacher", teacher_combination="confidence", matches=[
        Match(teacher_layer=2, student_layer=1, projection="linear")])
    teachers = dict(zip(["deep", "wide"], _teachers()))
    result = Trainer(tiny_bert(2, 32, seed=2), _training(tmp_path), distill, ToyTask(24), teacher=teachers,
                     collate_fn=collate).train()
    assert {"train/kd", "train/deep/hidden_mse/S1-T2", "train/wide/hidden_mse/S1-T2"} <= set(result["history"][-1])
    assert all(not p.requires_grad for t in teachers.values() for p in t.parameters())


# ---- bad input ----------------------------------------------------------------------------
def test_label_spaces_differ(tmp_path):
    distill = DistillationConfig(strategy="multi_teacher")
    teachers = [tiny_bert(2, 32, seed=1), tiny_bert(2, 32, num_labels=3, seed=2)]
    trainer = Trainer(tiny_bert(2, 32), _training(tmp_path), distill, ToyTask(16), teacher=teachers,
                      collate_fn=collate)
    with pytest.raises(StrategyError, match=r"label spaces differ: 'teacher0' has 1 logits head\(s\) of \[2\] "
                                            r"classes, 'teacher1' has 1 of \[3\]"):
        trainer.train()


@pytest.mark.parametrize("weights, message", [
    ([1.0, 2.0], r"2 weight\(s\) for 3 teachers \(teacher0, teacher1, teacher2\)"),
    ({"teacher0": 1.0}, r"no weight for teacher\(s\) \['teacher1', 'teacher2'\]"),
])
def test_weights_must_match_teachers(tmp_path, weights, message):
    distill = DistillationConfig(strategy="multi_teacher", teacher_combination="weights", teacher_weights=weights)
    with pytest.raises(StrategyError, match=message):
        Trainer(tiny_bert(2, 32), _training(tmp_path), distill, ToyTask(8),
                teacher=[tiny_bert(2, 32, seed=s) for s in range(3)], collate_fn=collate)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"distillation.teacher_weights: is set but teacher_combination is 'mean'"):
        DistillationConfig(strategy="multi_teacher", teacher_weights=[1, 2]).validate()
    with pytest.raises(ConfigError, match=r"distillation.teacher_weights: teacher_combination is 'weights' but no"):
        DistillationConfig(strategy="multi_teacher", teacher_combination="weights").validate()
    with pytest.raises(ConfigError, match=r"distillation.teacher_combination: unknown combination 'max'"):
        DistillationConfig(strategy="multi_teacher", teacher_combination="max").validate()
    with pytest.raises(ConfigError, match=r"distillation.teacher_weights: must be a list"):
        DistillationConfig(strategy="multi_teacher", teacher_combination="weights", teacher_weights=[-1, 2]).validate()


def test_match_naming_an_unknown_teacher(tmp_path):
    distill = DistillationConfig(strategy="multi_teacher", matches=[Match(teacher="teacher5", teacher_layer=1,
                                                                          student_layer=1)])
    with pytest.raises(StrategyError, match=r"matches\[0\].teacher: 'teacher5' is not one of the teachers given "
                                            r"\(teacher0, teacher1\)"):
        Trainer(tiny_bert(2, 32), _training(tmp_path), distill, ToyTask(8), teacher=_teachers(), collate_fn=collate)


def test_single_rejects_several_teachers(tmp_path):
    with pytest.raises(StrategyError, match=r"strategy 'single' takes 1 teacher.*got 2.*multi_teacher"):
        Trainer(tiny_bert(2, 32), _training(tmp_path), DistillationConfig(), ToyTask(8), teacher=_teachers(),
                collate_fn=collate)


def test_unknown_strategy_lists_known_ones():
    with pytest.raises(UnknownStrategyError, match=r"unknown strategy 'multi'.*multi_task, multi_teacher, single"):
        get("multi")
    with pytest.raises(ConfigError, match=r"distillation.strategy: unknown strategy 'mutli_teacher'; known "
                                          r"strategies: .*multi_task, multi_teacher, single, supervised"):
        check_distillation(DistillationConfig(strategy="mutli_teacher"))
