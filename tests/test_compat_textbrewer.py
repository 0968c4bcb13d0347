"""distill_toolkit.compat.textbrewer against the real ``textbrewer`` 0.2.1 package.

Each ``*_script(textbrewer, out)`` below is one TextBrewer script, run twice: with ``import textbrewer``
and with ``import distill_toolkit.compat.textbrewer as textbrewer``. Tiny models, fixed batches, fixed
seeds; both runs must end with the same student weights, write the same loss scalars step by step
(``distiller.tb_writer``), call the callback at the same steps and save the same ``gs{step}.pkl``.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ToyTask, collate, tiny_bert
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

import distill_toolkit.compat.textbrewer as compat

textbrewer = pytest.importorskip("textbrewer")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class Recorder:
    """Stands in for ``distiller.tb_writer``: keeps every ``add_scalar`` call."""

    def __init__(self):
        self.rows = []

    def add_scalar(self, tag, value, step):
        self.rows.append((tag, float(value), step))


def hf_adaptor(batch, outputs):
    return {"logits": outputs.logits, "hidden": outputs.hidden_states, "attention": outputs.attentions,
            "losses": outputs.loss, "inputs_mask": batch["attention_mask"]}


def loader(n=24, batch_size=4, seed=0, shuffle=False):
    return DataLoader(ToyTask(n=n, seed=seed), batch_size=batch_size, shuffle=shuffle, collate_fn=collate)


def train(tb, distiller, out, *args, **kwargs):
    """Run ``distiller.train`` with a recording writer and callback; return what the run leaves.

    The models' train/eval modes and ``requires_grad`` flags are as they were before, after ``with``.
    """
    distiller.tb_writer = recorder = Recorder()
    steps = []
    models = [m for m in vars(distiller).values() if isinstance(m, nn.Module)]
    models += [m for v in vars(distiller).values() if isinstance(v, (list, dict))
               for m in (v.values() if isinstance(v, dict) else v) if isinstance(m, nn.Module)]
    before = [(m.training, [p.requires_grad for p in m.parameters()]) for m in models]
    with distiller:
        distiller.train(*args, callback=lambda model, step: steps.append((step, model.training)), **kwargs)
    assert [(m.training, [p.requires_grad for p in m.parameters()]) for m in models] == before
    saved = {p.name: torch.load(p, weights_only=True) for p in sorted(out.glob("gs*.pkl"))}
    return recorder.rows, steps, saved


def assert_same_run(ref, got, student_ref, student_got, atol=1e-5):
    (rows_ref, steps_ref, saved_ref), (rows_got, steps_got, saved_got) = ref, got
    assert [(tag, step) for tag, _, step in rows_got] == [(tag, step) for tag, _, step in rows_ref]
    np.testing.assert_allclose([v for _, v, _ in rows_got], [v for _, v, _ in rows_ref], rtol=1e-5, atol=1e-6)
    assert steps_got == steps_ref and steps_ref
    assert sorted(saved_got) == sorted(saved_ref) and saved_ref
    for name in saved_ref:
        for key, value in saved_ref[name].items():
            torch.testing.assert_close(saved_got[name][key], value, atol=atol, rtol=1e-4)
    for key, value in student_ref.state_dict().items():
        torch.testing.assert_close(student_got.state_dict()[key], value, atol=atol, rtol=1e-4)


def run_both(script, tmp_path, **kwargs):
    results = []
    for name, module in (("textbrewer", textbrewer), ("compat", compat)):
        out = tmp_path / name
        results.append(script(module, out, **kwargs))
    (ref, student_ref), (got, student_got) = results
    assert_same_run(ref, got, student_ref, student_got)
    return ref, got


# ---- the scripts --------------------------------------------------------------------------------
def general_script(tb, out):
    teacher = tiny_bert(layers=4, hidden=32, heads=4, seed=1)
    student = tiny_bert(layers=2, hidden=16, heads=4, seed=2)
    torch.manual_seed(3)  # the projections are drawn from here, in the distiller's constructor
    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), ckpt_frequency=2)
    distill_config = tb.DistillationConfig(
        temperature=4, temperature_scheduler=["flsw", 1, 2], hard_label_weight=1,
        kd_loss_weight_scheduler="linear_decay", intermediate_matches=[
            {"layer_T": 0, "layer_S": 0, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["linear", 16, 32]},
            {"layer_T": 4, "layer_S": 2, "feature": "hidden", "loss": "hidden_mse", "weight": 1,
             "proj": ["relu", 16, 32, {"lr": 1e-2}]},
            {"layer_T": 3, "layer_S": 1, "feature": "attention", "loss": "attention_mse", "weight": 1},
            {"layer_T": 1, "layer_S": 0, "feature": "attention", "loss": "attention_ce_mean", "weight": 0.5}])
    distiller = tb.GeneralDistiller(train_config, distill_config, teacher, student, hf_adaptor, hf_adaptor)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    run = train(tb, distiller, out, optimizer, loader(), num_epochs=2, scheduler_class=get_linear_schedule_with_warmup,
                scheduler_args={"num_warmup_steps": 2, "num_training_steps": 12}, max_grad_norm=1.0,
                output_hidden_states=True, output_attentions=True)
    return run, student


class BagClassifier(nn.Module):
    """A model that is not Hugging Face's: called with a tuple batch, returns (logits, loss)."""

    def __init__(self, hidden=16, num_labels=2, seed=0, dropout=0.0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(64, hidden)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, num_labels)

    def forward(self, input_ids, attention_mask, labels):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.head(self.dropout(pooled))
        return logits, F.cross_entropy(logits, labels)


def tuple_batches(batch):
    return batch["input_ids"], batch["attention_mask"], batch["labels"]


def bag_adaptor(batch, outputs):
    return {"logits": outputs[0], "losses": [outputs[1]], "labels": batch[2]}


def basic_script(tb, out, dropout=0.0, shuffle=False):
    teacher = BagClassifier(hidden=32, seed=1)
    student = BagClassifier(hidden=16, seed=2, dropout=dropout)
    torch.manual_seed(4)
    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), gradient_accumulation_steps=2, ckpt_steps=4)
    distill_config = tb.DistillationConfig(
        temperature=2, temperature_scheduler=["cwsm", 0.5], kd_loss_type="mse", hard_label_weight=0.5,
        hard_label_weight_scheduler="linear_growth", probability_shift=True)
    distiller = tb.BasicDistiller(train_config, distill_config, teacher, student, bag_adaptor, bag_adaptor)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5, momentum=0.9)
    run = train(tb, distiller, out, optimizer, loader(n=20, shuffle=shuffle), num_steps=10, max_grad_norm=0.5,
                batch_postprocessor=tuple_batches)
    return run, student


def dual_batch_script(tb, out):
    """``{"teacher": ..., "student": ...}`` batches, the teacher's outputs given as ``batch["teacher_cache"]``."""
    teacher, student = BagClassifier(hidden=32, seed=1), BagClassifier(hidden=16, seed=2)
    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out))
    distiller = tb.BasicDistiller(train_config, tb.DistillationConfig(temperature=2, hard_label_weight=1), teacher,
                                  student, lambda batch, outputs: {"logits": outputs[0]},
                                  lambda batch, outputs: {"logits": outputs[0], "losses": outputs[1]})

    def dual(batch):
        cache = (F.one_hot(batch["labels"], 2).float() * 3 + batch["input_ids"][:, :2].float() / 64,)
        return {"teacher": batch, "student": batch, "teacher_cache": cache}

    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    return train(tb, distiller, out, optimizer, loader(n=16), num_epochs=2, batch_postprocessor=dual), student


def multi_teacher_script(tb, out):
    teachers = [tiny_bert(layers=2, hidden=32, seed=1), tiny_bert(layers=3, hidden=24, heads=4, seed=5)]
    student = tiny_bert(layers=2, hidden=16, heads=4, seed=2)
    random.seed(0)  # the logits cache is shuffled with `random` at every epoch
    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), ckpt_epoch_frequency=2)
    distill_config = tb.DistillationConfig(temperature=3, hard_label_weight=1, is_caching_logits=True)

    def adaptor_T(batch, outputs):
        return {"logits": outputs.logits}

    def adaptor_S(batch, outputs):
        return {"logits": outputs.logits, "losses": outputs.loss}

    distiller = tb.MultiTeacherDistiller(train_config, distill_config, teachers, student, [adaptor_T, adaptor_T],
                                         adaptor_S)
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-3)
    return train(tb, distiller, out, optimizer, loader(n=20), num_epochs=3), student


def multi_task_script(tb, out):
    teachers = {"pos": tiny_bert(layers=3, hidden=32, num_labels=2, seed=1),
                "odd": tiny_bert(layers=3, hidden=32, num_labels=3, seed=5)}
    student = tiny_bert(layers=2, hidden=16, heads=4, num_labels=5, seed=2)  # heads: [:2] pos, [2:] odd
    torch.manual_seed(6)
    np.random.seed(0)  # TextBrewer draws each batch's task with np.random.choice
    heads = {"pos": slice(0, 2), "odd": slice(2, 5)}

    def adaptor_T(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states}

    def student_adaptor(task):
        def adaptor(batch, outputs):
            logits = outputs.logits[:, heads[task]]
            return {"logits": logits, "hidden": outputs.hidden_states, "inputs_mask": batch["attention_mask"],
                    "losses": F.cross_entropy(logits, batch["labels"])}
        return adaptor

    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), ckpt_steps=3)
    distill_config = tb.DistillationConfig(temperature=2, hard_label_weight=1, intermediate_matches=[
        {"layer_T": 3, "layer_S": 2, "feature": "hidden", "loss": "cos", "weight": 1, "proj": ["linear", 16, 32]}])
    distiller = tb.MultiTaskDistiller(train_config, distill_config, teachers, student,
                                      {t: adaptor_T for t in teachers}, {t: student_adaptor(t) for t in teachers})
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-3)
    dataloaders = {"pos": loader(n=16), "odd": loader(n=24, seed=1)}
    labels3 = {"odd": lambda b: {**b, "labels": b["input_ids"][:, 0] % 3}, "pos": lambda b: b}
    return train(tb, distiller, out, optimizer, dataloaders, num_steps=8, tau=0.5, batch_postprocessors=labels3,
                 output_hidden_states=True), student


def basic_trainer_script(tb, out):
    model = tiny_bert(layers=2, hidden=16, heads=4, seed=2)
    train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), ckpt_frequency=3)
    trainer = tb.BasicTrainer(train_config, model, lambda batch, outputs: {"losses": outputs.loss})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return train(tb, trainer, out, optimizer, loader(), 2, max_grad_norm=1.0), model


# ---- equality with TextBrewer --------------------------------------------------------------------
def test_general_distiller_hidden_attention_projection_flsw(tmp_path):
    ref, _ = run_both(general_script, tmp_path)
    assert {"scalar/unweighted_hidden_hidden_mse_2_4", "scalar/unweighted_attention_attention_mse_1_3",
            "scalar/unweighted_kd_loss", "scalar/unweighted_hard_label_loss"} <= {tag for tag, _, _ in ref[0]}
    assert [s for s, _ in ref[1]] == [3, 6, 9, 12] and all(training for _, training in ref[1])


def test_basic_distiller_tuple_batches_accumulation_num_steps(tmp_path):
    ref, _ = run_both(basic_script, tmp_path)
    assert [s for s, _ in ref[1]] == [4, 8, 10] and len({step for _, _, step in ref[0]}) == 20


def test_basic_distiller_shuffled_data_and_dropout_follow_the_same_random_stream(tmp_path):
    run_both(basic_script, tmp_path, dropout=0.3, shuffle=True)


def test_dual_batches_with_teacher_cache(tmp_path):
    run_both(dual_batch_script, tmp_path)


def test_multi_teacher_distiller_with_cached_logits(tmp_path):
    ref, _ = run_both(multi_teacher_script, tmp_path)
    assert [s for s, _ in ref[1]] == [10, 15]


def test_multi_task_distiller(tmp_path):
    ref, _ = run_both(multi_task_script, tmp_path)
    assert [s for s, _ in ref[1]] == [3, 6, 8]


def test_basic_trainer(tmp_path):
    ref, _ = run_both(basic_trainer_script, tmp_path)
    assert {tag for tag, _, _ in ref[0]} == {"scalar/total_loss"}


def test_accumulation_leftover_batches_are_skipped_with_a_warning_and_the_same_weights(tmp_path):
    """5 batches per epoch, 2 per step: TextBrewer computes the 5th and discards its gradients."""
    def script(tb, out):
        teacher, student = BagClassifier(hidden=32, seed=1), BagClassifier(hidden=16, seed=2)
        train_config = tb.TrainingConfig(device="cpu", output_dir=str(out), gradient_accumulation_steps=2)
        distiller = tb.BasicDistiller(train_config, tb.DistillationConfig(hard_label_weight=1), teacher, student,
                                      bag_adaptor, bag_adaptor)
        optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
        return train(tb, distiller, out, optimizer, loader(n=20), num_epochs=2, batch_postprocessor=tuple_batches), \
            student

    (rows_ref, steps_ref, _), student_ref = script(textbrewer, tmp_path / "textbrewer")
    with pytest.warns(UserWarning, match="last 1 batch"):
        (rows_got, steps_got, _), student_got = script(compat, tmp_path / "compat")
    kept = [(tag, value) for tag, value, step in rows_ref if step % 5 != 4]  # the 5th batch of each epoch
    assert [t for t, _ in kept] == [t for t, _, _ in rows_got]
    np.testing.assert_allclose([v for _, v, _ in rows_got], [v for _, v in kept], rtol=1e-5)
    assert steps_got == steps_ref == [(2, True), (4, True)]
    for key, value in student_ref.state_dict().items():
        torch.testing.assert_close(student_got.state_dict()[key], value, atol=1e-6, rtol=1e-5)


# ---- the API beside the distillers ------------------------------------------------------------------
def test_public_names_and_registries_are_textbrewers():
    names = ["BasicDistiller", "BasicTrainer", "DistillationConfig", "Distillers", "FEATURES", "ADAPTOR_KEYS",
             "GeneralDistiller", "KD_LOSS_MAP", "MATCH_LOSS_MAP", "MultiTaskDistiller", "MultiTeacherDistiller",
             "PROJ_MAP", "TEMPERATURE_SCHEDULER", "TrainingConfig", "WEIGHT_SCHEDULER", "register_new", "losses",
             "presets", "schedulers", "projections", "utils", "__version__"]
    assert all(hasattr(textbrewer, n) for n in names) and all(hasattr(compat, n) for n in names)
    for registry in ("KD_LOSS_MAP", "MATCH_LOSS_MAP", "PROJ_MAP", "WEIGHT_SCHEDULER"):
        assert set(getattr(compat, registry)) == set(getattr(textbrewer, registry))
    assert set(compat.TEMPERATURE_SCHEDULER.keys()) == set(textbrewer.TEMPERATURE_SCHEDULER.store)
    assert compat.FEATURES == textbrewer.FEATURES and compat.ADAPTOR_KEYS == textbrewer.ADAPTOR_KEYS
    assert set(compat.Distillers) == set(textbrewer.Distillers)
    from distill_toolkit.compat.textbrewer.distillers import BasicTrainer  # noqa: F401  (as textbrewer.distillers)
    config = compat.DistillationConfig(temperature_scheduler=["flsw", 1, 2], kd_loss_weight_scheduler="linear_decay",
                                       intermediate_matches=[{"layer_T": 1, "layer_S": 0, "feature": "hidden",
                                                              "loss": "hidden_mse", "weight": 1,
                                                              "proj": ["linear", 4, 8]}])
    assert config.kd_loss_weight_scheduler(0.25) == 0.75 and config.intermediate_matches[0].proj[3] == {}
    assert compat.DistillationConfig.from_dict({"temperature": 8}).temperature == 8


def test_losses_schedulers_and_projections_equal_textbrewers():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    att_s, att_t = torch.rand(3, 2, 5, 5, generator=g).softmax(-1), torch.rand(3, 2, 5, 5, generator=g).softmax(-1)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    for name in compat.MATCH_LOSS_MAP:
        pair = name in ("fsp", "gram", "mmd", "nst")
        a, b = ([s, s * 2], [t, t + 1]) if pair else (att_s, att_t) if name.startswith("attention") else (s, t)
        for m in (None, mask):
            torch.testing.assert_close(compat.MATCH_LOSS_MAP[name](a, b, mask=m),
                                       textbrewer.MATCH_LOSS_MAP[name](a, b, mask=m), msg=name)
    logits_s, logits_t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    for spec in (["flsw", 1, 2], ["cwsm", 0.5], "constant"):
        tau = compat.TEMPERATURE_SCHEDULER[spec](logits_s, logits_t, 4)
        torch.testing.assert_close(torch.as_tensor(tau), torch.as_tensor(
            textbrewer.TEMPERATURE_SCHEDULER[spec](logits_s, logits_t, 4)))
        for name in compat.KD_LOSS_MAP:
            torch.testing.assert_close(compat.KD_LOSS_MAP[name](logits_s, logits_t, tau),
                                       textbrewer.KD_LOSS_MAP[name](logits_s, logits_t, tau))
    for name in compat.WEIGHT_SCHEDULER:
        assert compat.WEIGHT_SCHEDULER[name](0.3) == pytest.approx(textbrewer.WEIGHT_SCHEDULER[name](0.3))
    for name in compat.PROJ_MAP:
        torch.manual_seed(1)
        ours = compat.PROJ_MAP[name](4, 6).state_dict()
        torch.manual_seed(1)
        assert all(torch.equal(v, ours[k]) for k, v in textbrewer.PROJ_MAP[name](4, 6).state_dict().items())


def test_utils_display_parameters_and_register_new():
    model = tiny_bert(layers=1, hidden=16, heads=2)
    table, node = compat.utils.display_parameters(model, max_level=2)
    assert isinstance(table, str) and "Total:" in table
    assert node.value[0] == sum(p.numel() for p in model.parameters()) and "bert" in node
    compat.register_new("match_Loss", "l1_for_test", lambda s, t, mask=None: (s - t).abs().mean())
    assert "l1_for_test" in compat.MATCH_LOSS_MAP
    with pytest.raises(ValueError, match="unknown map"):
        compat.register_new("losses", "x", abs)


def test_what_cannot_be_honoured_is_refused_with_the_alternative(tmp_path):
    out = str(tmp_path)
    for kwargs, match in (({"fp16": True}, "mixed_precision='fp16'"), ({"data_parallel": True}, "accelerate launch"),
                          ({"local_rank": 0}, "local_rank=-1"), ({"mixed_precision": "fp8"}, "one of")):
        with pytest.raises((NotImplementedError, ValueError), match=match):
            compat.TrainingConfig(output_dir=out, **kwargs)
    for kwargs, match in (({"temperature_scheduler": "warm"}, "unknown scheduler"),
                          ({"kd_loss_weight_scheduler": "cosine"}, "linear_decay"),
                          ({"intermediate_matches": [{"layer_T": 0, "layer_S": 0, "feature": "value", "loss": "x",
                                                      "weight": 1}]}, "feature")):
        with pytest.raises(ValueError, match=match):
            compat.DistillationConfig(**kwargs)
    teacher, student = tiny_bert(layers=1, hidden=16, heads=2), tiny_bert(layers=1, hidden=16, heads=2)
    cpu = compat.TrainingConfig(device="cpu", output_dir=out)
    with pytest.raises(NotImplementedError, match="custom_matches"):
        compat.GeneralDistiller(cpu, compat.DistillationConfig(), teacher, student, hf_adaptor, hf_adaptor,
                                custom_matches=[object()])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cpu'"):
            compat.BasicDistiller(compat.TrainingConfig(output_dir=out), compat.DistillationConfig(), teacher,
                                  student, hf_adaptor, hf_adaptor)
    with pytest.raises(ValueError, match="2 adaptors for 1 teachers"):
        compat.MultiTeacherDistiller(cpu, compat.DistillationConfig(), [teacher], student, [hf_adaptor] * 2,
                                     hf_adaptor)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    distiller = compat.BasicDistiller(cpu, compat.DistillationConfig(is_caching_logits=True), teacher, student,
                                      hf_adaptor, hf_adaptor)
    with pytest.raises(ValueError, match="is_caching_logits cannot be used with num_steps"):
        distiller.train(optimizer, loader(n=8), num_steps=2)
    distiller = compat.BasicDistiller(cpu, compat.DistillationConfig(), teacher, student, hf_adaptor, hf_adaptor)
    with pytest.raises(ValueError, match="ckpt_steps"):
        distiller.train(optimizer, loader(n=8), num_steps=2)

    def two_masks(batch, outputs):
        return {"logits": [outputs.logits, outputs.logits], "logits_mask": [batch["attention_mask"],
                                                                            1 - batch["attention_mask"]]}
    distiller = compat.BasicDistiller(cpu, compat.DistillationConfig(), teacher, student, two_masks, two_masks)
    with pytest.raises(NotImplementedError, match="different `logits_mask`"):
        distiller.train(optimizer, loader(n=8), num_epochs=1)


# ---- the Trainer hooks the layer uses ---------------------------------------------------------------
def test_trainer_takes_a_ready_optimizer_scheduler_and_strategy(tmp_path):
    """``Trainer(optimizer=, lr_scheduler=, strategy=)``: a ready optimizer gets the projections as a new group."""
    from distill_toolkit import DistillationConfig, Match, Trainer, TrainingConfig
    from distill_toolkit.strategies import SingleTeacher

    teacher, student = tiny_bert(layers=2, hidden=32, seed=1), tiny_bert(layers=1, hidden=16, heads=2, seed=2)
    training = TrainingConfig(output_dir=str(tmp_path / "a"), max_steps=3, trackers=[], progress_bar=False,
                              eval_every_epochs=None, cpu=True, projection_learning_rate=0.5)
    distillation = DistillationConfig(matches=[Match(teacher_layer=2, student_layer=1, projection="linear")])
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    lrs = []
    trainer = Trainer(student, training, distillation, loader(n=12), teacher=teacher, optimizer=optimizer,
                      lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lrs.append(s) or 0.5),
                      strategy=SingleTeacher(distillation))
    trainer.train()
    assert trainer.optimizer.optimizer is optimizer and len(optimizer.param_groups) == 2
    assert optimizer.param_groups[1]["initial_lr"] == 0.5  # training.projection_learning_rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05) and lrs == [0, 0, 1, 1, 2, 2, 3, 3]  # per group
    built = []
    training.output_dir = str(tmp_path / "b")
    Trainer(tiny_bert(layers=1, hidden=16, heads=2), training, distillation, loader(n=12), teacher=teacher,
            optimizer=lambda groups: built.append(groups) or torch.optim.SGD(groups, lr=0.1)).train()
    assert [len(g) for g in built] == [2]  # the student's group and the projections'
