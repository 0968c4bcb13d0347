"""benchmarks/results.py: the smoke profile runs end to end (table, JSON, PNGs); full-profile commands stay clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402
from results_plots import read_scalars  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_full_profile_rows_are_their_config_files_unchanged():
    # The documented command of every full-profile row is the bare config file: nothing hidden in overrides.
    out = Path("outputs/results/full")
    for row in results.ROWS:
        assert results.row_overrides(row, "full", out) == [], row.name
        assert results.row_command(row, []).endswith(f"examples/configs/results/{row.config}")
        config = results.load_row_config(row, [])
        assert config.training.output_dir == f"outputs/results/full/{row.name}"
        if row.name != "teacher" and config.teacher is not None:
            assert config.teacher.path == "outputs/results/full/teacher/final"


def test_kd_and_baseline_rows_differ_only_in_the_teacher():
    for kd in [r for r in results.ROWS if r.distilled]:
        base = next(r for r in results.ROWS if r.name == kd.name.replace("_kd", "_base"))
        a, b = results.load_row_config(kd, []), results.load_row_config(base, [])
        assert a.student == b.student and a.data == b.data
        ta, tb = a.training.to_dict(), b.training.to_dict()
        assert {k for k in ta if ta[k] != tb[k]} == {"output_dir"}
        assert a.distillation.strategy == "single" and b.distillation.strategy == "supervised"


def test_smoke_profile_writes_table_json_and_plots(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/results.py"), "--smoke", "--output-dir",
                           str(tmp_path / "out"), "--img-dir", str(tmp_path / "img")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["row"]: r for r in figures["rows"]}
    assert list(rows) == [r.name for r in results.ROWS]
    teacher = rows["teacher"]
    assert teacher["size_ratio"] == 1.0 and teacher["of_teacher_ratio"] == 1.0
    for r in rows.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["examples_per_second"] > 0 and r["params"] > 0
        assert r["steps"] == 4 and r["seed"] == 42
        assert r["of_teacher_ratio"] == r["test_accuracy"] / teacher["test_accuracy"]
    assert rows["t3_kd"]["layers"] == 1 and rows["t3_kd"]["params"] < teacher["params"]
    assert rows["t4tiny_kd"]["hidden"] == 48 and rows["narrow_kd"]["hidden"] == 32
    assert rows["t3_kd"]["recipe"]["temperature"] == 4 and rows["t3_base"]["recipe"]["strategy"] == "supervised"

    table = (tmp_path / "out" / "results.md").read_text()
    assert "| model | distilled | layers | hidden | params |" in table
    assert "distill-toolkit train --overwrite examples/configs/results/t4tiny_kd.yaml" in table
    assert "python examples/bigru_sentiment.py examples/configs/results/bigru_base.yaml" in table
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == figures["rows"]
    for name in ("tradeoff.png", "loss_curves.png"):
        for image in (tmp_path / "out" / name, tmp_path / "img" / f"results_smoke_{name}"):
            assert image.read_bytes()[:8] == PNG_MAGIC and image.stat().st_size > 20_000

    # the loss curves come from the runs' own TensorBoard logs: every term, every step
    kd_terms = read_scalars(rows["t3_kd"]["run_dir"])
    assert {"train/loss", "train/kd", "train/hard_label", "train/hidden_mse/S1-T2"} <= set(kd_terms)
    assert kd_terms["train/kd"][0] == [1, 2, 3, 4]
    assert "train/kd" not in read_scalars(rows["t3_base"]["run_dir"])

    # a second call reuses the finished rows: no training, the same accuracies
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks/results.py"), "--smoke", "--table-only",
                            "--output-dir", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "===" not in again.stdout  # no row was trained
    reused = {r["row"]: r["test_accuracy"] for r in json.loads(again.stdout.strip().splitlines()[-1])["rows"]}
    assert reused == {name: r["test_accuracy"] for name, r in rows.items()}
