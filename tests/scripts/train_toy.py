"""Train the toy task for the resume tests; optionally SIGKILL itself after a given step.

    python train_toy.py OUTPUT_DIR [--kill-at STEP] [--resume]
"""

import argparse
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import ToyTask, collate, tiny_bert  # noqa: E402

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, TrainingConfig  # noqa: E402


class KillAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, logs):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--group-by-length", action="store_true")
    args = parser.parse_args()
    training = TrainingConfig(output_dir=args.output_dir, max_steps=24, batch_size=8, learning_rate=2e-3,
                              save_every_steps=5, save_total_limit=3, trackers=[], progress_bar=False,
                              resume_from="latest" if args.resume else None, eval_every_epochs=None, seed=3,
                              group_by_length=args.group_by_length)
    distillation = DistillationConfig(temperature=2.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=4, student_layer=2, projection="linear")])
    teacher = tiny_bert(4, 48, seed=1)
    student = tiny_bert(2, 32, seed=2, dropout=0.1)
    callbacks = [KillAt(args.kill_at)] if args.kill_at else []
    Trainer(student, training, distillation, ToyTask(40), teacher=teacher, collate_fn=collate,
            callbacks=callbacks).train()


if __name__ == "__main__":
    main()
