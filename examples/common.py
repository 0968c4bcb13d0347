"""Shared parts of the strategy examples (multi-teacher, multi-task, BERT-EMD): real data, small budgets.

Every example runs on the VADER sentiment corpora and all-MiniLM-L6-v2 fetched once by the data
module, with short sequences and capped steps so that it finishes in minutes on 2 CPU cores.
Fine-tuned teachers are cached under ``<output-dir>/teachers`` and reused by later runs. To save
optimiser time on CPUs, the word-embedding matrix (half of MiniLM's 22.7M parameters) is frozen
in every model trained here.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.data import PaddingCollator, load_sentiment, tokenize_classification
from distill_toolkit.models import load_classifier, load_tokenizer
from distill_toolkit.utils import count_parameters

MAX_LENGTH = 32
BATCH_SIZE = 16
TEACHER_STEPS = 120

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def sentiment(domain: str, max_length: int = MAX_LENGTH):
    """Tokenised train/dev/test splits of one VADER domain, and the MiniLM tokenizer."""
    tokenizer = load_tokenizer("builtin:minilm")
    data = tokenize_classification(load_sentiment(domain), tokenizer, max_length=max_length)
    return data, tokenizer


def collator(tokenizer):
    return PaddingCollator(tokenizer)


def training(output_dir, steps: int, seed: int = 0, learning_rate: float = 1e-4, **kw) -> TrainingConfig:
    base = dict(output_dir=str(output_dir), max_steps=steps, batch_size=BATCH_SIZE, eval_batch_size=128,
                learning_rate=learning_rate, warmup_ratio=0.1, seed=seed, trackers=[], progress_bar=False,
                eval_every_epochs=None, group_by_length=False, overwrite=True)  # each run starts afresh
    base.update(kw)
    return TrainingConfig(**base)


def fine_tuned_teacher(root: Path, domain: str, seed: int, steps: int = TEACHER_STEPS,
                       max_length: int = MAX_LENGTH, layers: int = 6) -> Path:
    """MiniLM (its first ``layers`` blocks) fine-tuned on ``domain`` with seed ``seed``; cached."""
    out = Path(root) / f"{domain}_L{layers}_seed{seed}_steps{steps}_len{max_length}_bs{BATCH_SIZE}"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    data, tokenizer = sentiment(domain, max_length)
    overrides = {} if layers == 6 else {"num_hidden_layers": layers}
    model = load_classifier("builtin:minilm", attn_implementation="eager", config_overrides=overrides)
    print(f"fine-tuning teacher {out.name} ({steps} steps)", flush=True)
    freeze_word_embeddings(model)
    Trainer(model, training(out, steps, seed=seed), DistillationConfig(strategy="supervised"), data["train"],
            collate_fn=collator(tokenizer), tokenizer=tokenizer).train()
    return out / "final"


def freeze_word_embeddings(model):
    """Freeze the input word embeddings (11.7M of MiniLM's parameters): far cheaper steps on CPUs."""
    model.get_input_embeddings().weight.requires_grad_(False)
    return model


def load_teacher(path):
    return load_classifier(str(path), attn_implementation="eager")


def evaluator(model, data, tokenizer=None, *, collate_fn=None, task=None, label_names=None) -> Trainer:
    """A :class:`Trainer` that only evaluates ``model``, one this run does not train (e.g. a cached teacher).

    ``evaluator(model, data, tokenizer).evaluate(data)`` gives the metrics of the model's task
    (``distill_toolkit.tasks.get(task).metric``; the task is read from the model unless given), as
    ``trainer.evaluate(data)`` does for a student after training. ``data`` is a ``Dataset``, or for a
    multi-head model ``{task: Dataset}``; ``collate_fn`` defaults to padding with ``tokenizer``.
    """
    trainer = Trainer(model, training("outputs/evaluate_only", 1), DistillationConfig(strategy="supervised"), data,
                      collate_fn=collate_fn or collator(tokenizer), label_names=label_names, task=task)
    model.to(trainer.accelerator.device)  # nothing is written: train() never runs
    return trainer


def row(label: str, model, data, tokenizer, seconds=None, trainer=None) -> dict:
    """A table row: test accuracy by ``trainer.evaluate`` (the model's own trainer, else :func:`evaluator`)."""
    test = (trainer or evaluator(model, data["test"], tokenizer)).evaluate(data["test"])
    return {"model": label, "params_M": round(count_parameters(model) / 1e6, 1),
            "test_acc": round(test["accuracy"], 4),
            **({"train_s": round(seconds)} if seconds is not None else {})}


def print_table(rows: list[dict], teacher_acc: float) -> None:
    header = f"{'model':60} {'params':>7} {'test acc':>8} {'% teacher':>9} {'train s':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['model']:60} {r['params_M']:>6.1f}M {r['test_acc']:>8.4f} "
              f"{100 * r['test_acc'] / teacher_acc:>8.1f}% {r.get('train_s', ''):>7}")


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


# ---- task examples (ner.py, multi_label.py): throughput, result rows -------------------

@torch.no_grad()
def examples_per_second(model, dataset, tokenizer, batch_size: int = 64) -> float:
    """Inference examples per second of ``model`` over ``dataset``: the forward passes only (batches are
    collated first, one warm-up pass precedes)."""
    model.eval()
    device = next(model.parameters()).device
    collate = collator(tokenizer)
    batches = [{k: v.to(device) for k, v in collate([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
                .items() if k != "labels"} for s in range(0, len(dataset), batch_size)]
    model(**batches[0])
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return len(dataset) / (time.perf_counter() - start)


def result_row(label: str, model, metric: str, dev: dict, test: dict, examples_per_s: float, distilled: bool,
               command: str, also: tuple = (), **extra) -> dict:
    """One row of a results table (the format ``benchmarks/results.py`` collects).

    ``metric`` names the headline metric (``dev``/``test`` hold it); each name in ``also`` adds
    ``dev_<name>`` and ``test_<name>``.
    """
    more = {f"{split}_{name}": round(values[name], 4)
            for name in also for split, values in (("dev", dev), ("test", test))}
    return {"model": label, "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size,
            "params": count_parameters(model), "metric": metric, "dev": round(dev[metric], 4),
            "test": round(test[metric], 4), **more, "examples_per_s": round(examples_per_s, 1),
            "distilled": distilled, "command": command, **extra}


def print_rows(rows: list[dict]) -> None:
    """The rows as a table; the first row is the teacher, whose test metric the ratios divide by."""
    teacher = rows[0]["test"]
    also = [k[len("test_"):] for k in rows[0] if k.startswith("test_")]
    names = [rows[0]["metric"]] + also
    header = (f"{'model':36} {'layers':>6} {'hidden':>6} {'params':>7} "
              + " ".join(f"{name + ' ' + split:>15}" for name in names for split in ("dev", "test"))
              + f" {'% teacher':>9} {'ex/s':>6}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        values = [r["dev"], r["test"]] + [r[f"{split}_{name}"] for name in also for split in ("dev", "test")]
        print(f"{r['model']:36} {r['layers']:>6} {r['hidden']:>6} {r['params'] / 1e6:>6.1f}M "
              + " ".join(f"{v:>15.4f}" for v in values)
              + f" {100 * r['test'] / teacher if teacher else float('nan'):>8.1f}% {r['examples_per_s']:>6.0f}")
    print(f"% teacher: test {rows[0]['metric']} over the teacher's. Command: {rows[0]['command']}")


def command_line(script: str, fn, values: dict) -> str:
    """``python examples/<script>`` with a flag for each argument of ``fn`` whose value is not its default."""
    import inspect

    parts = ["python", f"examples/{script}"]
    for name, param in inspect.signature(fn).parameters.items():
        value = values.get(name, param.default)
        if value == param.default:
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(parts)


def task_parser(doc: str, run):
    """The command line shared by the task examples (ner.py, multi_label.py): one flag per argument of
    ``run`` that both have; unset flags keep ``run``'s defaults (listed by ``--help``)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0], argument_default=argparse.SUPPRESS,
                                     epilog=defaults_epilog(run))
    parser.add_argument("--output-dir")
    parser.add_argument("--epochs", type=float, help="epochs of each student")
    parser.add_argument("--teacher-epochs", type=float)
    parser.add_argument("--steps", type=int, help="cap each student at this many steps")
    parser.add_argument("--teacher-steps", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--teacher-learning-rate", type=float)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--hard-label-weight", type=float)
    parser.add_argument("--hidden-weight", type=float, help="weight of each hidden-state match")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--seed", type=int)
    return parser


def defaults_epilog(fn) -> str:
    """A ``--help`` epilog listing ``fn``'s default arguments (the flags of an example mirror them)."""
    import inspect

    return "defaults: " + ", ".join(f"--{name.replace('_', '-')} {p.default}" for name, p in
                                    inspect.signature(fn).parameters.items() if p.default not in (None, False))


def student_pair_rows(teacher, layers: list[int], kd: DistillationConfig, train, row) -> list[dict]:
    """Rows of the two students built from ``teacher``'s ``layers`` (word embeddings frozen): distilled
    with ``kd``, and trained on the labels alone for the same steps. ``train(model, name, distill,
    teacher=...)`` runs one and returns ``(trainer, result)``; ``row(label, model, distilled, trainer=...,
    **extra)`` measures it (``trainer.evaluate``), outside the timed training."""
    from distill_toolkit.models import student_from_teacher

    rows = []
    for label, distill, t in [(f"student {len(layers)} blocks, distilled", kd, teacher),
                              (f"student {len(layers)} blocks, no teacher", DistillationConfig(strategy="supervised"),
                               None)]:
        student = freeze_word_embeddings(student_from_teacher(teacher, layers))
        with Timer() as timer:
            trainer, result = train(student, distill.strategy, distill, teacher=t)
        rows.append(row(label, student, t is not None, trainer=trainer, steps=result["global_step"],
                        train_s=round(timer.seconds)))
    return rows
