"""The loop: accumulation, exact resume after a real kill, trackers, export, bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_toolkit import (CheckpointError, ConfigError, DistillationConfig, Match, NonFiniteLossError,
                             Trainer)
from distill_toolkit.engine.checkpoint import latest_checkpoint
from distill_toolkit.features import FeatureError
from distill_toolkit.strategies import StrategyError, check_distillation

from helpers import ToyTask, collate, final_weights, read_wandb_history, tiny_bert, toy_distillation, toy_training

SCRIPTS = Path(__file__).parent / "scripts"





class FixedLength(ToyTask):
    """All sequences the same length, so per-token means of micro-batches average to the big batch's."""

    def __init__(self, n, seed=0):
        super().__init__(n, seed)
        for item in self.items:
            item["input_ids"] = (item["input_ids"] * 12)[:12]


def test_single_distillation_trains_and_exports(tmp_path):
    teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    result = Trainer(student, toy_training(tmp_path / "run"), toy_distillation(), ToyTask(48), teacher=teacher,
                     eval_data=ToyTask(16, seed=4), collate_fn=collate).train()
    assert result["global_step"] == 6
    names = set(result["history"][-1])
    assert {"train/loss", "train/kd", "train/hard_label", "train/hidden_mse/S2-T4",
            "train/attention_mse/S1-T2", "train/lr"} <= names
    exported = final_weights(tmp_path / "run")
    assert any(not torch.equal(exported[k], before[k]) for k in exported if k in before)
    # the export loads in a fresh model and gives the trained model's logits
    from transformers import AutoModelForSequenceClassification
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "final").eval()
    batch = collate([ToyTask(4)[i] for i in range(4)])
    batch.pop("labels")
    student.eval()
    torch.testing.assert_close(reloaded(**batch).logits, student(**batch).logits)
    # the teacher was never trained
    assert all(not p.requires_grad for p in teacher.parameters())


def test_teacher_weights_unchanged(tmp_path):
    teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    Trainer(student, toy_training(tmp_path / "run"), toy_distillation(), ToyTask(32), teacher=teacher,
            collate_fn=collate).train()
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not teacher.training


def test_gradient_accumulation_equals_big_batch(tmp_path):
    data = FixedLength(64)
    runs = {}
    for name, (bs, accum) in {"big": (8, 1), "accum": (4, 2)}.items():
        teacher, student = tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)
        cfg = toy_training(tmp_path / name / "run", batch_size=bs, gradient_accumulation_steps=accum, max_steps=None,
                        num_epochs=1, max_grad_norm=0.5)
        result = Trainer(student, cfg, toy_distillation(), data, teacher=teacher, collate_fn=collate).train()
        assert result["global_step"] == 8
        runs[name] = final_weights(tmp_path / name / "run")
    for key in runs["big"]:
        torch.testing.assert_close(runs["accum"][key], runs["big"][key], rtol=1e-4, atol=1e-5)


def _run_script(out, *args):
    return subprocess.run([sys.executable, str(SCRIPTS / "train_toy.py"), str(out), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [[], ["--group-by-length"]], ids=["random", "length_grouped"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, sampler):
    whole = _run_script(tmp_path / "whole", *sampler)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _run_script(tmp_path / "killed", "--kill-at", "13", *sampler)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed mid-run
    assert latest_checkpoint(str(tmp_path / "killed")).name == "step_10"
    assert not (tmp_path / "killed" / "final").exists()
    # a save interrupted after step 10 left a partial folder: it must be ignored
    (tmp_path / "killed" / "checkpoints" / "step_15.partial").mkdir()
    resumed = _run_script(tmp_path / "killed", "--resume", *sampler)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


def test_length_grouped_sampler_is_a_seeded_permutation_of_similar_lengths():
    from distill_toolkit.data.samplers import LengthGroupedSampler

    lengths = [int(x) for x in torch.randint(1, 100, (203,), generator=torch.Generator().manual_seed(0))]
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=5, mega_batch=5)
    first = list(sampler)
    assert sorted(first) == list(range(203))
    assert list(sampler) == first  # same epoch, same order (resume relies on it)
    sampler.set_epoch(1)
    assert list(sampler) != first
    batches = [first[i:i + 8] for i in range(0, 203, 8)]
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    shuffled = torch.randperm(203, generator=torch.Generator().manual_seed(1)).tolist()
    random_spread = sum(max(lengths[i] for i in shuffled[j:j + 8]) - min(lengths[i] for i in shuffled[j:j + 8])
                        for j in range(0, 203, 8)) / len(batches)
    assert spread < random_spread / 3  # batches hold similar lengths
    assert len(batches[-1]) == 203 % 8  # the short batch comes last


def test_trackers_write_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = toy_training(tmp_path / "run", trackers=["tensorboard", "wandb"], log_every_steps=1, project_name="proj")
    Trainer(tiny_bert(2, 32, seed=2), cfg, toy_distillation(), ToyTask(48), teacher=tiny_bert(4, 48, seed=1),
            collate_fn=collate).train()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/kd", "train/hard_label", "train/hidden_mse/S2-T4", "train/attention_mse/S1-T2"} <= tags
    assert len(acc.Scalars("train/kd")) == 6
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs, "no W&B offline run"
    rows = read_wandb_history(runs[0])
    logged = [r for r in rows if "train/kd" in r]
    assert len(logged) == 6
    assert {"train/hard_label", "train/hidden_mse/S2-T4", "train/attention_mse/S1-T2"} <= set(logged[0])
    assert logged[-1]["train/kd"] == pytest.approx(acc.Scalars("train/kd")[-1].value, rel=1e-5)


def test_supervised_strategy_needs_no_teacher(tmp_path):
    result = Trainer(tiny_bert(2, 32), toy_training(tmp_path / "run", max_steps=20, learning_rate=3e-3),
                     DistillationConfig(strategy="supervised"), ToyTask(64),
                     eval_data=ToyTask(64), collate_fn=collate).train()
    assert set(result["history"][-1]) == {"step", "train/loss", "train/hard_label", "train/lr"}
    assert result["history"][-1]["train/loss"] < result["history"][0]["train/loss"]


# ---- bad input --------------------------------------------------------------------------

def _trainer(tmp_path, distill, teacher=None, student=None, **kw):
    return Trainer(student or tiny_bert(2, 32, seed=2), toy_training(tmp_path / "run", **kw), distill, ToyTask(16),
                   teacher=teacher or tiny_bert(4, 48, seed=1), collate_fn=collate)


def test_layer_index_out_of_range(tmp_path):
    with pytest.raises(FeatureError, match=r"hidden layer 9 is out of range.*0\.\.2"):
        _trainer(tmp_path, toy_distillation(matches=[Match(teacher_layer=4, student_layer=9, projection="linear")]))


def test_feature_the_model_does_not_produce(tmp_path):
    match = Match(feature="module", teacher_module="bert.pooler", student_module="bert.nope", loss="hidden_mse")
    with pytest.raises(FeatureError, match="module 'bert.nope' not found"):
        _trainer(tmp_path, toy_distillation(matches=[match]))


def test_hidden_sizes_differ_without_projection(tmp_path):
    with pytest.raises(StrategyError,
                       match=r"matches\[0\].*width 32 differs from teacher width 48.*projection: linear"):
        _trainer(tmp_path, toy_distillation(matches=[Match(teacher_layer=4, student_layer=2)])).train()


def test_logits_shapes_differ(tmp_path):
    with pytest.raises(StrategyError, match=r"logits shapes differ.*num_labels"):
        _trainer(tmp_path, toy_distillation(matches=[]), student=tiny_bert(2, 32, num_labels=3)).train()


def test_unknown_loss_lists_known_ones():
    with pytest.raises(ConfigError, match=r"distillation.kd_loss.*kd_ce.*reverse_kl"):
        check_distillation(DistillationConfig(kd_loss="kld"))
    with pytest.raises(ConfigError, match=r"matches\[0\].loss.*hidden_mse"):
        check_distillation(DistillationConfig(matches=[Match(teacher_layer=1, student_layer=1, loss="l1")]))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class Poison(torch.utils.data.Dataset):
        def __init__(self):
            self.base = ToyTask(48)

        def __len__(self):
            return 48

        def __getitem__(self, i):
            return self.base[i]

    # from step 5 on the student's head weights are NaN: the KD term goes NaN
    from distill_toolkit import Callback

    class Break(Callback):
        def on_step_end(self, trainer, step, logs):
            if step == 4:
                with torch.no_grad():
                    trainer.accelerator.unwrap_model(trainer.module).student.classifier.weight.fill_(float("nan"))

    trainer = Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "run", save_every_steps=2, max_steps=10),
                      toy_distillation(matches=[]), Poison(), teacher=tiny_bert(4, 48, seed=1), collate_fn=collate,
                      callbacks=[Break()])
    with pytest.raises(NonFiniteLossError, match=r"step 5 .*kd.*step_4"):
        trainer.train()
    assert latest_checkpoint(str(tmp_path / "run")).name == "step_4"
    assert not (tmp_path / "run" / "final").exists()


def test_resume_with_a_checkpoint_of_another_model(tmp_path):
    _trainer(tmp_path, toy_distillation(), save_every_steps=3).train()
    other = _trainer(tmp_path, toy_distillation(), student=tiny_bert(3, 32, seed=2), resume_from="latest")
    with pytest.raises(CheckpointError, match="does not match this run's model"):
        other.train()


def test_resume_from_incomplete_checkpoint_is_refused(tmp_path):
    partial = tmp_path / "run" / "checkpoints" / "step_3"
    partial.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        _trainer(tmp_path, toy_distillation(), resume_from=str(partial)).train()


def test_eval_every_steps_with_user_metric_and_best_export(tmp_path):
    seen = []

    def metric(predictions, labels):
        seen.append(len(labels))
        return {"error_rate": float((predictions != labels).mean())}

    cfg = toy_training(tmp_path / "run", max_steps=6, eval_every_steps=2, metric_for_best="error_rate",
                       greater_is_better=False)
    trainer = Trainer(tiny_bert(2, 32, seed=2), cfg, toy_distillation(), ToyTask(48), teacher=tiny_bert(4, 48, seed=1),
                      eval_data=ToyTask(20, seed=4), collate_fn=collate, metric_fn=metric)
    result = trainer.train()
    assert seen == [20, 20, 20]  # steps 2, 4, 6 (step 6 is the final one: not evaluated twice); each example once
    assert result["best_step"] in (2, 4, 6)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()
    assert "error_rate" in result["eval"]


def test_final_epoch_is_evaluated_and_competes_for_best(tmp_path):
    """The last epoch ends the run: it is still evaluated once, and may become best/."""
    seen = []

    def metric(predictions, labels):
        seen.append(len(seen))
        return {"score": float(len(seen))}  # later evaluations score higher: the final one must win

    cfg = toy_training(tmp_path / "run", num_epochs=2, max_steps=None, eval_every_epochs=1)
    trainer = Trainer(tiny_bert(2, 32, seed=2), cfg, toy_distillation(), ToyTask(32), teacher=tiny_bert(4, 48, seed=1),
                      eval_data=ToyTask(8, seed=4), collate_fn=collate, metric_fn=metric)
    result = trainer.train()
    assert len(seen) == 2 and result["best_step"] == result["global_step"] and result["eval"] == {"score": 2.0}
    assert not trainer.module.training and not trainer.module.student.training  # no dropout for whoever uses it next


def test_missing_labels_with_hard_label_weight(tmp_path):
    unlabelled = [{"input_ids": e["input_ids"]} for e in ToyTask(16)]

    def collate_unlabelled(examples):
        batch = collate([{**e, "labels": 0} for e in examples])
        batch.pop("labels")
        return batch

    trainer = Trainer(tiny_bert(2, 32), toy_training(tmp_path / "run"), toy_distillation(matches=[]), unlabelled,
                      teacher=tiny_bert(4, 48), collate_fn=collate_unlabelled)
    with pytest.raises(StrategyError, match=r"hard_label_weight.*no `labels`.*hard_label_weight: 0"):
        trainer.train()
    # pure KD on unlabelled text works
    result = Trainer(tiny_bert(2, 32), toy_training(tmp_path / "kd" / "run"),
                     toy_distillation(matches=[], hard_label_weight=0.0),
                     unlabelled, teacher=tiny_bert(4, 48), collate_fn=collate_unlabelled).train()
    assert set(result["history"][-1]) == {"step", "train/loss", "train/kd", "train/lr"}


def test_evaluate_restores_the_models_mode(tmp_path):
    trainer = Trainer(tiny_bert(2, 32, seed=2), toy_training(tmp_path / "run", max_steps=2), toy_distillation(),
                      ToyTask(16), teacher=tiny_bert(4, 48, seed=1), eval_data=ToyTask(8, seed=4), collate_fn=collate)
    trainer.train()
    for mode in (False, True):
        trainer.module.train(mode)
        trainer.evaluate()
        assert trainer.module.training is mode and trainer.module.student.training is mode
