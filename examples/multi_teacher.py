"""Multi-teacher distillation on movie-review sentiment: three MiniLM teachers into one 3-block student.

    python examples/multi_teacher.py                  # a few minutes on 2 CPU cores
    python examples/multi_teacher.py --steps 40 --teacher-steps 40   # a smoke run

Three all-MiniLM-L6-v2 teachers are fine-tuned on the VADER movie-review sentences with
different seeds (cached under ``outputs/examples/teachers``). A 3-block student (MiniLM's
blocks 1, 3, 5, fresh head) is then distilled from teacher 0 alone (``single``) and from all
three (``multi_teacher``: mean of the logits, and per-example confidence weights), each with
hidden-state matches to every teacher. The table gives test accuracy beside the teachers' and
their logit-mean ensemble's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from distill_toolkit import DistillationConfig, Match, Trainer, tasks  # noqa: E402  (tasks: the registry)
from distill_toolkit.models import load_classifier, student_from_teacher  # noqa: E402


@torch.no_grad()
def ensemble_accuracy(teachers, dataset, tokenizer) -> float:
    """Test accuracy of the teachers' mean logits (an ensemble is no one model, so no Trainer scores it)."""
    collate = common.collator(tokenizer)
    batch = collate([dataset[i] for i in range(len(dataset))])
    labels = batch.pop("labels")
    mean = torch.stack([t.eval()(**batch).logits for t in teachers]).mean(0)
    metric = tasks.get("sequence_classification").metric  # the metric the Trainer scores these models with
    return metric(mean.argmax(-1).numpy(), labels.numpy())["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/examples")
    parser.add_argument("--steps", type=int, default=100, help="distillation steps per student")
    parser.add_argument("--teacher-steps", type=int, default=common.TEACHER_STEPS)
    parser.add_argument("--max-length", type=int, default=common.MAX_LENGTH)
    args = parser.parse_args()
    out = Path(args.output_dir)
    data, tokenizer = common.sentiment("movies", args.max_length)

    teachers = [common.load_teacher(common.fine_tuned_teacher(out / "teachers", "movies", seed=s,
                                                              steps=args.teacher_steps, max_length=args.max_length))
                for s in range(3)]
    rows = [common.row(f"teacher {i}: MiniLM-L6, seed {i}", t, data, tokenizer) for i, t in enumerate(teachers)]
    ens = {"model": "ensemble of the 3 teachers (mean logits)", "params_M": round(rows[0]["params_M"] * 3, 1),
           "test_acc": round(ensemble_accuracy(teachers, data["test"], tokenizer), 4)}
    rows.append(ens)

    matches = [Match(teacher_layer=6, student_layer=3, weight=1.0), Match(teacher_layer=3, student_layer=2)]
    runs = [("single", "teacher 0 only (single)", teachers[0], "mean"),
            ("mean", "3 teachers, mean (multi_teacher)", teachers, "mean"),
            ("confidence", "3 teachers, confidence (multi_teacher)", teachers, "confidence")]
    for name, label, teacher, combination in runs:
        distill = DistillationConfig(strategy="single" if name == "single" else "multi_teacher", temperature=2.0,
                                     hard_label_weight=0.5, teacher_combination=combination, matches=matches)
        torch.manual_seed(0)
        student = common.freeze_word_embeddings(
            student_from_teacher(load_classifier("builtin:minilm", attn_implementation="eager"), [1, 3, 5]))
        with common.Timer() as timer:
            trainer = Trainer(student, common.training(out / "multi_teacher" / name, args.steps), distill,
                              data["train"], teacher=teacher, collate_fn=common.collator(tokenizer),
                              tokenizer=tokenizer)
            trainer.train()
        rows.append(common.row(f"student (3 blocks): {label}", student, data, tokenizer, timer.seconds, trainer))
    common.print_table(rows, teacher_acc=sum(r["test_acc"] for r in rows[:3]) / 3)
    print("(% teacher: of the three teachers' mean test accuracy)")
    print(json.dumps({"rows": rows, "steps": args.steps, "teacher_steps": args.teacher_steps}))


if __name__ == "__main__":
    main()
