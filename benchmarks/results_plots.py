"""Plots for benchmarks/results.py: the size/speed vs accuracy trade-off, and per-run loss curves.

Loss curves are read from what every run already writes: the TensorBoard event files of
``trackers: [tensorboard]`` under the run's ``output_dir`` (tags ``train/loss``, ``train/kd``,
``train/hard_label``, ``train/hidden_mse/S1-T2``, ...; each term unweighted, ``train/loss``
the weighted total). The same function serves any run folder::

    from results_plots import read_scalars
    read_scalars("outputs/results/full/t3_kd")["train/kd"]   # (steps, values)
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on a server or in CI
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"teacher": "black", "t3": "tab:blue", "t4tiny": "tab:orange", "narrow": "tab:green",
          "bigru": "tab:red"}


def read_scalars(run_dir) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar a run logged to TensorBoard: ``{tag: (steps, values)}`` (empty if it logged none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, tuple[list[int], list[float]]] = {}
    folders = sorted({p.parent for p in Path(run_dir).rglob("events.out.tfevents.*")})
    for folder in folders:
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            points = events.Scalars(tag)
            scalars[tag] = ([p.step for p in points], [p.value for p in points])
    return scalars


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's exponential moving average, debiased at the start."""
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def _family(row: dict) -> str:
    return row["row"].split("_", 1)[0]


def _marker(row: dict) -> str:
    """A star for the teacher; one shape per recipe that closes the gap (relations, general stage, augmented)."""
    if row["distilled"] is None:
        return "*"
    return next((m for part, m in (("_rel_", "D"), ("_gkd", "^"), ("_aug_", "s")) if part in row["row"]), "o")


def plot_tradeoff(rows: list[dict], path, title: str = "") -> Path:
    """Test accuracy (the mean over recorded seeds) against parameters and against examples/s; the teacher as
    the reference line, an arrow from each distilled row's no-teacher row (``baseline``) to it."""
    teacher = next((r for r in rows if r["row"] == "teacher"), None)
    by_name = {r["row"]: r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), sharey=True)
    for ax, key, xlabel in ((axes[0], "params", "parameters (millions, embeddings included)"),
                            (axes[1], "examples_per_second", "inference examples / second (this CPU)")):
        scale = 1e6 if key == "params" else 1.0
        if teacher:
            ax.axhline(teacher["test_accuracy"], color="black", linestyle="--", linewidth=1, label="teacher")
            ax.axhline(0.99 * teacher["test_accuracy"], color="grey", linestyle=":", linewidth=1,
                       label="99% of teacher")
        for r in rows:
            color = COLORS.get(_family(r), "tab:purple")
            base = by_name.get(r.get("baseline") or "")
            if r["distilled"] and base:  # an arrow from the no-teacher run to the distilled one
                ax.annotate("", xy=(r[key] / scale, r["test_accuracy"]),
                            xytext=(base[key] / scale, base["test_accuracy"]),
                            arrowprops={"arrowstyle": "->", "color": color, "alpha": 0.6})
            distilled = r["distilled"]
            ax.scatter(r[key] / scale, r["test_accuracy"], s=140 if distilled is None else 70, marker=_marker(r),
                       color=color if distilled is not False else "white", edgecolors=color, linewidths=1.8,
                       zorder=3, label=r["model"] + ("" if distilled is None else
                                                     " (distilled)" if distilled else " (no teacher)"))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title + " — filled: distilled (diamond: + relations, triangle: general stage first, "
                 "square: augmented set), hollow: no teacher, arrow: what KD adds", fontsize=10)
    fig.tight_layout(rect=(0, 0.22, 1, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss_curves(rows: list[dict], path, smoothing: float = 0.9) -> Path:
    """One panel per run: its logged loss terms against the step (smoothed; raw values faint)."""
    runs = [(r, read_scalars(r["run_dir"])) for r in rows]
    runs = [(r, s) for r, s in runs if any(t.startswith("train/") for t in s)]
    cols = 3
    nrows = max(1, math.ceil(len(runs) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.3 * nrows), squeeze=False)
    for ax, (row, scalars) in zip(axes.flat, runs):
        for tag in sorted(t for t in scalars if t.startswith("train/") and t != "train/lr"):
            steps, values = scalars[tag]
            name = tag[len("train/"):]
            line, = ax.plot(steps, smooth(values, smoothing), linewidth=1.4 if name == "loss" else 1,
                            label=name + (" (weighted total)" if name == "loss" else ""))
            ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.6)
        if all(v > 0 for t, (_, vs) in scalars.items() if t.startswith("train/") for v in vs):
            ax.set_yscale("log")
        kind = "teacher" if row["distilled"] is None else "distilled" if row["distilled"] else "no teacher"
        ax.set_title(f"{row['model']} ({kind})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
