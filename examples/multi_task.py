"""Multi-task distillation over the four VADER domains into one student with four heads.

    python examples/multi_task.py                     # a few minutes on 2 CPU cores
    python examples/multi_task.py --steps 40 --teacher-steps 40      # a smoke run

Tasks: binary sentiment of movie-review sentences, tweets, Amazon product reviews and New York
Times editorial snippets (the VADER corpora). The teacher is all-MiniLM-L6-v2 with one head per
domain, fine-tuned on the four together (``supervised`` on multi-task data, tasks drawn in
proportion to their sizes). The student, MiniLM's blocks 1, 3, 5 with four fresh heads, is
distilled with ``multi_task`` (logits KD + hidden-state matches per task), and trained alone on
the same batches for comparison. The table gives per-domain test accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from distill_toolkit import DistillationConfig, Match, Trainer  # noqa: E402
from distill_toolkit.data import SENTIMENT_DOMAINS  # noqa: E402
from distill_toolkit.models import student_from_teacher  # noqa: E402
from distill_toolkit.multi_head import MultiHeadClassifier  # noqa: E402
from distill_toolkit.utils import count_parameters  # noqa: E402

DOMAINS = ["movies", "tweets", "amazon", "nyt"]


def three_block_student(num_labels: dict) -> MultiHeadClassifier:
    """MiniLM's blocks 1, 3, 5 (embeddings copied) under fresh heads."""
    torch.manual_seed(0)
    full = MultiHeadClassifier.from_encoder("builtin:minilm", num_labels, attn_implementation="eager")
    return common.freeze_word_embeddings(MultiHeadClassifier(student_from_teacher(full.encoder, [1, 3, 5]),
                                                             num_labels))


def per_task_row(label: str, model, data, tokenizer, seconds=None, trainer=None) -> dict:
    """Per-domain test accuracy by ``trainer.evaluate({domain: test split})`` (the model's own trainer, else
    one that only evaluates), and their mean."""
    tests = {d: data[d]["test"] for d in DOMAINS}
    scores = (trainer or common.evaluator(model, tests, tokenizer)).evaluate(tests)
    accs = {d: round(scores[f"{d}/accuracy"], 4) for d in DOMAINS}
    return {"model": label, "params_M": round(count_parameters(model) / 1e6, 1), **accs,
            "mean": round(sum(accs.values()) / len(accs), 4), **({"train_s": round(seconds)} if seconds else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/examples")
    parser.add_argument("--steps", type=int, default=150, help="multi-task steps of each student")
    parser.add_argument("--teacher-steps", type=int, default=200, help="multi-task steps of the teacher")
    parser.add_argument("--max-length", type=int, default=common.MAX_LENGTH)
    args = parser.parse_args()
    assert set(DOMAINS) <= set(SENTIMENT_DOMAINS)
    out = Path(args.output_dir)
    data = {d: common.sentiment(d, args.max_length)[0] for d in DOMAINS}
    tokenizer = common.sentiment("movies", args.max_length)[1]
    train = {d: data[d]["train"] for d in DOMAINS}
    heads = {d: 2 for d in DOMAINS}
    collate = common.collator(tokenizer)

    teacher_dir = out / "teachers" / f"multi_head_steps{args.teacher_steps}_len{args.max_length}_bs{common.BATCH_SIZE}"
    if (teacher_dir / "final" / "heads.json").is_file():
        teacher = MultiHeadClassifier.from_pretrained(teacher_dir / "final", attn_implementation="eager")
    else:
        torch.manual_seed(0)
        teacher = common.freeze_word_embeddings(
            MultiHeadClassifier.from_encoder("builtin:minilm", heads, attn_implementation="eager"))
        print(f"fine-tuning the multi-head teacher ({args.teacher_steps} steps)", flush=True)
        Trainer(teacher, common.training(teacher_dir, args.teacher_steps), DistillationConfig(strategy="supervised"),
                train, collate_fn=collate, tokenizer=tokenizer).train()
    rows = [per_task_row("teacher: MiniLM-L6, 4 heads", teacher, data, tokenizer)]

    kd = DistillationConfig(strategy="multi_task", temperature=2.0, hard_label_weight=0.5,
                            matches=[Match(teacher_layer=6, student_layer=3), Match(teacher_layer=3, student_layer=2)])
    runs = [("student 3 blocks, distilled (multi_task)", kd, teacher),
            ("student 3 blocks, no teacher (supervised)", DistillationConfig(strategy="supervised"), None)]
    history = {}
    for label, distill, t in runs:
        student = three_block_student(heads)
        with common.Timer() as timer:
            trainer = Trainer(student, common.training(out / "multi_task" / distill.strategy, args.steps), distill,
                              train, teacher=t, collate_fn=collate, tokenizer=tokenizer)
            result = trainer.train()
        history[distill.strategy] = result["history"][-1]
        rows.append(per_task_row(label, student, data, tokenizer, timer.seconds, trainer))

    header = f"{'model (test accuracy)':44} {'params':>7} " + " ".join(f"{d:>7}" for d in DOMAINS) + f" {'mean':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:44} {r['params_M']:>6.1f}M " + " ".join(f"{r[d]:>7.4f}" for d in DOMAINS)
              + f" {r['mean']:>7.4f}")
    print("per-task terms logged at the last step:",
          {k: round(v, 4) for k, v in history["multi_task"].items() if k.count("/") >= 2})
    print(json.dumps({"rows": rows, "steps": args.steps, "teacher_steps": args.teacher_steps}))


if __name__ == "__main__":
    main()
