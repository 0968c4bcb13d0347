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
        assert config.training.seed == results.BASE_SEED
        if row.stage:  # a general stage learns the pre-trained MiniLM, not the fine-tuned teacher
            assert config.teacher.path == "builtin:minilm" and config.distillation.task == "general"
        elif row.name != "teacher" and config.teacher is not None:
            assert config.teacher.path == "outputs/results/full/teacher/final"
        if row.start:
            assert config.student.path == f"outputs/results/full/{row.start}/final"


def test_another_seed_adds_only_the_seed_and_its_own_folders():
    out = Path("outputs/results/full")
    assert results.row_overrides(results.ROW["t3_kd"], "full", out, 43) == [
        "training.output_dir=outputs/results/full/t3_kd_seed43", "training.seed=43"]
    assert results.row_overrides(results.ROW["t4tiny_gkd"], "full", out, 44) == [
        "training.output_dir=outputs/results/full/t4tiny_gkd_seed44", "training.seed=44",
        "student.path=outputs/results/full/t4tiny_general_seed44/final"]  # its own seed's general stage
    config = results.load_row_config(results.ROW["narrow_gkd"],
                                     results.row_overrides(results.ROW["narrow_gkd"], "full", out, 43))
    assert config.training.seed == 43 and config.student.path.endswith("narrow_general_seed43/final")


def _differing(a, b) -> set:
    a, b = a.to_dict(), b.to_dict()
    return {k for k in a if a[k] != b[k]}


def test_kd_and_baseline_rows_differ_only_in_the_teacher():
    plain = [r for r in results.ROWS if r.baseline and r.name == r.baseline.replace("_base", "_kd")]
    assert len(plain) == 4
    for kd in plain:
        base = results.ROW[kd.baseline]
        a, b = results.load_row_config(kd, []), results.load_row_config(base, [])
        assert a.student == b.student and a.data == b.data
        assert _differing(a.training, b.training) == {"output_dir"}
        assert a.distillation.strategy == "single" and b.distillation.strategy == "supervised"


def test_each_recipe_row_differs_from_its_plain_kd_row_only_in_its_recipe():
    cfg = {r.name: results.load_row_config(r, []) for r in results.ROWS}
    # relations: the same matches plus query/key/value relations of the last blocks
    rel, kd = cfg["t3_rel_kd"], cfg["t3_kd"]
    assert rel.student == kd.student and rel.data == kd.data
    assert _differing(rel.training, kd.training) == {"output_dir"}
    assert _differing(rel.distillation, kd.distillation) == {"matches"}
    extra = [m for m in rel.distillation.matches if m not in kd.distillation.matches]
    assert rel.distillation.matches[:len(kd.distillation.matches)] == kd.distillation.matches
    assert sorted(m.feature for m in extra) == ["key", "query", "value"]
    assert {m.loss for m in extra} == {"minilmv2_relation"}
    # general stage first: the random student's shape, trained on unlabelled text; then the same task recipe
    for shape in ("t4tiny", "narrow"):
        general, gkd, kd, base = (cfg[f"{shape}_{s}"] for s in ("general", "gkd", "kd", "base"))
        assert general.student.config == kd.student.config and general.student.init_from == "random"
        assert general.data.name == "shakespeare" and general.training.seed == kd.training.seed
        assert gkd.data == kd.data and _differing(gkd.training, kd.training) == {"output_dir"}
        assert _differing(gkd.distillation, kd.distillation) == set()
        assert gkd.student.path == f"outputs/results/full/{shape}_general/final"
    # augmented transfer set: its augmentation, no gold-label term (augmented copies have none), its epochs
    aug, kd = cfg["bigru_aug_kd"], cfg["bigru_kd"]
    assert aug.student == kd.student and aug.data.augment["factor"] == 4
    assert _differing(aug.data, kd.data) == {"augment"}
    assert _differing(aug.distillation, kd.distillation) == {"hard_label_weight"}
    assert aug.distillation.hard_label_weight == 0
    assert _differing(aug.training, kd.training) == {"output_dir", "num_epochs"}


def test_table_rows_are_seed_means_with_the_sample_std_and_gains_on_the_means(tmp_path):
    def record(name, seed, acc, params=1e6):
        measured = {"row": name, "model": name, "distilled": results.ROW[name].distilled, "layers": 1, "hidden": 8,
                    "params": params, "dev_accuracy": acc - 0.01, "test_accuracy": acc, "examples_per_second": 10.0,
                    "seed": seed, "steps": 4, "run_dir": "x",
                    "recipe": {"strategy": "supervised", "lr": 1e-4, "epochs": 3, "max_steps": None}}
        path = results.record_path(tmp_path, "full", name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"row": name, "seed": seed, "command": f"cmd {name} {seed}", "measured": measured}))

    record("teacher", 42, 0.80, params=2e6)
    for seed, kd, base in ((42, 0.70, 0.60), (43, 0.74, 0.66), (44, 0.78, 0.66)):
        record("t3_kd", seed, kd)
        record("t3_base", seed, base)
    record("t4tiny_general", 42, 0.0)  # a stage: recorded, never a table row
    found = results.read_records(tmp_path, "full")
    assert [r["seed"] for r in found["t3_kd"]] == [42, 43, 44]
    rows = {r["row"]: r for r in results.aggregate(found)}
    assert set(rows) == {"teacher", "t3_kd", "t3_base"}
    kd = rows["t3_kd"]
    assert kd["seeds"] == [42, 43, 44] and kd["command"] == "cmd t3_kd 42"
    assert abs(kd["test_accuracy"] - 0.74) < 1e-12 and abs(kd["test_accuracy_std"] - 0.04) < 1e-12
    assert abs(kd["gain_over_baseline"] - 0.10) < 1e-12 and kd["baseline"] == "t3_base"
    assert abs(kd["of_teacher_ratio"] - 0.74 / 0.80) < 1e-12 and kd["size_ratio"] == 0.5
    assert rows["teacher"]["test_accuracy_std"] == 0.0
    table = results.markdown_table(list(rows.values()))
    assert "| 0.7400 ± 0.0400 | 3 (42,43,44) | 92.5% | +10.0 |" in table
    assert "cmd t4tiny_general 42" in results.commands_table(found)


def test_smoke_profile_writes_records_table_json_and_plots(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    common = ["--smoke", "--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records")]

    def bench(*extra):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/results.py"), *common, *extra],
                              capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, json.loads(proc.stdout.strip().splitlines()[-1])

    _, figures = bench("--img-dir", str(tmp_path / "img"))
    rows = {r["row"]: r for r in figures["rows"]}
    assert list(rows) == [r.name for r in results.ROWS if not r.stage]
    recorded = sorted(p.name for p in (tmp_path / "records" / "smoke").iterdir())
    assert recorded == sorted(f"{r.name}.seed42.json" for r in results.ROWS)  # general stages recorded too
    teacher = rows["teacher"]
    assert teacher["size_ratio"] == 1.0 and teacher["of_teacher_ratio"] == 1.0
    for r in rows.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["examples_per_second"] > 0 and r["params"] > 0
        assert r["steps"] == 4 and r["seeds"] == [42] and r["test_accuracy_std"] == 0.0
        assert r["of_teacher_ratio"] == r["test_accuracy"] / teacher["test_accuracy"]
    assert rows["t3_kd"]["layers"] == 1 and rows["t3_kd"]["params"] < teacher["params"]
    assert rows["t4tiny_kd"]["hidden"] == 48 and rows["narrow_kd"]["hidden"] == 32
    assert rows["t4tiny_gkd"]["hidden"] == 48 and rows["narrow_gkd"]["hidden"] == 32  # the general stages' encoders
    assert rows["t3_kd"]["recipe"]["temperature"] == 4 and rows["t3_base"]["recipe"]["strategy"] == "supervised"
    assert rows["bigru_aug_kd"]["recipe"]["augment_factor"] == 4 and rows["t4tiny_gkd"]["recipe"]["start"]
    for name in ("t3_kd", "t3_rel_kd", "t4tiny_gkd", "narrow_gkd", "bigru_aug_kd"):
        base = rows[results.ROW[name].baseline]
        assert rows[name]["gain_over_baseline"] == rows[name]["test_accuracy"] - base["test_accuracy"]
        assert figures[f"{name}_minus_{base['row']}_accuracy"] == rows[name]["gain_over_baseline"]

    table = (tmp_path / "out" / "results.md").read_text()
    assert "| model | distilled | layers | hidden | params |" in table
    assert "distill-toolkit train --overwrite examples/configs/results/t4tiny_kd.yaml" in table
    assert "python examples/bigru_sentiment.py examples/configs/results/bigru_base.yaml" in table
    assert "examples/configs/results/narrow_general.yaml" in table  # the stages' commands are listed
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == figures["rows"]
    for name in ("tradeoff.png", "loss_curves.png"):
        for image in (tmp_path / "out" / name, tmp_path / "img" / f"results_smoke_{name}"):
            assert image.read_bytes()[:8] == PNG_MAGIC and image.stat().st_size > 20_000

    # the loss curves come from the runs' own TensorBoard logs: every term, every step
    kd_terms = read_scalars(rows["t3_kd"]["run_dir"])
    assert {"train/loss", "train/kd", "train/hard_label", "train/hidden_mse/S1-T2"} <= set(kd_terms)
    assert kd_terms["train/kd"][0] == [1, 2, 3, 4]
    assert "train/kd" not in read_scalars(rows["t3_base"]["run_dir"])
    assert any(t.startswith("train/minilmv2_relation") for t in read_scalars(rows["t3_rel_kd"]["run_dir"]))

    # a second seed for two rows: the teacher (recorded, on disk) is reused, not retrained
    stdout, _ = bench("--rows", "teacher,t3_kd,t3_base", "--seeds", "43", "--reuse", "--train-only")
    assert "=== teacher" not in stdout and "=== t3_kd (seed 43)" in stdout and "=== t3_base (seed 43)" in stdout
    seed43 = json.loads((tmp_path / "records" / "smoke" / "t3_kd.seed43.json").read_text())
    assert "--set training.seed=43" in seed43["command"] and seed43["measured"]["seed"] == 43
    assert not list((tmp_path / "records").rglob("*.tmp"))

    # the table from the records alone: no training; t3 rows over two seeds, the others as before
    stdout, again = bench("--table-only")
    assert "===" not in stdout
    reused = {r["row"]: r for r in again["rows"]}
    assert reused["t3_kd"]["seeds"] == [42, 43] and reused["t3_base"]["seeds"] == [42, 43]
    both = [rows["t3_kd"]["test_accuracy"], seed43["measured"]["test_accuracy"]]
    assert abs(reused["t3_kd"]["test_accuracy"] - sum(both) / 2) < 1e-12
    assert {n: r["test_accuracy"] for n, r in reused.items() if n not in ("t3_kd", "t3_base")} == {
        n: r["test_accuracy"] for n, r in rows.items() if n not in ("t3_kd", "t3_base")}


def test_a_row_whose_general_stage_is_missing_names_the_run_to_do_first(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/results.py"), "--smoke", "--rows", "t4tiny_gkd",
                           "--output-dir", str(tmp_path / "out"), "--records-dir", str(tmp_path / "records")],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode != 0
    assert "--rows teacher --seeds 42 first" in proc.stderr
    assert not (tmp_path / "records").exists()
