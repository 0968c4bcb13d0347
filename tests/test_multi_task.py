"""multi_task: the task sampler follows its law; per-task loss terms, evaluation and errors."""

import math

import pytest
import textbrewer.losses as tb
import torch
from accelerate.data_loader import BatchSamplerShard
from transformers import BertConfig, BertModel

from distill_toolkit import ConfigError, DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.batch import TaskError
from distill_toolkit.data.multitask import TaskBatchSampler, sampling_probabilities
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.teachers import TeacherRunner, named_teachers
from distill_toolkit.multi_head import MultiHeadClassifier
from distill_toolkit.strategies import StrategyError, build_strategy

from helpers import VOCAB, ToyTask, collate, tiny_bert

SIZES = {"a": 100, "b": 300, "c": 600}


def tiny_multi_head(heads, layers=2, hidden=32, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=hidden * 2, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return MultiHeadClassifier(BertModel(config), heads, dropout=0.0)


def _training(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=6, batch_size=8, learning_rate=1e-3, trackers=[],
                progress_bar=False, eval_every_epochs=None, seed=0)
    base.update(kw)
    return TrainingConfig(**base)


def _data():
    return {"a": ToyTask(40, seed=0), "b": ToyTask(24, seed=1)}


# ---- the sampler ----------------------------------------------------------------------------
@pytest.mark.parametrize("law, tau, weights", [("proportional", 1.0, None), ("proportional", 0.5, None),
                                               ("proportional", 0.0, None), ("weights", 1.0, {"a": 5, "b": 1, "c": 2})])
def test_sampler_frequencies_follow_the_law(law, tau, weights):
    expected = sampling_probabilities(SIZES, law, tau, weights)
    if law == "proportional":
        norm = sum(n ** tau for n in SIZES.values())
        assert expected == pytest.approx({t: n ** tau / norm for t, n in SIZES.items()})
    sampler = TaskBatchSampler(SIZES, batch_size=4, law=law, tau=tau, weights=weights, seed=3, num_batches=20000)
    draws = sampler.task_sequence(epoch=0)
    n = len(draws)
    for task, p in expected.items():
        freq = draws.count(task) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n), (task, freq, p)  # 4 sigma, seeded
    assert sampler.task_sequence(epoch=0) == draws  # seeded: the same on every process and on resume
    assert sampler.task_sequence(epoch=1) != draws  # re-drawn per epoch


def test_round_robin_and_batches_stay_in_their_task():
    sampler = TaskBatchSampler(SIZES, batch_size=7, law="round_robin", seed=0)
    assert sampler.task_sequence()[:6] == ["a", "b", "c", "a", "b", "c"]
    bounds = {"a": (0, 100), "b": (100, 400), "c": (400, 1000)}
    seen = {t: [] for t in SIZES}
    for batch, task in zip(sampler, sampler.task_sequence()):
        lo, hi = bounds[task]
        assert all(lo <= i < hi for i in batch) and len(batch) <= 7
        seen[task] += batch
    assert len(sampler) == sum(math.ceil(n / 7) for n in SIZES.values())
    # task "a" is drawn more often than it has batches: it cycles through fresh permutations
    first_pass = seen["a"][:100]
    assert sorted(first_pass) == list(range(100))


def test_every_process_draws_the_same_task_at_each_step():
    """What Accelerate's per-process sharding does to the batches under 2-process DDP."""
    sampler = TaskBatchSampler(SIZES, batch_size=4, seed=1, num_replicas=2)
    sampler.set_epoch(2)
    task_of = {i: t for t, (lo, hi) in {"a": (0, 100), "b": (100, 400), "c": (400, 1000)}.items()
               for i in range(lo, hi)}
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(sampler) // 2
    for b0, b1 in zip(*shards):
        assert {task_of[i] for i in b0} == {task_of[i] for i in b1} and len({task_of[i] for i in b0}) == 1
        assert not set(b0) & set(b1)  # different examples of the same task


def test_sampler_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"training.task_sampler: unknown sampler 'size'"):
        TrainingConfig(task_sampler="size").validate()
    with pytest.raises(ConfigError, match=r"training.task_weights: task_sampler is 'weights' but no task_weights"):
        TrainingConfig(task_sampler="weights").validate()
    with pytest.raises(ConfigError, match=r"training.task_sampling_tau: must be a number >= 0"):
        TrainingConfig(task_sampling_tau=-1).validate()
    with pytest.raises(ValueError, match=r"task_weights must name exactly the tasks \['a', 'b', 'c'\]; missing \['c'\]"):
        TaskBatchSampler(SIZES, 4, law="weights", weights={"a": 1, "b": 2})


# ---- the strategy ---------------------------------------------------------------------------
def _task_batch(task, n=8, seed=0):
    batch = collate([ToyTask(n, seed=seed)[i] for i in range(n)])
    batch["task"] = task
    return batch


def test_loss_per_task_equals_hand_computation():
    student = tiny_multi_head({"a": 2, "b": 3}, layers=2, hidden=32, seed=2)
    teachers = {"a": [tiny_multi_head({"a": 2}, 3, 48, seed=1), tiny_multi_head({"a": 2}, 2, 64, seed=5)],
                "b": tiny_multi_head({"b": 3}, 3, 48, seed=3)}
    distill = DistillationConfig(strategy="multi_task", temperature=2.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=2, student_layer=1, projection="linear"),  # every task, every teacher
        Match(task="b", teacher_layer=3, student_layer=2, projection="linear", weight=0.4)])
    given = named_teachers(teachers)
    assert list(given) == ["a/teacher0", "a/teacher1", "b"]
    strategy = build_strategy(distill)
    strategy.bind(list(given), ["a", "b"])
    module = DistillationModule(student, strategy)
    runners = {r: TeacherRunner(m, r, strategy.feature_keys()[r]) for r, m in given.items()}
    batches = {"a": _task_batch("a", seed=0), "b": _task_batch("b", seed=1)}
    for batch in batches.values():
        with torch.no_grad():
            strategy.setup(module.student_view(batch),
                           {r: runners[r](batch) for r in strategy.teachers_for(batch)})
    assert strategy.teachers_for(batches["a"]) == ("a/teacher0", "a/teacher1")

    for task, batch in batches.items():
        loss, terms, _ = module(batch, {r: runners[r](batch) for r in strategy.teachers_for(batch)}, 0.0)
        mask = batch["attention_mask"]
        plain = {k: v for k, v in batch.items() if k != "task"}
        out_S = student(**plain, task=task, output_hidden_states=True)
        sub = strategy.per_task[task]
        if task == "a":
            out_T = [t(**plain, task="a", output_hidden_states=True) for t in teachers["a"]]
            kd = tb.kd_ce_loss(out_S.logits, (out_T[0].logits + out_T[1].logits) / 2, 2.0)
            h = [tb.hid_mse_loss(sub.projections[i](out_S.hidden_states[1]), out_T[i].hidden_states[2], mask)
                 for i in range(2)]
            expected = kd + 0.5 * out_S.loss + h[0] + h[1]
            assert set(terms) == {"a/kd", "a/hard_label", "a/teacher0/hidden_mse/S1-T2",
                                  "a/teacher1/hidden_mse/S1-T2"}
        else:
            out_T = teachers["b"](**plain, task="b", output_hidden_states=True)
            kd = tb.kd_ce_loss(out_S.logits, out_T.logits, 2.0)
            h1 = tb.hid_mse_loss(sub.projections[0](out_S.hidden_states[1]), out_T.hidden_states[2], mask)
            h2 = tb.hid_mse_loss(sub.projections[1](out_S.hidden_states[2]), out_T.hidden_states[3], mask)
            expected = kd + 0.5 * out_S.loss + h1 + 0.4 * h2
            assert set(terms) == {"b/kd", "b/hard_label", "b/hidden_mse/S1-T2", "b/hidden_mse/S2-T3"}
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(terms[f"{task}/kd"], kd.detach())


def test_trainer_logs_per_task_terms_and_evaluates_per_task(tmp_path):
    student = tiny_multi_head({"a": 2, "b": 3}, seed=2)
    teachers = {"a": tiny_multi_head({"a": 2}, 3, 48, seed=1), "b": tiny_multi_head({"b": 3}, 3, 48, seed=3)}
    distill = DistillationConfig(strategy="multi_task", hard_label_weight=1.0, matches=[
        Match(task="a", teacher_layer=3, student_layer=2, projection="linear")])
    result = Trainer(student, _training(tmp_path, task_sampler="round_robin"), distill, _data(), teacher=teachers,
                     eval_data={"a": ToyTask(16, seed=4), "b": ToyTask(12, seed=5)}, collate_fn=collate).train()
    history = result["history"]
    assert {"train/a/kd", "train/a/hard_label", "train/a/hidden_mse/S2-T3"} <= set(history[0])  # round robin: a, b ...
    assert {"train/b/kd", "train/b/hard_label"} <= set(history[1]) and "train/a/kd" not in history[1]
    metrics = result["eval"]
    assert set(metrics) == {"accuracy", "a/accuracy", "b/accuracy"}
    assert metrics["accuracy"] == pytest.approx((metrics["a/accuracy"] + metrics["b/accuracy"]) / 2)
    # the export reloads with its heads
    reloaded = MultiHeadClassifier.from_pretrained(result["export_dir"])
    assert reloaded.tasks == ["a", "b"]


def test_several_teachers_for_one_task_through_the_trainer(tmp_path):
    teachers = {"a": [tiny_multi_head({"a": 2}, 3, 48, seed=1), tiny_bert(2, 64, seed=5)],  # any architecture
                "b": tiny_multi_head({"b": 3}, 3, 48, seed=3)}
    distill = DistillationConfig(strategy="multi_task", teacher_combination="confidence", matches=[
        Match(teacher_layer=2, student_layer=2, projection="linear")])
    result = Trainer(tiny_multi_head({"a": 2, "b": 3}, seed=2), _training(tmp_path, max_steps=4,
                     task_sampler="round_robin"), distill, _data(), teacher=teachers, collate_fn=collate).train()
    logged = set().union(*result["history"])
    assert {"train/a/kd", "train/a/teacher0/hidden_mse/S2-T2", "train/a/teacher1/hidden_mse/S2-T2",
            "train/b/kd", "train/b/hidden_mse/S2-T2"} <= logged


def test_one_multi_head_teacher_serves_every_task(tmp_path):
    teacher = tiny_multi_head({"a": 2, "b": 3}, 3, 48, seed=1)
    distill = DistillationConfig(strategy="multi_task", matches=[Match(teacher_layer=3, student_layer=2,
                                                                       projection="linear")])
    result = Trainer(tiny_multi_head({"a": 2, "b": 3}, seed=2), _training(tmp_path, max_steps=4), distill, _data(),
                     teacher=teacher, collate_fn=collate).train()
    logged = set().union(*result["history"])
    assert {"train/a/kd", "train/b/kd", "train/a/hidden_mse/S2-T3", "train/b/hidden_mse/S2-T3"} <= logged


# ---- bad input ------------------------------------------------------------------------------
def test_batch_of_an_unknown_task_names_the_known_ones():
    strategy = build_strategy(DistillationConfig(strategy="multi_task"))
    strategy.bind(["a", "b"], ["a", "b"])
    with pytest.raises(StrategyError, match=r"task 'c' has no teacher.*known tasks are \['a', 'b'\]"):
        strategy.teachers_for({"task": "c"})
    with pytest.raises(StrategyError, match=r"without a `task`; the tasks are \['a', 'b'\]"):
        strategy.teachers_for({"input_ids": None})
    student = tiny_multi_head({"a": 2, "b": 3})
    with pytest.raises(TaskError, match=r"no head for task 'c'; the model's tasks are \['a', 'b'\]"):
        student(**{k: v for k, v in _task_batch("c").items() if k != "task"}, task="c")


def test_task_without_a_teacher_is_named(tmp_path):
    data = {**_data(), "c": ToyTask(8, seed=2)}
    with pytest.raises(StrategyError, match=r"task 'c' has no teacher; teachers are given for \['a', 'b'\]"):
        Trainer(tiny_multi_head({"a": 2, "b": 3, "c": 2}), _training(tmp_path), DistillationConfig(
            strategy="multi_task"), data, teacher={"a": tiny_bert(2, 32), "b": tiny_bert(2, 32)}, collate_fn=collate)
    with pytest.raises(StrategyError, match=r"teacher\(s\) for task\(s\) \['movie'\], which are not in the data"):
        Trainer(tiny_multi_head({"a": 2, "b": 3}), _training(tmp_path), DistillationConfig(strategy="multi_task"),
                _data(), teacher={"a": tiny_bert(2, 32), "b": tiny_bert(2, 32), "movie": tiny_bert(2, 32)},
                collate_fn=collate)


def test_student_without_a_head_for_a_task_fails_before_training(tmp_path):
    trainer = Trainer(tiny_multi_head({"a": 2}), _training(tmp_path), DistillationConfig(strategy="multi_task"),
                      _data(), teacher={"a": tiny_bert(2, 32), "b": tiny_bert(2, 32)}, collate_fn=collate)
    with pytest.raises(TaskError, match=r"no head for task 'b'; the model's tasks are \['a'\]"):
        trainer.train()


def test_multi_task_resume_replays_the_same_tasks(tmp_path):
    """Stop after a checkpoint at step 4 (mid-epoch), resume: same tasks and weights as one unbroken run."""
    from safetensors.torch import load_file

    from distill_toolkit import Callback

    class StopAt4(Callback):
        def on_step_end(self, trainer, step, logs):
            trainer.should_stop = step == 4

    def run(out, resume=None, callbacks=None):
        teachers = {"a": tiny_multi_head({"a": 2}, 3, 48, seed=1), "b": tiny_multi_head({"b": 3}, 3, 48, seed=3)}
        cfg = _training(out, max_steps=10, save_every_steps=4, resume_from=resume, batch_size=4)
        return Trainer(tiny_multi_head({"a": 2, "b": 3}, seed=2), cfg, DistillationConfig(strategy="multi_task"),
                       _data(), teacher=teachers, collate_fn=collate, callbacks=callbacks).train()

    whole = run(tmp_path / "whole")
    run(tmp_path / "split", callbacks=[StopAt4()])
    resumed = run(tmp_path / "split", resume="latest")
    tasks = [[k.split("/")[1] for k in row if k.endswith("/kd")] for row in whole["history"]]
    assert tasks[4:] == [[k.split("/")[1] for k in row if k.endswith("/kd")] for row in resumed["history"][4:]]
    a = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "final" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


@pytest.mark.distributed
def test_ddp_ranks_draw_the_same_task_at_every_step(tmp_path):
    """2 real processes (gloo, accelerate launch --config_file launch/ddp.yaml): same task on both ranks."""
    import json
    import sys
    from pathlib import Path

    from test_distributed import LAUNCH, free_port, ok, run_job

    worker = Path(__file__).parent / "scripts" / "multi_task_ddp.py"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "ddp.yaml"),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           str(worker), str(tmp_path)]
    ok(run_job(cmd, env={"ACCELERATE_USE_CPU": "1"}))
    ranks = [json.loads((tmp_path / f"tasks_rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert len(ranks[0]["steps"]) == 8 and ranks[0]["steps"] == ranks[1]["steps"]
    assert all(len(tasks) == 1 for tasks in ranks[0]["steps"])  # one task per step
    assert len({t for tasks in ranks[0]["steps"] for t in tasks}) > 1  # and the tasks vary
