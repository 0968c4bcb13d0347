"""``distill_toolkit.hf.DistillationTrainer``: a ``transformers.Trainer`` that trains like the toolkit's loop.

Same recipe, same data order, same optimiser -> the same weights as ``distill_toolkit.Trainer``
(with and without gradient accumulation); projections in the optimiser with their own learning
rate; checkpoints that resume to the weights of an uninterrupted run; a student-only export that
plain Transformers loads; loss terms logged; a frozen teacher; 2 CPU processes under
``accelerate launch`` (DDP, gloo) that reproduce one process on the same global batch.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

from distill_toolkit import DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.hf import STRATEGY_WEIGHTS_NAME, DistillationTrainer
from helpers import ToyTask, collate, load_script, tiny_bert

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "hf_trainer_run.py"
# A large epsilon makes AdamW sensitive to the gradients' scale, so a wrongly scaled loss shows in the weights.
RECIPE = dict(learning_rate=3e-2, projection_learning_rate=5e-2, adam_epsilon=0.1, weight_decay=0.01,
              max_grad_norm=0.5, warmup_steps=2, max_steps=6, seed=7)


def distillation() -> DistillationConfig:
    """KD + hard labels + two hidden matches, one through a learnt linear projection (32 -> 48)."""
    return DistillationConfig(temperature=2.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=2, student_layer=1, loss="hidden_mse", projection="linear", weight=2.0),
        Match(teacher_layer=4, student_layer=2, loss="hidden_mse", projection="linear")])


def models():
    return tiny_bert(4, 48, seed=1), tiny_bert(2, 32, seed=2)


class DecayEverything(DistillationTrainer):
    """The toolkit's AdamW decays every parameter; Transformers' rule spares biases and norms. For a
    like-for-like comparison this test trainer decays every parameter too."""

    def get_decay_parameter_names(self, model):
        return [name for name, _ in model.named_parameters()]


def hf_args(out: Path, accumulation: int = 1, **over) -> TrainingArguments:
    r = {**RECIPE, **over}
    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=4, gradient_accumulation_steps=accumulation,
        learning_rate=r["learning_rate"], adam_epsilon=r["adam_epsilon"], weight_decay=r["weight_decay"],
        max_grad_norm=r["max_grad_norm"] or 0.0, lr_scheduler_type="linear", warmup_steps=r["warmup_steps"],
        max_steps=r["max_steps"], optim="adamw_torch", seed=r["seed"], train_sampling_strategy="sequential",
        report_to=over.get("report_to", "none"), use_cpu=True, disable_tqdm=True, logging_steps=1,
        save_strategy=over.get("save_strategy", "no"), save_steps=over.get("save_steps", 500))


def run_hf(out: Path, accumulation: int = 1, cls=None, **over) -> DistillationTrainer:
    cls = cls or DecayEverything
    teacher, student = models()
    trainer = cls(model=student, teacher_model=teacher, args=hf_args(out, accumulation, **over),
                  distillation=distillation(), train_dataset=ToyTask(64, seed=0), data_collator=collate,
                  projection_learning_rate=RECIPE["projection_learning_rate"])
    trainer.train(resume_from_checkpoint=over.get("resume"))
    return trainer


def run_toolkit(out: Path, accumulation: int = 1, **over) -> Trainer:
    teacher, student = models()
    r = {**RECIPE, **over}
    training = TrainingConfig(
        output_dir=str(out), gradient_accumulation_steps=accumulation, learning_rate=r["learning_rate"],
        projection_learning_rate=r["projection_learning_rate"], adam_epsilon=r["adam_epsilon"],
        weight_decay=r["weight_decay"], max_grad_norm=r["max_grad_norm"], lr_scheduler="linear",
        warmup_ratio=r["warmup_steps"] / r["max_steps"], max_steps=r["max_steps"], seed=r["seed"], trackers=[],
        progress_bar=False, eval_every_epochs=None, cpu=True, overwrite=True)
    # A loader with its own generator: iterating it draws nothing from the global RNG, so the toolkit's
    # projections are initialised from the seed alone, as DistillationTrainer's are.
    loader = DataLoader(ToyTask(64, seed=0), batch_size=4, shuffle=False, collate_fn=collate,
                        generator=torch.Generator())
    trainer = Trainer(student, training, distillation(), loader, teacher=teacher)
    trainer.train()
    return trainer


def assert_same_state(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


def trained_state(trainer) -> dict:
    module = trainer.accelerator.unwrap_model(trainer.model if isinstance(trainer, DistillationTrainer)
                                              else trainer.module)
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


# ---- the same weights as the toolkit's own loop --------------------------------------------

@pytest.mark.parametrize("clip", [0.5, None], ids=["clipped", "unclipped"])
@pytest.mark.parametrize("accumulation", [1, 2])
def test_same_weights_as_toolkit_trainer(tmp_path, accumulation, clip):
    ours = trained_state(run_hf(tmp_path / "hf", accumulation, max_grad_norm=clip))
    theirs = trained_state(run_toolkit(tmp_path / "toolkit", accumulation, max_grad_norm=clip))
    assert any(k.startswith("strategy.") for k in ours), "the projections are part of the trained model"
    assert_same_state(theirs, ours)


def test_per_token_loss_with_accumulation_same_as_toolkit_trainer(tmp_path):
    """causal_lm sums KD over tokens: uneven micro-batches are normalised over the whole window, as in the toolkit."""
    from test_causal_lm import Texts, collate as lm_collate, tiny_llama

    config = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0, hard_label_weight=0.5)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, learning_rate=3e-2, max_steps=3, optim="adamw_torch",
                             adam_epsilon=0.1, lr_scheduler_type="constant", max_grad_norm=0.0,
                             train_sampling_strategy="sequential", report_to="none", use_cpu=True,
                             disable_tqdm=True, save_strategy="no", seed=3, logging_steps=1)
    ours = DecayEverything(model=tiny_llama(2, 32, seed=2), teacher_model=tiny_llama(3, 48, seed=1), args=args,
                           distillation=config, train_dataset=Texts(16), data_collator=lm_collate)
    ours.train()
    training = TrainingConfig(output_dir=str(tmp_path / "tk"), gradient_accumulation_steps=2, learning_rate=3e-2,
                              adam_epsilon=0.1, max_steps=3, lr_scheduler="constant", max_grad_norm=None, seed=3,
                              trackers=[], progress_bar=False, eval_every_epochs=None, cpu=True, overwrite=True)
    loader = DataLoader(Texts(16), batch_size=2, collate_fn=lm_collate, generator=torch.Generator())
    theirs = Trainer(tiny_llama(2, 32, seed=2), training, config, loader, teacher=tiny_llama(3, 48, seed=1))
    theirs.train()
    assert_same_state(trained_state(theirs), trained_state(ours))
    logged = [row for row in ours.state.log_history if "loss" in row]
    expected = [row["train/loss"] for row in theirs.state.history]
    assert [row["loss"] for row in logged] == pytest.approx(expected, rel=1e-5)  # per-token means


# ---- optimiser, logging, the teacher -----------------------------------------------------

def test_projections_train_with_their_own_learning_rate_and_decay_rule(tmp_path):
    trainer = run_hf(tmp_path, cls=DistillationTrainer, max_steps=1)
    projections = {id(p) for p in trainer.strategy.parameters()}
    assert projections
    by_param = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    assert set(by_param) == {id(p) for p in trainer.model.parameters()}, "student + projections, nothing else"
    for name, param in trainer.model.named_parameters():
        group = by_param[id(param)]
        lr = RECIPE["projection_learning_rate"] if id(param) in projections else RECIPE["learning_rate"]
        assert group["initial_lr"] == lr, name
        decays = not ("bias" in name or "LayerNorm" in name)
        assert group["weight_decay"] == (RECIPE["weight_decay"] if decays else 0.0), name


class Logs(TrainerCallback):
    """What every ``report_to`` integration receives: the dicts passed to ``on_log``."""

    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append(dict(logs))


def test_each_loss_term_is_logged_through_the_trainer(tmp_path):
    teacher, student = models()
    logs = Logs()
    args = hf_args(tmp_path, max_steps=4, report_to=["tensorboard"])
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, distillation=distillation(),
                                  train_dataset=ToyTask(32), eval_dataset=ToyTask(12, seed=2),
                                  data_collator=collate, callbacks=[logs])
    trainer.train()
    terms = {"kd", "hard_label", "hidden_mse/S1-T2", "hidden_mse/S2-T4"}
    train_rows = [row for row in logs.rows if "loss" in row]
    assert len(train_rows) == 4 and all(terms <= set(row) for row in train_rows)
    row = train_rows[0]  # the loss is the weighted sum of its terms (no schedules here)
    assert row["loss"] == pytest.approx(row["kd"] + 0.5 * row["hard_label"] + 2 * row["hidden_mse/S1-T2"]
                                        + row["hidden_mse/S2-T4"], rel=1e-4)
    metrics = trainer.evaluate()
    assert {f"eval_{t}" for t in terms} | {"eval_loss"} <= set(metrics)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = [EventAccumulator(str(p.parent)).Reload() for p in tmp_path.rglob("events.out.tfevents.*")]
    tags = {tag for acc in events for tag in acc.Tags()["scalars"]}
    assert {"train/kd", "train/hidden_mse/S1-T2", "eval/kd"} <= tags, tags


def test_teacher_stays_frozen_in_eval_mode_and_out_of_the_model(tmp_path):
    teacher, student = models()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=hf_args(tmp_path, max_steps=3),
                                  distillation=distillation(), train_dataset=ToyTask(32), data_collator=collate)
    trainer.train()
    assert trainer.teachers["teacher"].model is teacher and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert_same_state(before, teacher.state_dict(), atol=0)
    assert not ({id(p) for p in teacher.parameters()} & {id(p) for p in trainer.model.parameters()})


# ---- export, checkpoints, resume ---------------------------------------------------------

def test_save_model_writes_the_student_alone_for_plain_transformers(tmp_path):
    trainer = run_hf(tmp_path / "run", max_steps=2)
    trainer.save_model(str(tmp_path / "export"))
    files = {p.name for p in (tmp_path / "export").iterdir()}
    assert STRATEGY_WEIGHTS_NAME not in files and "training_args.json" in files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files), files
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    batch = collate([ToyTask(4, seed=3)[i] for i in range(4)])
    student = trainer.student.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, student(**batch).logits)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_from_checkpoint_gives_the_uninterrupted_weights(tmp_path, accumulation):
    """Dropout on: the resumed run must also restore the RNG streams and skip the batches already seen."""
    def run(out, stop=None, resume=None):
        teacher, student = tiny_bert(4, 48, seed=1, dropout=0.1), tiny_bert(2, 32, seed=2, dropout=0.1)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, distillation=distillation(), train_dataset=ToyTask(64),
            args=hf_args(out, accumulation, save_strategy="steps", save_steps=3, max_steps=6,
                         train_sampling_strategy="random"),
            data_collator=collate, callbacks=[StopAt(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = trained_state(run(tmp_path / "whole"))
    run(tmp_path / "cut", stop=4)
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    saved = load_file(str(checkpoint / STRATEGY_WEIGHTS_NAME))
    assert set(saved) == {"objective.projections.0.weight", "objective.projections.0.bias",
                          "objective.projections.1.weight", "objective.projections.1.bias"}
    assert not any(k.startswith(("student.", "strategy.", "teacher")) for k in load_file(
        str(checkpoint / "model.safetensors"))), "the checkpoint's model file is the student's, by its own names"
    resumed = run(tmp_path / "cut", resume=str(checkpoint))
    assert resumed.state.global_step == 6
    assert_same_state(whole, trained_state(resumed))


def test_resume_from_a_checkpoint_without_projections_is_refused(tmp_path):
    trainer = run_hf(tmp_path / "run", max_steps=3, save_strategy="steps", save_steps=3)
    (tmp_path / "run" / "checkpoint-3" / STRATEGY_WEIGHTS_NAME).unlink()
    with pytest.raises(ValueError, match="cannot be restored"):
        run_hf(tmp_path / "run", max_steps=4, resume=str(tmp_path / "run" / "checkpoint-3"))
    assert trainer.state.global_step == 3


# ---- clear errors --------------------------------------------------------------------------

def test_an_optimizer_without_the_projections_is_refused(tmp_path):
    teacher, student = models()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=hf_args(tmp_path, max_steps=1),
                                  distillation=distillation(), train_dataset=ToyTask(16), data_collator=collate,
                                  optimizers=(optimizer, None))
    with pytest.raises(ValueError, match="does not hold the strategy's projections"):
        trainer.train()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"distillation": None}, TypeError, "distillation=DistillationConfig"),
    ({"teacher_model": None}, ValueError, "needs a teacher"),
    ({"distillation": DistillationConfig(strategy="multi_task")}, NotImplementedError, "distill_toolkit.Trainer"),
    ({"compute_loss_func": lambda *a, **k: 0}, ValueError, "the loss is the distillation strategy's"),
])
def test_unsupported_arguments_are_clear_errors(tmp_path, kwargs, error, message):
    teacher, student = models()
    given = dict(model=student, teacher_model=teacher, args=hf_args(tmp_path), distillation=distillation(),
                 train_dataset=ToyTask(8), data_collator=collate)
    with pytest.raises(error, match=message):
        DistillationTrainer(**{**given, **kwargs})


# ---- 2 CPU processes under accelerate launch (DDP, gloo) -----------------------------------

def _launch(out: Path, *args: str, launch: str = "ddp.yaml"):
    from test_distributed import LAUNCH, free_port, run_job

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / launch),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           str(SCRIPT), str(out), *args]
    # DDP on CPUs needs ACCELERATE_USE_CPU; DeepSpeed must not see it (it would silently drop DeepSpeed)
    return run_job(cmd, env={"ACCELERATE_USE_CPU": "1"} if launch == "ddp.yaml" else None)


def _reports(out: Path) -> list[dict]:
    return [json.loads((out / f"report_rank{r}.json").read_text()) for r in range(2)]


def _script():
    return load_script(SCRIPT, "hf_trainer_run")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, global batch 8."""
    out = tmp_path_factory.mktemp("single")
    report = _script().run([str(out), "--batch-size", "8"])
    return report, exported(out / "final")


def exported(folder: Path) -> dict:
    """The weights of an exported student as plain Transformers loads them."""
    return AutoModelForSequenceClassification.from_pretrained(folder, attn_implementation="eager").state_dict()


def _check_cut_and_resume(cut: Path, final: dict, *args: str, launch: str = "ddp.yaml") -> None:
    """A run stopped after step 4 resumes from checkpoint-3 and ends with the weights of one never stopped."""
    from test_distributed import ok

    ok(_launch(cut, "--batch-size", "4", "--save-steps", "3", "--stop-at", "4", *args, launch=launch))
    assert _reports(cut)[0]["global_step"] == 4
    ok(_launch(cut, "--batch-size", "4", "--save-steps", "3", "--resume", str(cut / "checkpoint-3"), *args,
               launch=launch))
    assert _reports(cut)[0]["global_step"] == 6
    assert_same_state(final, exported(cut / "final"), atol=1e-6)


def _check_matches_single(out: Path, single) -> list[dict]:
    report, weights = single
    facts = _reports(out)
    for f in facts:
        assert f["world"] == 2 and not f["teacher_training"] and not f["teacher_requires_grad"]
        assert f["eval"]["eval_count"] == 13 and f["eval"]["eval_accuracy"] == pytest.approx(
            report["eval"]["eval_accuracy"])
        assert "eval_kd" in f["eval"]
    assert facts[0]["global_step"] == report["global_step"] == 6
    torch.testing.assert_close(torch.tensor(facts[0]["history"]), torch.tensor(report["history"]), rtol=1e-5,
                               atol=1e-6)
    assert_same_state(weights, exported(out / "final"), atol=1e-5)
    return facts


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_two_processes_match_one_and_resume(tmp_path, single):
    """launch/ddp.yaml: 2 ranks x batch 4 == 1 process x batch 8, and a cut run resumes to the same end."""
    from test_distributed import ok

    ok(_launch(tmp_path / "ddp", "--batch-size", "4", "--save-steps", "3"))
    for f in _check_matches_single(tmp_path / "ddp", single):  # a silent fallback would show world 1 / NO
        assert (f["distributed_type"], f["wrapped_type"]) == ("MULTI_CPU", "DistributedDataParallel")
        assert f["teacher_type"] == "BertForSequenceClassification", "the teacher is never wrapped in DDP"
    _check_cut_and_resume(tmp_path / "cut", exported(tmp_path / "ddp" / "final"))


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_student_and_teacher_engine_match_one_process_and_resume(tmp_path, single):
    """launch/zero3.yaml: a ZeRO-3 student and a teacher in a ZeRO-3 inference engine (half of it per rank),
    both loaded by from_pretrained straight into partitions (the probe batch runs with gathered weights)."""
    from test_distributed import ok

    zero3 = ("--deepspeed", str(ROOT / "ds_configs" / "zero3.json"), "--from-pretrained")
    ok(_launch(tmp_path / "zero3", "--batch-size", "4", *zero3, launch="zero3.yaml"))
    for f in _check_matches_single(tmp_path / "zero3", single):
        assert (f["distributed_type"], f["wrapped_type"], f["teacher_type"]) == (
            "DEEPSPEED", "DeepSpeedEngine", "DeepSpeedEngine")
        assert f["student_partitioned_at_start"], "from_pretrained under ZeRO-3 loads partitions"
        held, full = (sum(v[i] for v in f["teacher_shards"].values()) for i in (0, 1))
        assert held <= 0.55 * full, f"rank {f['rank']} holds {held} of the teacher's {full} elements"
    _check_cut_and_resume(tmp_path / "cut", exported(tmp_path / "zero3" / "final"),
                          *zero3, launch="zero3.yaml")


def test_resume_with_tied_weights_and_a_checkpoint_that_from_pretrained_loads(tmp_path):
    """GPT-2 ties its output head to the input embeddings: a checkpoint stores the tensor once and resumes."""
    from lm_helpers import tiny_gpt2
    from test_causal_lm import Texts, collate as lm_collate

    def run(out, stop=None, resume=None):
        args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, learning_rate=3e-2,
                                 adam_epsilon=0.1, max_steps=4, save_strategy="steps", save_steps=2,
                                 optim="adamw_torch", report_to="none", use_cpu=True, disable_tqdm=True, seed=3)
        trainer = DistillationTrainer(model=tiny_gpt2(2, 32, seed=2, vocab=96),
                                      teacher_model=tiny_gpt2(3, 48, seed=1, vocab=96), args=args,
                                      distillation=DistillationConfig(strategy="causal_lm", hard_label_weight=0.5),
                                      train_dataset=Texts(16), data_collator=lm_collate,
                                      callbacks=[StopAt(stop)] if stop else None)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = trained_state(run(tmp_path / "whole"))
    run(tmp_path / "cut", stop=3)
    saved = load_file(str(tmp_path / "cut" / "checkpoint-2" / "model.safetensors"))
    assert "transformer.wte.weight" in saved and "lm_head.weight" not in saved
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "cut" / "checkpoint-2")
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    torch.testing.assert_close(loaded.transformer.wte.weight.detach(), saved["transformer.wte.weight"])
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-2"))
    assert_same_state(whole, trained_state(resumed))


def test_zero3_teacher_engine_config_is_derived_from_the_students():
    from distill_toolkit.hf.teachers import teacher_engine_config

    student = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
               "optimizer": {"type": "AdamW"}, "scheduler": {"type": "WarmupLR"},
               "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": 7}}
    config = teacher_engine_config(student, tiny_bert(4, 48))
    assert not {"optimizer", "scheduler", "train_batch_size"} & set(config), "inference only; DeepSpeed sizes the batch"
    zero = config["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"]) == (48 * 48, 7)
    assert zero["stage3_param_persistence_threshold"] == 480 and student["optimizer"], "the student's is untouched"
    with pytest.raises(ValueError, match=r"auto.*bf16.enabled"):
        teacher_engine_config({**student, "bf16": {"enabled": "auto"}}, tiny_bert(4, 48))
