"""Results table: the MiniLM teacher vs students of several shapes on movie-review sentiment, distilled and not.

    python benchmarks/results.py --short              # few epochs, all shapes; about 10 min on 2 idle cores
    python benchmarks/results.py                      # the full table, seed 42 (about 2 h; see docs/results.md)
    python benchmarks/results.py --seeds 43 --reuse   # add seed 43's runs; finished (row, seed) runs are kept
    python benchmarks/results.py --smoke              # tiny models, a few steps each: the CI check
    python benchmarks/results.py --rows t3_kd,t3_base --reuse   # (re)run some rows, reuse finished ones
    python benchmarks/results.py --table-only         # tabulate the recorded runs, train nothing
    python benchmarks/results.py --tasks sentiment,ner,multi_label   # add part A's NER / multi-label rows

TextBrewer's tables, on data that runs here: teacher, a T3-style student (3 of its 6 blocks),
a T4-tiny-style one (4 blocks, hidden 312, random init, projected hidden matches), a deep-narrow
one (6 blocks, hidden 192) and a BiGRU, each trained with the teacher and without it (same
initialisation, data order, steps and seed); then the recipes that close the gap: T3 with MiniLMv2
relations, T4-tiny and deep-narrow after a general (task-agnostic) stage on unlabelled text, the BiGRU
on an augmented transfer set. Every row is one YAML file in ``examples/configs/results/``, run in this
process by the code of ``distill-toolkit train`` (BiGRU rows: ``examples/bigru_sentiment.py``); the
table prints the command that reproduces it.

Seeds: ``--seeds 42,43,44`` runs every student once per seed (``training.seed``: its random weights,
data order and dropout; the teacher is trained once, at 42, the seed of the YAML files). Each finished
(row, seed) run is measured at once and written to ``<records-dir>/<profile>/<row>.seed<N>.json``
(committed: ``benchmarks/results_records/``), and the table is built from those records alone, as the
mean and standard deviation over the seeds recorded, so seeds can be added one session at a time.

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
RECORDS = Path("benchmarks/results_records")  # committed: one JSON per measured (row, seed) run
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


BASE_SEED = 42  # the seed of the YAML files: its runs are the bare files, other seeds add two overrides
TEACHER_PATH = "outputs/results/full/teacher/final"  # as the YAML files name the fine-tuned teacher


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    config: str
    distilled: Optional[bool]  # None for the teacher and for general stages
    runner: str = "cli"  # "cli": distill-toolkit train; "bigru": examples/bigru_sentiment.py
    baseline: Optional[str] = None  # the no-teacher row a distilled row is judged against
    start: Optional[str] = None  # the general stage whose exported encoder this row starts from (same seed)
    stage: bool = False  # a general stage: trained and recorded, never measured (it has no task head)


ROWS = [
    Row("teacher", "MiniLM-L6 teacher", "teacher.yaml", None),
    Row("t3_kd", "T3 (teacher blocks)", "t3_kd.yaml", True, baseline="t3_base"),
    Row("t3_base", "T3 (teacher blocks)", "t3_base.yaml", False),
    Row("t4tiny_kd", "T4-tiny (random init)", "t4tiny_kd.yaml", True, baseline="t4tiny_base"),
    Row("t4tiny_base", "T4-tiny (random init)", "t4tiny_base.yaml", False),
    Row("narrow_kd", "deep-narrow (random init)", "narrow_kd.yaml", True, baseline="narrow_base"),
    Row("narrow_base", "deep-narrow (random init)", "narrow_base.yaml", False),
    Row("bigru_kd", "BiGRU", "bigru_kd.yaml", True, runner="bigru", baseline="bigru_base"),
    Row("bigru_base", "BiGRU", "bigru_base.yaml", False, runner="bigru"),
    Row("t3_rel_kd", "T3 + MiniLMv2 relations", "t3_rel_kd.yaml", True, baseline="t3_base"),
    Row("t4tiny_general", "T4-tiny general stage", "t4tiny_general.yaml", None, stage=True),
    Row("t4tiny_gkd", "T4-tiny (general-distilled)", "t4tiny_gkd.yaml", True, baseline="t4tiny_base",
        start="t4tiny_general"),
    Row("narrow_general", "deep-narrow general stage", "narrow_general.yaml", None, stage=True),
    Row("narrow_gkd", "deep-narrow (general-distilled)", "narrow_gkd.yaml", True, baseline="narrow_base",
        start="narrow_general"),
    Row("bigru_aug_kd", "BiGRU + augmented set", "bigru_aug_kd.yaml", True, runner="bigru", baseline="bigru_base"),
]
ROW = {r.name: r for r in ROWS}

_TINY_MATCHES = ("[{teacher_layer: 0, student_layer: 0, projection: linear}, "
                 "{teacher_layer: 2, student_layer: 2, projection: linear}]")
# a general stage of a 2-block student from the 6-block pre-trained MiniLM: relations + projected hidden states
_TINY_GENERAL = ("[{feature: query, teacher_layer: 5, student_layer: 1, loss: minilmv2_relation, "
                 "loss_kwargs: {relation_heads: 4}}, {feature: value, teacher_layer: 5, student_layer: 1, "
                 "loss: minilmv2_relation, loss_kwargs: {relation_heads: 4}}, "
                 "{teacher_layer: 6, student_layer: 2, projection: linear}]")
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
        "t3_rel_kd": ["student.layers=[1]",
                      "distillation.matches=[{teacher_layer: 2, student_layer: 1}, {feature: query, teacher_layer: 1, "
                      "student_layer: 0, loss: minilmv2_relation, loss_kwargs: {relation_heads: 4}}, {feature: value, "
                      "teacher_layer: 1, student_layer: 0, loss: minilmv2_relation, "
                      "loss_kwargs: {relation_heads: 4}}]"],
        "t4tiny_general": ["student.config={num_hidden_layers: 2, hidden_size: 48, intermediate_size: 96, "
                           "num_attention_heads: 4}", f"distillation.matches={_TINY_GENERAL}"],
        "t4tiny_gkd": [f"distillation.matches={_TINY_MATCHES}"],
        "narrow_general": ["student.config={num_hidden_layers: 2, hidden_size: 32, intermediate_size: 64, "
                           "num_attention_heads: 4}", f"distillation.matches={_TINY_GENERAL}"],
        "narrow_gkd": [f"distillation.matches={_TINY_MATCHES}"],
        "bigru_aug_kd": ["student.config={embed_dim: 384, hidden_size: 16, init_embeddings: teacher}"],
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


def run_dir(out: Path, name: str, seed: int) -> Path:
    """Where the run of ``name`` at ``seed`` writes (the YAML's own folder at the base seed)."""
    return out / (name if seed == BASE_SEED else f"{name}_seed{seed}")


def row_overrides(row: Row, profile: str, out: Path, seed: int = BASE_SEED) -> list[str]:
    """The ``--set`` overrides that turn ``row``'s YAML file into this profile's run at ``seed`` (overrides equal
    to the file's own values dropped)."""
    table = PROFILES[profile]
    data = yaml.safe_load((ROOT / CONFIGS / row.config).read_text())
    wanted = [f"training.output_dir={run_dir(out, row.name, seed)}"]
    if seed != BASE_SEED:
        wanted.append(f"training.seed={seed}")
    if _lookup(data, "teacher.path") == TEACHER_PATH:  # the fine-tuned teacher (a general stage reads another)
        wanted.append(f"teacher.path={out / 'teacher' / 'final'}")
    if row.start:
        wanted.append(f"student.path={run_dir(out, row.start, seed) / 'final'}")
    wanted += table.get("*", []) + table.get(row.name, [])
    kept = {}
    for item in wanted:
        key, raw = item.split("=", 1)
        if _lookup(data, key) != yaml.safe_load(raw) or key in kept:
            kept[key] = item
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
    if config.data.augment:
        out["augment_factor"] = config.data.augment.get("factor")
    if "_general" in str(config.student.path):
        out["start"] = "general stage"
    return out


def recipe_text(r: dict) -> str:
    length = f"{r['epochs']:g} ep" if r.get("epochs") is not None else f"{r['max_steps']} steps"
    if r.get("train_examples"):
        length += f" on {r['train_examples']} ex"
    if r["strategy"] == "supervised":
        return f"labels only; lr {r['lr']:g}, {length}"
    relations = sum(1 for m in r["matches"] if m.split(" ")[0] in ("query", "key", "value"))
    hidden = len(r["matches"]) - relations
    matches = (f", {hidden} hidden matches" if hidden else "") + (f", {relations} relations" if relations else "")
    extra = (f"; x{r['augment_factor']} augmented" if r.get("augment_factor") else "") + (
        f"; from the {r['start']}" if r.get("start") else "")
    return (f"{r['kd_loss']} T={r['temperature']:g} (w {r['kd_weight']:g}) + labels (w {r['hard_label_weight']:g})"
            f"{matches}; lr {r['lr']:g}, {length}{extra}")


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


# ---- the table: from the records, mean and spread over seeds ----------------------------------
def record_path(records: Path, profile: str, name: str, seed: int) -> Path:
    return records / profile / f"{name}.seed{seed}.json"


def read_records(records: Path, profile: str) -> dict[str, list[dict]]:
    """Every recorded run of this profile, per row (in seed order)."""
    found: dict[str, list[dict]] = {}
    for row in ROWS:
        paths = sorted((records / profile).glob(f"{row.name}.seed*.json"),
                       key=lambda p: int(p.stem.rsplit(".seed", 1)[1]))
        if paths:
            found[row.name] = [json.loads(p.read_text()) for p in paths]
    return found


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, var ** 0.5


def aggregate(found: dict[str, list[dict]]) -> list[dict]:
    """One table row per measured row: the base seed's run, with the test/dev accuracy replaced by the mean
    over its seeds (``*_std``: the sample standard deviation; ``seeds``: which), examples/s by the mean, and
    the teacher's share and the gain over the no-teacher row (both on the means)."""
    rows = []
    for name, runs in found.items():
        if ROW[name].stage:
            continue
        measured = [r["measured"] for r in runs]
        row = dict(measured[0])
        row["seeds"] = [m["seed"] for m in measured]
        row["command"] = runs[0]["command"]
        for key in ("test_accuracy", "dev_accuracy"):
            row[key], row[f"{key}_std"] = _mean_std([m[key] for m in measured])
            row[f"{key}_per_seed"] = [m[key] for m in measured]
        row["examples_per_second"] = _mean_std([m["examples_per_second"] for m in measured])[0]
        rows.append(row)
    by_name = {r["row"]: r for r in rows}
    teacher = by_name.get("teacher")
    for r in rows:
        r["size_ratio"] = r["params"] / teacher["params"] if teacher else None
        r["of_teacher_ratio"] = r["test_accuracy"] / teacher["test_accuracy"] if teacher else None
        r["dev_of_teacher_ratio"] = r["dev_accuracy"] / teacher["dev_accuracy"] if teacher else None
        base = by_name.get(ROW[r["row"]].baseline or "")
        r["baseline"] = base["row"] if base else None
        r["gain_over_baseline"] = r["test_accuracy"] - base["test_accuracy"] if base else None
    return rows


def _acc(r: dict, key: str) -> str:
    return f"{r[key]:.4f} ± {r[key + '_std']:.4f}" if len(r["seeds"]) > 1 else f"{r[key]:.4f}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | distilled | layers | hidden | params | size vs teacher | dev acc | test acc | seeds | "
            "% of teacher (test) | vs no teacher (test, points) | examples/s | recipe |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        distilled = "—" if r["distilled"] is None else ("**yes**" if r["distilled"] else "no")
        pct = f"{100 * r['of_teacher_ratio']:.1f}%" if r.get("of_teacher_ratio") else ""
        size = f"{100 * r['size_ratio']:.0f}%" if r.get("size_ratio") else ""
        gain = f"{100 * r['gain_over_baseline']:+.1f}" if r.get("gain_over_baseline") is not None else ""
        lines.append(f"| {r['model']} | {distilled} | {r['layers']} | {r['hidden']} | {r['params'] / 1e6:.1f}M | "
                     f"{size} | {_acc(r, 'dev_accuracy')} | {_acc(r, 'test_accuracy')} | "
                     f"{len(r['seeds'])} ({','.join(map(str, r['seeds']))}) | {pct} | {gain} | "
                     f"{r['examples_per_second']:.0f} | {recipe_text(r['recipe'])} |")
    return "\n".join(lines)


def commands_table(found: dict[str, list[dict]]) -> str:
    """The base seed's command of every recorded row (general stages included); other seeds add
    ``--set training.seed=N --set training.output_dir=..._seedN``."""
    lines = ["| row | command |", "|---|---|"]
    lines += [f"| {name} | `{runs[0]['command']}` |" for name, runs in found.items()]
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
    parser.add_argument("--seeds", default=str(BASE_SEED),
                        help="comma-separated training seeds of the students (the teacher: 42 only)")
    parser.add_argument("--records-dir", default=str(RECORDS),
                        help="where each (row, seed) run's measured record is written and the table read from")
    parser.add_argument("--reuse", action="store_true",
                        help="skip (row, seed) runs recorded with the same command whose model is still on disk")
    parser.add_argument("--table-only", action="store_true", help="train nothing; tabulate the recorded runs")
    parser.add_argument("--train-only", action="store_true", help="train and record the selected runs; no table")
    parser.add_argument("--tasks", default="sentiment", help="comma-separated: sentiment, ner, multi_label")
    parser.add_argument("--img-dir", help="also copy the PNGs here (e.g. docs/img)")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    profile = "smoke" if args.smoke else "short" if args.short else "full"
    out = Path(args.output_dir or f"outputs/results/{profile}")
    records = Path(args.records_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    try:
        seeds = sorted({int(x) for x in args.seeds.split(",") if x.strip()})
    except ValueError:
        parser.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
    selected = set(ROW if args.rows is None else [n.strip() for n in args.rows.split(",") if n.strip()])
    if selected - set(ROW):
        parser.error(f"--rows: unknown {sorted(selected - set(ROW))}; rows are {', '.join(ROW)}")
    if args.table_only:
        selected = set()

    started = time.perf_counter()
    figures: dict = {"profile": profile, "output_dir": str(out), "records_dir": str(records)}
    found: dict = {}
    if "sentiment" in tasks:
        run_rows(profile, out, records, selected, seeds, args.reuse)
        if args.train_only:
            print(json.dumps({"profile": profile, "trained": sorted(selected), "seeds": seeds}))
            return 0
        found = read_records(records, profile)
    rows = aggregate(found)
    figures["rows"] = rows
    extra = {}
    for task in tasks:
        if task != "sentiment":
            extra[task] = task_rows(task, profile, out)
    figures["wall_seconds"] = time.perf_counter() - started

    text = [f"## Movie-review sentiment ({profile} profile)", "", markdown_table(rows), "",
            "Commands (seed 42; another seed N adds `--set training.seed=N --set training.output_dir=<dir>_seedN`):",
            "", commands_table(found)] if rows else []
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


def _needs(row: Row, out: Path, seed: int) -> list[tuple[str, Path]]:
    """The models a run reads from earlier runs: the fine-tuned teacher, its general stage."""
    data = yaml.safe_load((ROOT / CONFIGS / row.config).read_text())
    needs = [("teacher", out / "teacher" / "final")] if _lookup(data, "teacher.path") == TEACHER_PATH else []
    if row.start:
        needs.append((row.start, run_dir(out, row.start, seed) / "final"))
    return needs


def run_rows(profile: str, out: Path, records: Path, selected: set, seeds: list[int], reuse: bool) -> None:
    """Train, measure and record every selected (row, seed) run, in table order (the teacher first, each
    general stage before the row that starts from it). A record is written only once its run is measured,
    through a temporary file, so an interrupted run leaves no record behind."""
    texts = None
    for row in ROWS:
        if row.name not in selected:
            continue
        for seed in [BASE_SEED] if row.name == "teacher" else seeds:
            overrides = row_overrides(row, profile, out, seed)
            command = row_command(row, overrides)
            path = record_path(records, profile, row.name, seed)
            previous = json.loads(path.read_text()) if path.is_file() else None
            config = load_row_config(row, overrides)
            on_disk = (Path(config.training.output_dir) / "final").is_dir()
            if reuse and previous and previous["command"] == command and on_disk:
                continue
            for need, model in _needs(row, out, seed):
                if not model.is_dir():
                    raise SystemExit(f"row {row.name} (seed {seed}) reads {model}, which is missing: run "
                                     f"--rows {need} --seeds {seed} first (or drop --rows)")
            print(f"\n=== {row.name} (seed {seed}): {command}", flush=True)
            summary = train_row(row, overrides)
            record = {"row": row.name, "seed": seed, "command": command, "overrides": overrides,
                      "summary": {k: summary.get(k) for k in ("global_step", "train_seconds", "eval", "test",
                                                              "wall_seconds")}}
            if not row.stage:
                if texts is None:
                    texts = _test_texts(profile, out)
                record["measured"] = {**measure(row, summary, config, texts), "seed": seed}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
            os.replace(tmp, path)


def _test_texts(profile: str, out: Path) -> list[str]:
    from distill_toolkit.data import load_sentiment

    data = load_row_config(ROWS[0], row_overrides(ROWS[0], profile, out)).data
    return load_sentiment(data.domain, seed=data.seed, max_examples=data.max_examples)["test"]["text"]


def summary_figures(rows: list[dict]) -> dict:
    """The goals of the table in numbers: % of teacher per student, and KD's gain over its no-teacher row
    (3-seed means where recorded)."""
    figures = {}
    for r in rows:
        if r["distilled"]:
            figures[f"{r['row']}_of_teacher_ratio"] = r["of_teacher_ratio"]
            if r["gain_over_baseline"] is not None:
                figures[f"{r['row']}_minus_{r['baseline']}_accuracy"] = r["gain_over_baseline"]
    return figures


if __name__ == "__main__":
    sys.exit(main())
