"""Results table: the MiniLM teacher vs students of several shapes on movie-review sentiment, distilled and not.

    python benchmarks/results.py --short              # few epochs, all shapes; about 10 min on 2 idle cores
    python benchmarks/results.py                      # the full table (longer; see docs/results.md)
    python benchmarks/results.py --smoke              # tiny models, a few steps each: the CI check
    python benchmarks/results.py --rows t3_kd,t3_base --reuse   # (re)run some rows, reuse finished ones
    python benchmarks/results.py --table-only         # tabulate the finished rows, train nothing
    python benchmarks/results.py --tasks sentiment,ner,multi_label   # add part A's NER / multi-label rows

TextBrewer's tables, on data that runs here: teacher, a T3-style student (3 of its 6 blocks),
a T4-tiny-style one (4 blocks, hidden 312, random init, projected hidden matches), a deep-narrow
one (6 blocks, hidden 192) and a BiGRU, each trained with the teacher and without it (same
initialisation, data order, steps and seed). Every row is one YAML file in
``examples/configs/results/``, run in this process by the code of ``distill-toolkit train``
(BiGRU rows: ``examples/bigru_sentiment.py``); the table prints the command that reproduces it.

Parameters include the embeddings (as TextBrewer counts them). Examples/second is inference on
the 1,057 test sentences on this machine's CPU (batches of 64, tokenisation excluded, the best of
three passes). Writes ``<output-dir>/results.md``, ``results.json``, ``tradeoff.png`` and
``loss_curves.png`` (also into ``--img-dir``); the last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path("examples/configs/results")  # relative, as the printed commands are
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    config: str
    distilled: Optional[bool]  # None for the teacher
    runner: str = "cli"  # "cli": distill-toolkit train; "bigru": examples/bigru_sentiment.py

    @property
    def shape(self) -> str:
        return self.name.rsplit("_", 1)[0]


ROWS = [
    Row("teacher", "MiniLM-L6 teacher", "teacher.yaml", None),
    Row("t3_kd", "T3 (teacher blocks)", "t3_kd.yaml", True),
    Row("t3_base", "T3 (teacher blocks)", "t3_base.yaml", False),
    Row("t4tiny_kd", "T4-tiny (random init)", "t4tiny_kd.yaml", True),
    Row("t4tiny_base", "T4-tiny (random init)", "t4tiny_base.yaml", False),
    Row("narrow_kd", "deep-narrow (random init)", "narrow_kd.yaml", True),
    Row("narrow_base", "deep-narrow (random init)", "narrow_base.yaml", False),
    Row("bigru_kd", "BiGRU", "bigru_kd.yaml", True, runner="bigru"),
    Row("bigru_base", "BiGRU", "bigru_base.yaml", False, runner="bigru"),
]

_TINY_MATCHES = ("[{teacher_layer: 0, student_layer: 0, projection: linear}, "
                 "{teacher_layer: 2, student_layer: 2, projection: linear}]")
# Overrides per profile: "*" applies to every row, a row name to that row (after "*").
PROFILES: dict[str, dict[str, list[str]]] = {
    "full": {},
    "short": {
        "teacher": ["training.num_epochs=1", "training.learning_rate=1.0e-4"],
        "t3_kd": ["training.num_epochs=1"],
        "t3_base": ["training.num_epochs=1"],
        "*": ["data.max_train_examples=4000"],
        "t4tiny_kd": ["training.num_epochs=1"],
        "t4tiny_base": ["training.num_epochs=1"],
        "narrow_kd": ["training.num_epochs=1"],
        "narrow_base": ["training.num_epochs=1"],
        "bigru_kd": ["training.num_epochs=1"],
        "bigru_base": ["training.num_epochs=1"],
    },
    # Tiny models built from config and a 160-sentence slice: exercises every code path in seconds.
    "smoke": {
        "*": ["data.max_examples=160", "data.max_length=32", "training.max_steps=4", "training.batch_size=16",
              "training.eval_batch_size=32"],
        "teacher": ["student.config={num_hidden_layers: 2}"],
        "t3_kd": ["student.layers=[1]",
                  "distillation.matches=[{teacher_layer: 0, student_layer: 0}, {teacher_layer: 2, student_layer: 1}]"],
        "t3_base": ["student.layers=[1]"],
        "t4tiny_kd": ["student.config={num_hidden_layers: 2, hidden_size: 48, intermediate_size: 96, "
                      "num_attention_heads: 4}", f"distillation.matches={_TINY_MATCHES}"],
        "t4tiny_base": ["student.config={num_hidden_layers: 2, hidden_size: 48, intermediate_size: 96, "
                        "num_attention_heads: 4}"],
        "narrow_kd": ["student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, "
                      "num_attention_heads: 4}", f"distillation.matches={_TINY_MATCHES}"],
        "narrow_base": ["student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, "
                        "num_attention_heads: 4}"],
        "bigru_kd": ["student.config={embed_dim: 384, hidden_size: 16, init_embeddings: teacher}"],
        "bigru_base": ["student.config={embed_dim: 384, hidden_size: 16, init_embeddings: teacher}"],
    },
}


# ---- one row: its command, its run ------------------------------------------------------------
def _lookup(data: dict, dotted: str):
    node = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return object()  # never equal to an override value
        node = node[key]
    return node


def row_overrides(row: Row, profile: str, out: Path) -> list[str]:
    """The ``--set`` overrides that turn ``row``'s YAML file into this profile's run (file values dropped)."""
    table = PROFILES[profile]
    wanted = [f"training.output_dir={out / row.name}"]
    if row.name != "teacher":
        wanted.append(f"teacher.path={out / 'teacher' / 'final'}")
    wanted += table.get("*", []) + table.get(row.name, [])
    data = yaml.safe_load((ROOT / CONFIGS / row.config).read_text())
    kept = {}
    for item in wanted:
        key, raw = item.split("=", 1)
        if _lookup(data, key) != yaml.safe_load(raw) or key in kept:
            kept[key] = item
        if key == "teacher.path" and "teacher" not in data:
            kept.pop(key, None)  # a baseline that never reads a teacher
    return list(kept.values())


def row_command(row: Row, overrides: list[str]) -> str:
    program = ("distill-toolkit train --overwrite" if row.runner == "cli" else
               "python examples/bigru_sentiment.py")  # --overwrite: a rerun replaces the row's earlier run
    return " ".join([program, str(CONFIGS / row.config)] + [f"--set {shlex.quote(o)}" for o in overrides])


def load_row_config(row: Row, overrides: list[str]):
    from distill_toolkit.cli import load_experiment

    return load_experiment(str(ROOT / CONFIGS / row.config), overrides + ["training.overwrite=true"])


def train_row(row: Row, overrides: list[str]) -> dict:
    """Run one row in this process, by the same code as its printed command; returns its summary."""
    config = load_row_config(row, overrides)
    run_dir = Path(config.training.output_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # one run per folder: its event file is this run's curves
    start = time.perf_counter()
    if row.runner == "cli":
        from distill_toolkit.cli import run_experiment

        result = run_experiment(config)
    else:
        import bigru_sentiment

        result = bigru_sentiment.run(config)
    result.pop("history", None)
    result["wall_seconds"] = time.perf_counter() - start
    return result


# ---- measuring a trained row ------------------------------------------------------------------
def load_trained(row: Row, model_dir: Path):
    if row.runner == "bigru":
        import bigru_sentiment

        return bigru_sentiment.load_student(model_dir)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()


def examples_per_second(model, tokenizer, texts: list[str], batch_size: int = 64, max_length: int = 64,
                        passes: int = 3) -> float:
    """Inference throughput on ``texts`` (tokenisation excluded): the best of ``passes`` timed passes."""
    import torch

    batches = [dict(tokenizer(texts[i:i + batch_size], truncation=True, max_length=max_length, padding=True,
                              return_tensors="pt")) for i in range(0, len(texts), batch_size)]
    batches = [{k: v for k, v in b.items() if k in ("input_ids", "attention_mask")} for b in batches]
    best = float("inf")
    with torch.inference_mode():
        model(**batches[0])  # warm-up
        for _ in range(passes):
            start = time.perf_counter()
            for batch in batches:
                model(**batch)
            best = min(best, time.perf_counter() - start)
    return len(texts) / best


def shape_of(row: Row, model) -> tuple[int, int]:
    """(layers, hidden) as TextBrewer's tables give them."""
    if row.runner == "bigru":
        return model.gru.num_layers, model.gru.hidden_size
    return model.config.num_hidden_layers, model.config.hidden_size


def recipe(config) -> dict:
    """The knobs a reader needs to reproduce a row: temperature, matches, lr, epochs/steps."""
    t, d = config.training, config.distillation
    out = {"strategy": d.strategy, "lr": t.learning_rate, "batch_size": t.batch_size,
           "epochs": t.num_epochs if t.max_steps is None else None, "max_steps": t.max_steps}
    if d.strategy != "supervised":
        out.update(temperature=d.temperature, kd_loss=d.kd_loss, kd_weight=d.kd_loss_weight,
                   hard_label_weight=d.hard_label_weight,
                   matches=[f"{m.feature} S{m.student_layer}->T{m.teacher_layer}" + (" proj" if m.projection else "")
                            for m in d.matches])
    if config.data.max_train_examples:
        out["train_examples"] = config.data.max_train_examples
    return out


def recipe_text(r: dict) -> str:
    length = f"{r['epochs']:g} ep" if r.get("epochs") is not None else f"{r['max_steps']} steps"
    if r.get("train_examples"):
        length += f" on {r['train_examples']} ex"
    if r["strategy"] == "supervised":
        return f"labels only; lr {r['lr']:g}, {length}"
    matches = f", {len(r['matches'])} hidden matches" if r["matches"] else ""
    return (f"{r['kd_loss']} T={r['temperature']:g} (w {r['kd_weight']:g}) + labels (w {r['hard_label_weight']:g})"
            f"{matches}; lr {r['lr']:g}, {length}")


def measure(row: Row, summary: dict, config, texts: list[str]) -> dict:
    from distill_toolkit.models import load_tokenizer
    from distill_toolkit.utils import count_parameters

    model_dir = Path(summary["export_dir"])
    model = load_trained(row, model_dir)
    layers, hidden = shape_of(row, model)
    return {
        "row": row.name, "model": row.label, "distilled": row.distilled, "layers": layers, "hidden": hidden,
        "params": count_parameters(model),
        "dev_accuracy": summary["eval"]["accuracy"], "test_accuracy": summary["test"]["accuracy"],
        "examples_per_second": examples_per_second(model, load_tokenizer(str(model_dir)), texts,
                                                   max_length=config.data.max_length),
        "seed": config.training.seed, "steps": summary["global_step"],
        "train_seconds": summary.get("train_seconds"), "recipe": recipe(config),
        "run_dir": str(Path(config.training.output_dir)),
    }


# ---- the table --------------------------------------------------------------------------------
def add_ratios(rows: list[dict]) -> list[dict]:
    teacher = next((r for r in rows if r["row"] == "teacher"), None)
    for r in rows:
        r["size_ratio"] = r["params"] / teacher["params"] if teacher else None
        r["of_teacher_ratio"] = r["test_accuracy"] / teacher["test_accuracy"] if teacher else None
        r["dev_of_teacher_ratio"] = r["dev_accuracy"] / teacher["dev_accuracy"] if teacher else None
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | distilled | layers | hidden | params | size vs teacher | dev acc | test acc | "
            "% of teacher (test) | examples/s | seed | recipe |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        distilled = "—" if r["distilled"] is None else ("**yes**" if r["distilled"] else "no")
        pct = f"{100 * r['of_teacher_ratio']:.1f}%" if r.get("of_teacher_ratio") else ""
        size = f"{100 * r['size_ratio']:.0f}%" if r.get("size_ratio") else ""
        lines.append(f"| {r['model']} | {distilled} | {r['layers']} | {r['hidden']} | {r['params'] / 1e6:.1f}M | "
                     f"{size} | {r['dev_accuracy']:.4f} | {r['test_accuracy']:.4f} | {pct} | "
                     f"{r['examples_per_second']:.0f} | {r['seed']} | {recipe_text(r['recipe'])} |")
    return "\n".join(lines)


def commands_table(rows: list[dict]) -> str:
    lines = ["| row | command |", "|---|---|"]
    lines += [f"| {r['row']} | `{r['command']}` |" for r in rows]
    return "\n".join(lines)


def generic_table(rows: list[dict]) -> str:
    """Rows of another task (NER, multi-label) as a markdown table of their own keys."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = {float: lambda v: f"{v:.4f}"}
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.get(type(r.get(k)), str)(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines)


def task_rows(task: str, profile: str, out: Path) -> list[dict]:
    """Rows of ``examples/<task>.py`` (``ner``, ``multi_label``): its ``run()``, at its default recipe
    (``--quick`` under the smoke profile)."""
    if task not in ("ner", "multi_label"):
        raise SystemExit(f"--tasks: unknown {task!r}; tasks are sentiment, ner, multi_label")
    module = importlib.import_module(task)
    return module.run(output_dir=str(out), quick=profile == "smoke")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="few epochs, a 4,000-sentence slice")
    size.add_argument("--smoke", action="store_true", help="tiny models, a few steps each (CI)")
    parser.add_argument("--output-dir", help="default outputs/results/<full|short|smoke>")
    parser.add_argument("--rows", help="comma-separated row names to (re)run; the others are reused if finished")
    parser.add_argument("--reuse", action="store_true", help="do not rerun rows already finished with the same command")
    parser.add_argument("--table-only", action="store_true", help="train nothing; tabulate the finished rows")
    parser.add_argument("--train-only", action="store_true",
                        help="train the selected rows and stop (tabulate later, all rows timed in one session)")
    parser.add_argument("--tasks", default="sentiment", help="comma-separated: sentiment, ner, multi_label")
    parser.add_argument("--img-dir", help="also copy the PNGs here (e.g. docs/img)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    profile = "smoke" if args.smoke else "short" if args.short else "full"
    out = Path(args.output_dir or f"outputs/results/{profile}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    known = {r.name for r in ROWS}
    selected = set(known if args.rows is None else [n.strip() for n in args.rows.split(",") if n.strip()])
    if selected - known:
        parser.error(f"--rows: unknown {sorted(selected - known)}; rows are {', '.join(r.name for r in ROWS)}")
    if args.table_only:
        selected = set()

    started = time.perf_counter()
    figures: dict = {"profile": profile, "output_dir": str(out)}
    rows: list[dict] = []
    if "sentiment" in tasks:
        rows = sentiment_rows(profile, out, selected, args.reuse, measure_rows=not args.train_only)
        if args.train_only:
            print(json.dumps({"profile": profile, "trained": sorted(selected)}))
            return 0
        figures["rows"] = rows
    extra = {}
    for task in tasks:
        if task != "sentiment":
            extra[task] = task_rows(task, profile, out)
    figures["wall_seconds"] = time.perf_counter() - started

    text = [f"## Movie-review sentiment ({profile} profile)", "", markdown_table(rows), "",
            "Commands:", "", commands_table(rows)] if rows else []
    for task, task_table in extra.items():
        if task_table:
            text += ["", f"## {task}", "", generic_table(task_table)]
            figures[f"{task}_rows"] = task_table
    report = "\n".join(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(report + "\n")
    if rows:
        from results_plots import plot_loss_curves, plot_tradeoff

        images = [plot_tradeoff(rows, out / "tradeoff.png", title=f"movie-review sentiment ({profile})"),
                  plot_loss_curves(rows, out / "loss_curves.png")]
        if args.img_dir:
            Path(args.img_dir).mkdir(parents=True, exist_ok=True)
            for image in images:
                shutil.copy(image, Path(args.img_dir) / f"results_{profile}_{image.name}")
        figures["images"] = [str(i) for i in images]
        figures.update(summary_figures(rows))
    (out / "results.json").write_text(json.dumps(figures, indent=2))
    print("\n" + report + "\n")
    print(json.dumps(figures))
    return 0


def sentiment_rows(profile: str, out: Path, selected: set, reuse: bool, measure_rows: bool = True) -> list[dict]:
    """Train the selected rows (the teacher first), then measure every finished row."""
    finished = {}
    for row in ROWS:
        overrides = row_overrides(row, profile, out)
        command = row_command(row, overrides)
        record = out / row.name / "row.json"
        previous = json.loads(record.read_text()) if record.is_file() else None
        if previous and previous["command"] != command:
            previous = None  # another recipe ran there; its numbers are not this row's
        if row.name in selected and not (reuse and previous):
            if row.name != "teacher" and "teacher" not in finished:
                raise SystemExit(f"row {row.name} needs the teacher: run it first (--rows teacher) or drop --rows")
            print(f"\n=== {row.name}: {command}", flush=True)
            previous = {"command": command, "overrides": overrides, "summary": train_row(row, overrides)}
            record.write_text(json.dumps(previous, indent=2, default=str))
        if previous:
            finished[row.name] = previous
    if not measure_rows:
        return []
    from distill_toolkit.data import load_sentiment

    data_seed = load_row_config(ROWS[0], row_overrides(ROWS[0], profile, out)).data
    texts = load_sentiment(data_seed.domain, seed=data_seed.seed, max_examples=data_seed.max_examples)["test"]["text"]
    rows = []
    for row in ROWS:
        if row.name in finished:
            record = finished[row.name]
            config = load_row_config(row, record["overrides"])
            rows.append({**measure(row, record["summary"], config, texts), "command": record["command"]})
    return add_ratios(rows)


def summary_figures(rows: list[dict]) -> dict:
    """The goal of the table in numbers: % of teacher per student, and KD's gain over the baseline."""
    by_name = {r["row"]: r for r in rows}
    figures = {}
    for r in rows:
        if r["distilled"]:
            figures[f"{r['row']}_of_teacher_ratio"] = r["of_teacher_ratio"]
            base = by_name.get(r["row"].replace("_kd", "_base"))
            if base:
                figures[f"{r['row'].replace('_kd', '')}_kd_minus_base_accuracy"] = (
                    r["test_accuracy"] - base["test_accuracy"])
    return figures


if __name__ == "__main__":
    sys.exit(main())
