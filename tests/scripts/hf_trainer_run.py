"""One ``DistillationTrainer`` run, for ``tests/test_hf_trainer.py``.

    accelerate launch --config_file launch/ddp.yaml --num_processes 2 tests/scripts/hf_trainer_run.py OUT \
        [--batch-size 4] [--save-steps 3] [--stop-at 4] [--resume OUT/checkpoint-3]

Each rank writes ``OUT/report_rank{r}.json`` (world size, distributed type, how the student and the
teacher are held, the logged losses, evaluation metrics); ``OUT/final`` is the exported student.
The data are equal-length sequences in a fixed order, so 2 ranks x batch 4 see exactly the global
batch of 1 process x batch 8.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ (helpers)

from distill_toolkit import DistillationConfig, Match  # noqa: E402
from distill_toolkit.hf import DistillationTrainer  # noqa: E402
from distill_toolkit.hf.teachers import partitioned_parameters  # noqa: E402
from helpers import VOCAB, collate, tiny_bert  # noqa: E402

LENGTH = 10


class EqualLengths(torch.utils.data.Dataset):
    """Sequences of LENGTH random tokens; label 1 when token 7 occurs more often than token 9."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            ids = torch.randint(5, VOCAB, (LENGTH,), generator=g)
            self.items.append({"input_ids": ids.tolist(), "labels": int((ids == 7).sum() > (ids == 9).sum())})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class StopAt(TrainerCallback):
    """Ends training after ``step`` optimiser steps (an interrupted run)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def accuracy(prediction) -> dict:
    predicted = np.argmax(prediction.predictions, axis=-1)
    return {"accuracy": float((predicted == prediction.label_ids).mean()), "count": int(len(predicted))}


def models(out: Path, from_pretrained: bool):
    """(student, teacher); with ``from_pretrained`` saved and loaded back, after the TrainingArguments, so that
    under a ZeRO-3 config Transformers loads them straight into ZeRO-3 partitions (the usual route)."""
    student, teacher = tiny_bert(2, 32, seed=2), tiny_bert(4, 48, seed=1)
    if not from_pretrained:
        return student, teacher
    state = PartialState()
    if state.is_main_process:
        student.save_pretrained(out / "init" / "student")
        teacher.save_pretrained(out / "init" / "teacher")
    state.wait_for_everyone()
    return tuple(AutoModelForSequenceClassification.from_pretrained(out / "init" / name, attn_implementation="eager")
                 for name in ("student", "teacher"))


def build(out: Path, batch_size: int, save_steps: int, stop_at: int, deepspeed=None,
          from_pretrained: bool = False) -> DistillationTrainer:
    distillation = DistillationConfig(temperature=2.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=2, student_layer=1, loss="hidden_mse", projection="linear", weight=2.0),
        Match(teacher_layer=4, student_layer=2, loss="hidden_mse", projection="linear")])
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, per_device_eval_batch_size=4,
        learning_rate=3e-2, adam_epsilon=0.1, weight_decay=0.01, max_grad_norm=0.5, warmup_steps=2, max_steps=6,
        lr_scheduler_type="linear", optim="adamw_torch", seed=7, train_sampling_strategy="sequential",
        report_to="none", use_cpu=deepspeed is None, disable_tqdm=True, logging_steps=1, deepspeed=deepspeed,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        accelerator_config={"use_configured_state": True} if deepspeed and not torch.cuda.is_available() else None)
    student, teacher = models(out, from_pretrained)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args,
                               distillation=distillation, projection_learning_rate=5e-2,
                               train_dataset=EqualLengths(64), eval_dataset=EqualLengths(13, seed=5),
                               data_collator=collate, compute_metrics=accuracy,
                               callbacks=[StopAt(stop_at)] if stop_at else None)


def _held(model) -> dict:
    """``{name: [elements held here, full elements]}``; under ZeRO-3 a partitioned parameter holds a slice."""
    return {name: [int(getattr(p, "ds_tensor", p).numel()), int(getattr(p, "ds_numel", p.numel()))]
            for name, p in model.named_parameters()}


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--save-steps", type=int, default=0)
    parser.add_argument("--stop-at", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--deepspeed", default=None, help="a ds_configs/*.json (launch with launch/zero*.yaml)")
    parser.add_argument("--from-pretrained", action="store_true", help="load the models with from_pretrained")
    a = parser.parse_args(argv)
    if a.deepspeed and not torch.cuda.is_available():
        # CPU-only DeepSpeed: Transformers builds its process state without a backend, so on a machine
        # without GPUs each rank would believe it is rank 0 of 1. A gloo state made first, and
        # `use_configured_state`, fix that (GPU launches need neither).
        PartialState(backend="gloo")
    trainer = build(a.out, a.batch_size, a.save_steps, a.stop_at, a.deepspeed, a.from_pretrained)
    student_partitioned = bool(partitioned_parameters(trainer.student))
    trainer.train(resume_from_checkpoint=a.resume)
    metrics = trainer.evaluate()
    trainer.save_model(str(a.out / "final"))
    acc = trainer.accelerator
    teacher = trainer.teachers["teacher"].model
    report = {
        "rank": acc.process_index, "world": acc.num_processes, "distributed_type": str(acc.distributed_type.name),
        "wrapped_type": type(trainer.model_wrapped).__name__, "teacher_type": type(teacher).__name__,
        "teacher_shards": _held(teacher), "student_partitioned_at_start": student_partitioned,
        "teacher_training": getattr(teacher, "module", teacher).training,  # a ZeRO-3 engine holds the model
        "teacher_requires_grad": any(p.requires_grad for p in teacher.parameters()),
        "global_step": trainer.state.global_step, "eval": metrics,
        "history": [[row["loss"], row["kd"], row["hidden_mse/S1-T2"]] for row in trainer.state.log_history
                    if "loss" in row],
    }
    (a.out / f"report_rank{acc.process_index}.json").write_text(json.dumps(report))
    return report


def _close_process_group() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits: a rank that
    leaves first can otherwise abort the other's gloo threads ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1:])
    _close_process_group()
