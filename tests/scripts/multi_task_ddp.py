"""A multi-task distillation run for the 2-process test: each rank records the task of every step.

    multi_task_ddp.py OUTPUT_DIR

Writes OUTPUT_DIR/tasks_rank{R}.json: the world size and, per optimiser step, the tasks whose loss
terms this rank logged (its own micro-batches: 2 per step with gradient accumulation 2).
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import ToyTask, collate  # noqa: E402
from test_multi_task import tiny_multi_head  # noqa: E402

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, TrainingConfig  # noqa: E402


class TasksSeen(Callback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, trainer, step, logs):
        self.steps.append(sorted({k.split("/")[1] for k in logs if k.endswith("/kd")}))


def main() -> None:
    out = Path(sys.argv[1])
    teachers = {"a": tiny_multi_head({"a": 2}, 3, 48, seed=1), "b": tiny_multi_head({"b": 3}, 3, 48, seed=3),
                "c": tiny_multi_head({"c": 2}, 3, 48, seed=4)}
    # a projection per task: each step leaves the other tasks' heads and projections unused
    distill = DistillationConfig(strategy="multi_task", hard_label_weight=0.5, matches=[
        Match(teacher_layer=3, student_layer=2, projection="linear")])
    training = TrainingConfig(output_dir=str(out), max_steps=8, batch_size=4, gradient_accumulation_steps=1,
                              learning_rate=1e-3, trackers=[], progress_bar=False, eval_every_epochs=None, seed=0)
    seen = TasksSeen()
    trainer = Trainer(tiny_multi_head({"a": 2, "b": 3, "c": 2}, seed=2), training, distill,
                      {"a": ToyTask(40, seed=0), "b": ToyTask(24, seed=1), "c": ToyTask(32, seed=2)},
                      teacher=teachers, collate_fn=collate, callbacks=[seen])
    trainer.train()
    acc = trainer.accelerator
    (out / f"tasks_rank{acc.process_index}.json").write_text(json.dumps(
        {"world": acc.num_processes, "steps": seen.steps}))


if __name__ == "__main__":
    main()
