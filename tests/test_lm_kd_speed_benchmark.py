"""benchmarks/lm_kd_speed.py at tiny sizes: the floor and the toolkit's fused and chunked routes run, each in its
own process, and compute the same forward KL (the TRL row is not run here: the test environment has no trl)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_toolkit import losses

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import lm_kd_speed  # noqa: E402

TINY = ["--vocab", "384", "--steps", "3", "--warmup", "1", "--threads", "1", "--hidden", "32", "--seq-len", "16",
        "--batch-size", "2", "--teacher-layers", "2", "--student-layers", "1"]


def test_variants_run_in_their_own_processes_and_agree_on_the_forward_kl():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/lm_kd_speed.py"), *TINY,
                           "--variants", "floor,fused,chunked"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert any(line.startswith("step-1 losses agree") for line in lines), proc.stdout
    assert figures["losses_agree"] is True and figures["trl_version"] is None
    assert figures["step1_loss_max_abs_difference_v384"] <= 1e-6
    runs = figures["runs"]["v384"]
    assert set(runs) == {"floor", "fused", "chunked"}
    for name in ("toolkit_time_vs_floor_ratio_v384", "toolkit_memory_vs_floor_ratio_v384",
                 "chunked_time_vs_floor_ratio_v384"):
        assert math.isfinite(figures[name]) and figures[name] > 0, name
    assert not any("trl" in key for key in figures if key.endswith("_v384"))
    for row in runs.values():
        assert row["seconds_per_step"] > 0 and row["peak_rss_mb"] >= row["rise_mb"] > 0

    # the value they agree on is the forward KL of the step-1 models on the first batch, a mean over positions
    args = lm_kd_speed.parse_args([*TINY, "--child", "floor"])
    teacher, student = lm_kd_speed.build_models(args)
    batch = lm_kd_speed.build_batches(args)[0]
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits_T, logits_S = (m(**inputs).logits[:, :-1].reshape(-1, args.vocab) for m in (teacher, student))
        expected = float(losses.get("forward_kl")(logits_S, logits_T, 1.0))
    for variant, row in runs.items():
        assert row["step1_loss"] == pytest.approx(expected, rel=1e-5), variant
    assert runs["floor"]["last_loss"] != runs["floor"]["step1_loss"]  # the student did train


def test_step1_losses_that_differ_are_reported(capsys):
    args = lm_kd_speed.parse_args([*TINY, "--variants", "floor,fused"])
    row = {"seconds_per_step": 0.1, "peak_rss_mb": 500.0, "rise_mb": 100.0, "step1_loss": 1.0, "last_loss": 0.9,
           "threads": 1}
    rows = {"floor": row, "fused": {**row, "step1_loss": 1.0 + 1e-5, "seconds_per_step": 0.05, "rise_mb": 60.0}}
    figures = lm_kd_speed.figures_for(384, rows)
    assert figures["step1_loss_max_abs_difference_v384"] == pytest.approx(1e-5)
    assert figures["toolkit_time_vs_floor_ratio_v384"] == pytest.approx(0.5)
    assert figures["toolkit_memory_vs_floor_ratio_v384"] == pytest.approx(0.6)
    lm_kd_speed.print_table(384, rows, figures, args)
    assert "step-1 losses DIFFER: max difference 1.0e-05" in capsys.readouterr().out


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        lm_kd_speed.parse_args([*TINY, "--variants", "floor,liger"])
    assert "unknown ['liger']" in capsys.readouterr().err
