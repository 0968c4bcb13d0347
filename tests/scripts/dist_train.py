"""One distillation run for the distributed tests, under any launcher (python, torchrun, accelerate launch).

    dist_train.py OUTPUT_DIR [--batch-size 4] [--max-steps 8] [--placement replicated|zero3|fsdp|cpu_offload]
                  [--teacher-dir DIR] [--save-every N] [--kill-at STEP] [--fail-rank R --fail-at STEP] [--resume]
                  [--trackers]

Every rank writes OUTPUT_DIR/report_rank{R}.json: world size and distributed type as the rank
saw them, what it held of each student and teacher parameter, the loss history, the eval
metrics (with the number of examples scored) and, on rank 0, the trained student's logits on
a fixed batch.
"""

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import ToyTask, collate, tiny_bert  # noqa: E402

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, TrainingConfig  # noqa: E402
from distill_toolkit.utils.shards import parameter_shards  # noqa: E402

EVAL_EXAMPLES = 13  # uneven on purpose: 2 ranks x batches of 4 leave a short last batch


class FixedLength(ToyTask):
    """Every sequence 12 tokens long, so per-token means over 2 ranks equal the mean over the global batch."""

    def __init__(self, n, seed=0):
        super().__init__(n, seed)
        for item in self.items:
            item["input_ids"] = (item["input_ids"] * 12)[:12]


def fixed_batch() -> dict:
    batch = collate([FixedLength(6, seed=9)[i] for i in range(6)])
    batch.pop("labels")
    return batch


def count_metric(predictions, labels):
    return {"accuracy": float((predictions == labels).mean()), "count": int(len(labels))}


class Report(Callback):
    """Records what this rank holds once training runs; kills or fails on request."""

    def __init__(self, args, rank):
        self.args, self.rank, self.facts = args, rank, {}

    def on_step_end(self, trainer, step, logs):
        if not self.facts:
            runner = next(iter(trainer.teachers.values()))
            self.facts = {
                "student_shards": parameter_shards(trainer.module),  # DDP / DeepSpeed wrapper or bare
                "teacher_shards": parameter_shards(runner.model),
                "teacher_type": type(runner.model).__name__,
                "teacher_requires_grad": any(p.requires_grad for p in runner.model.parameters()),
                "teacher_training": runner.model.training if not hasattr(runner.model, "module")
                else runner.model.module.training,
            }
        if self.args.kill_at == step and self.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.args.fail_at == step and self.rank == self.args.fail_rank:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {step}")


def parse(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--placement", default="replicated")
    parser.add_argument("--teacher-dir")
    parser.add_argument("--save-every", type=int)
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--trackers", action="store_true")
    return parser.parse_args(argv)


def run(argv=None) -> dict:
    args = parse(argv)
    training = TrainingConfig(output_dir=args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
                              eval_batch_size=4, learning_rate=2e-3, max_grad_norm=0.5, trackers=(
                                  ["tensorboard"] if args.trackers else []), progress_bar=False,
                              eval_every_epochs=None, seed=3, save_every_steps=args.save_every, save_total_limit=3,
                              resume_from="latest" if args.resume else None, teacher_placement=args.placement)
    distillation = DistillationConfig(temperature=2.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=4, student_layer=2, projection="linear")])
    if args.teacher_dir:  # built by the Trainer, so a ZeRO-3 teacher loads straight into partitions
        from transformers import AutoModelForSequenceClassification

        def teacher():
            return AutoModelForSequenceClassification.from_pretrained(args.teacher_dir, attn_implementation="eager")
    else:
        teacher = tiny_bert(4, 48, seed=1)
    rank = int(os.environ.get("RANK", "0"))
    report = Report(args, rank)
    trainer = Trainer(tiny_bert(2, 32, seed=2), training, distillation, FixedLength(64), teacher=teacher,
                      eval_data=FixedLength(EVAL_EXAMPLES, seed=5), collate_fn=collate, metric_fn=count_metric,
                      callbacks=[report])
    acc = trainer.accelerator
    result = trainer.train()
    module = acc.unwrap_model(trainer.module)
    module.eval()
    with torch.no_grad():  # every rank runs it: a ZeRO-3 student gathers its layers collectively
        logits = module.student_view({k: v.to(acc.device) for k, v in fixed_batch().items()}).logits[0]
    facts = {"rank": acc.process_index, "world": acc.num_processes, "distributed_type": acc.distributed_type.name,
             "env_world_size": os.environ.get("WORLD_SIZE"), "is_main": acc.is_main_process,
             "history": [h["train/loss"] for h in result["history"]], "eval": result["eval"],
             "global_step": result["global_step"], **report.facts}
    if acc.is_main_process:
        facts["logits"] = logits.float().cpu().tolist()
    Path(args.output_dir, f"report_rank{acc.process_index}.json").write_text(json.dumps(facts))
    return facts


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    record(run)()
