"""Cached teacher and unlabelled augmentation text, on real data.

    python examples/cached_teacher.py [--steps 150] [--output-dir outputs/cached_teacher]

A MiniLM-L6 teacher fine-tuned on the VADER movie-review sentences (cached under
``<output-dir>/teachers``) is run ONCE over the training sentences plus unlabelled augmentation text
(the Amazon-review sentences of the same corpus, labels dropped), and its logits are written to a disk
cache (``build_teacher_cache``). Then a 3-block student is distilled three ways:

  (a) online   KD + hard labels on the movie training set, the teacher running on every batch;
  (b) cached   the same run reading the teacher's logits from the cache (no teacher forward):
               it ends with the same weights as (a), in less time;
  (c) cached + augmentation   pure KD (``hard_label_weight: 0``) on movies + unlabelled Amazon text:
               the teacher supplies every target, as in TextBrewer's data-augmentation experiments.

Prints a table (test accuracy on the movie test split, training seconds) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import torch
from common import Timer, collator, fine_tuned_teacher, load_teacher, print_table, row, sentiment, training

from distill_toolkit import DistillationConfig, Trainer
from distill_toolkit.data import subsample, with_ids
from distill_toolkit.models import student_from_teacher
from distill_toolkit.teachers import build_teacher_cache


def student(teacher_path):
    return student_from_teacher(load_teacher(teacher_path), [1, 3, 5])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--output-dir", default="outputs/cached_teacher")
    parser.add_argument("--augment-examples", type=int, default=2000)
    args = parser.parse_args()
    root = Path(args.output_dir)

    teacher_path = fine_tuned_teacher(root / "teachers", "movies", seed=0)
    data, tokenizer = sentiment("movies")
    train = with_ids(data["train"])
    amazon, _ = sentiment("amazon")
    extra = subsample(amazon["train"], args.augment_examples, seed=0)
    extra = extra.map(lambda e, i: {"labels": -100, "id": 1_000_000 + i}, with_indices=True)  # unlabelled
    augmented = datasets.concatenate_datasets([train, extra.cast(train.features)])
    collate = collator(tokenizer)

    kd = DistillationConfig(temperature=4.0, hard_label_weight=0.5)
    pure_kd = DistillationConfig(temperature=4.0, hard_label_weight=0.0)
    with Timer() as build:
        cache = build_teacher_cache(load_teacher(teacher_path), augmented, root / "teacher_cache", collate_fn=collate,
                                    distillation=kd, tokenizer=tokenizer, batch_size=128)
    print(f"teacher cache: {len(cache)} examples, {cache.bytes_per_token:.0f} bytes per example's logits, "
          f"built in {build.seconds:.0f} s ({cache.build_stats})", flush=True)

    rows, results = [], {}
    teacher_row = row("MiniLM-L6 teacher", load_teacher(teacher_path), data, tokenizer)
    rows.append(teacher_row)
    runs = [("(a) 3-block student, online teacher", "online", kd, train, "teacher"),
            ("(b) 3-block student, cached teacher", "cached", kd, train, "cache"),
            ("(c) cached, + unlabelled augmentation, pure KD", "augmented", pure_kd, augmented, "cache")]
    for label, name, dist, train_data, source in runs:
        model = student(teacher_path)
        given = load_teacher(teacher_path) if source == "teacher" else cache
        epochs_steps = args.steps * (2 if name == "augmented" else 1)
        start = time.perf_counter()
        trainer = Trainer(model, training(root / name, epochs_steps), dist, train_data, teacher=given,
                          collate_fn=collate, tokenizer=tokenizer)
        trainer.train()
        seconds = time.perf_counter() - start
        rows.append(row(label, model, data, tokenizer, seconds, trainer))  # trainer.evaluate(test), untimed
        results[name] = {"test_acc": rows[-1]["test_acc"], "train_s": seconds, "steps": epochs_steps}
        if name == "online":
            online_weights = {k: v.clone() for k, v in model.state_dict().items()}
        if name == "cached":
            results["cached_max_weight_diff"] = max(float((v - online_weights[k]).abs().max())
                                                    for k, v in model.state_dict().items())
    print_table(rows, teacher_row["test_acc"])
    results["teacher_test_acc"] = teacher_row["test_acc"]
    results["cache_build_s"] = build.seconds
    results["cached_vs_online_time_ratio"] = results["cached"]["train_s"] / results["online"]["train_s"]
    print(json.dumps(results))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
