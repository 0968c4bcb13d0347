"""Real 2-process jobs (gloo on 127.0.0.1) through the one loop: DDP, DeepSpeed ZeRO-2/3, FSDP2 teachers.

Every job is started by ``launch/*.yaml`` through ``accelerate launch`` (or by ``torchrun``), runs
under a hard timeout, and a failing job shows its ranks' errors. Each rank of
``tests/scripts/dist_train.py`` reports what it saw (world size, distributed type, what it holds
of every parameter, losses, eval metrics, logits), and the tests compare that with a single
process trained on the same global batch.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import yaml
from helpers import load_script
from safetensors.torch import load_file
from test_cli import _write_config, workspace  # noqa: F401 (a fixture)

from distill_toolkit.engine.accelerator import check_launch  # the launch checks live in the engine

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "scripts" / "dist_train.py"
LAUNCH = ROOT / "launch"
DS_CONFIGS = ROOT / "ds_configs"
TIMEOUT = 240  # per job; a healthy one takes 10-30 s here
EXTENSIONS = Path(os.environ.get("TORCH_EXTENSIONS_DIR",
                                 Path.home() / ".cache" / "distill_toolkit" / "torch_extensions"))


# ---- running jobs -----------------------------------------------------------------------

@dataclass
class Job:
    returncode: int
    output: str
    seconds: float

    def rank_errors(self) -> str:
        """The lines that say which rank failed and why (then the tail), for assertion messages."""
        keep = [line for line in self.output.splitlines()
                if re.search(r"Error|error_file|exitcode|rank\s*:|injected|Traceback|^\[rank\d\]", line)]
        return "\n".join(keep[-60:]) + "\n----- tail -----\n" + self.output[-3000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End a launcher and every process under it (workers live in their own sessions)."""
    import psutil

    try:
        family = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def run_job(cmd: list[str], timeout: int = TIMEOUT, env: dict | None = None) -> Job:
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
                    TORCH_EXTENSIONS_DIR=str(EXTENSIONS), HF_HUB_OFFLINE="1", **(env or {}))
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        full_env.pop(key, None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        output, _ = proc.communicate()
        pytest.fail(f"job did not finish within {timeout} s (killed): {' '.join(cmd)}\n{output[-4000:]}")
    return Job(proc.returncode, output, time.perf_counter() - start)


def accelerate_launch(launch_file: str, out: Path, *args: str, **kw) -> Job:
    """``ACCELERATE_USE_CPU=1 accelerate launch --config_file launch/FILE --num_processes 2`` on 127.0.0.1."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / launch_file),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           str(WORKER), str(out), *args]
    return run_job(cmd, env={"ACCELERATE_USE_CPU": "1"}, **kw)


def torchrun(out: Path, *args: str, **kw) -> Job:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(WORKER), str(out), *args]
    return run_job(cmd, **kw)


def ok(job: Job) -> Job:
    assert job.returncode == 0, f"job failed (exit {job.returncode}):\n{job.rank_errors()}"
    return job


def reports(out: Path) -> list[dict]:
    found = [json.loads((out / f"report_rank{r}.json").read_text()) for r in range(2)
             if (out / f"report_rank{r}.json").is_file()]
    assert len(found) == 2, f"expected a report from each of 2 ranks in {out}, got {len(found)}"
    return found


def weights(out: Path) -> dict:
    return load_file(str(out / "final" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=atol, msg=lambda m, k=key: f"{k}: {m}")


def assert_halves(shards: dict, min_sharded: int) -> None:
    """Each rank holds ceil(n/2) elements of every sharded parameter (DeepSpeed pads to equal pieces)."""
    sharded = {name: (local, full) for name, (local, full) in shards.items() if local < full}
    assert len(sharded) >= min_sharded, f"only {len(sharded)} of {len(shards)} parameters are sharded"
    for name, (local, full) in sharded.items():
        assert local in (full // 2, math.ceil(full / 2)), f"{name}: holds {local} of {full}"
    held, total = sum(v[0] for v in shards.values()), sum(v[1] for v in shards.values())
    assert held <= 0.55 * total, f"holds {held} of {total} elements"


def single_logits(export_dir: Path) -> torch.Tensor:
    """The exported student, loaded in this (single) process, on the worker's fixed batch."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(export_dir).eval()
    with torch.no_grad():
        return model(**_worker().fixed_batch()).logits


def _worker():
    return load_script(WORKER, "dist_train")


# ---- shared runs (each launched once per test session) ----------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, global batch 8."""
    out = tmp_path_factory.mktemp("single")
    _worker().run([str(out), "--batch-size", "8"])
    return out


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from helpers import tiny_bert

    path = tmp_path_factory.mktemp("teacher")
    tiny_bert(4, 48, seed=1).save_pretrained(path)  # the weights dist_train.py builds in memory
    return path


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    """launch/ddp.yaml on CPUs: 2 ranks x batch 4, checkpoints every 3 steps, TensorBoard on."""
    out = tmp_path_factory.mktemp("ddp")
    ok(accelerate_launch("ddp.yaml", out, "--batch-size", "4", "--save-every", "3", "--trackers"))
    return out


@pytest.fixture(scope="module")
def zero3(tmp_path_factory, teacher_dir):
    """launch/zero3.yaml: ZeRO-3 student and a ZeRO-3 teacher loaded straight into partitions."""
    out = tmp_path_factory.mktemp("zero3")
    ok(accelerate_launch("zero3.yaml", out, "--save-every", "3", "--placement", "zero3",
                         "--teacher-dir", str(teacher_dir)))
    return out


# ---- DDP ----------------------------------------------------------------------------------

@pytest.mark.distributed
def test_ddp_every_rank_sees_two_processes(ddp):
    facts = reports(ddp)
    assert sorted(f["rank"] for f in facts) == [0, 1]
    for f in facts:  # a silent single-process fallback would show world 1 / NO here
        assert (f["world"], f["env_world_size"], f["distributed_type"]) == (2, "2", "MULTI_CPU")
        assert f["is_main"] == (f["rank"] == 0)
        # the teacher is placed, not trained: no DDP wrapper, no gradients, eval mode
        assert f["teacher_type"] == "BertForSequenceClassification"
        assert not f["teacher_requires_grad"] and not f["teacher_training"]
    events = list(ddp.rglob("events.out.tfevents.*"))
    assert events and len({e.name.split(".")[4] for e in events}) == 1, f"TensorBoard written by >1 rank: {events}"


@pytest.mark.distributed
def test_ddp_reproduces_single_process_with_same_global_batch(ddp, single):
    dist, ref = reports(ddp)[0], json.loads((single / "report_rank0.json").read_text())
    assert dist["global_step"] == ref["global_step"] == 8
    torch.testing.assert_close(torch.tensor(dist["history"]), torch.tensor(ref["history"]), rtol=1e-5, atol=1e-6)
    assert_same_weights(weights(single), weights(ddp))


@pytest.mark.distributed
def test_ddp_eval_counts_uneven_last_batch_once(ddp, single):
    ref = json.loads((single / "report_rank0.json").read_text())["eval"]
    for f in reports(ddp):  # 13 examples over 2 ranks x batches of 4: padded, then de-duplicated
        assert f["eval"]["count"] == ref["count"] == 13
        assert f["eval"]["accuracy"] == pytest.approx(ref["accuracy"])


@pytest.mark.distributed
def test_ddp_export_gives_same_logits_in_one_process(ddp):
    trained = torch.tensor(reports(ddp)[0]["logits"])
    torch.testing.assert_close(single_logits(ddp / "final"), trained, rtol=1e-5, atol=1e-5)
    assert not any("teacher" in k for k in weights(ddp)), "the teacher entered the student's export"


def _kill_and_resume(launch, out, whole, *args):
    killed = launch(out, "--save-every", "3", "--kill-at", "5", *args)
    assert killed.returncode != 0, "a job whose rank 0 was SIGKILLed must fail"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_3"]
    assert not (out / "final").exists()
    resumed = ok(launch(out, "--save-every", "3", "--resume", *args))
    assert resumed.output.count("resumed from") == 1, "prints belong to the main process only"
    assert_same_weights(weights(whole), weights(out), atol=1e-6)
    assert reports(out)[0]["history"] == pytest.approx(reports(whole)[0]["history"], rel=1e-5)


@pytest.mark.distributed
@pytest.mark.slow
def test_ddp_kill_and_resume_matches_uninterrupted(ddp, tmp_path):
    _kill_and_resume(lambda out, *a: accelerate_launch("ddp.yaml", out, *a), tmp_path / "run", ddp)


# ---- DeepSpeed --------------------------------------------------------------------------

@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_partitions_student_and_teacher(zero3):
    for f in reports(zero3):
        assert (f["world"], f["distributed_type"]) == (2, "DEEPSPEED")
        assert f["teacher_type"] == "DeepSpeedEngine" and not f["teacher_requires_grad"]
        assert_halves(f["student_shards"], min_sharded=20)
        assert_halves(f["teacher_shards"], min_sharded=40)


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_trains_like_single_process_and_exports(zero3, single):
    assert_same_weights(weights(single), weights(zero3))
    trained = torch.tensor(reports(zero3)[0]["logits"])
    torch.testing.assert_close(single_logits(zero3 / "final"), trained, rtol=1e-5, atol=1e-5)
    for f in reports(zero3):
        assert f["eval"]["count"] == 13


@pytest.mark.distributed
@pytest.mark.slow
def test_zero3_kill_and_resume_matches_uninterrupted(zero3, teacher_dir, tmp_path):
    args = ("--placement", "zero3", "--teacher-dir", str(teacher_dir))
    _kill_and_resume(lambda out, *a: accelerate_launch("zero3.yaml", out, *a), tmp_path / "run", zero3, *args)


@pytest.mark.distributed
@pytest.mark.slow
def test_zero2_student_with_zero3_teacher(single, teacher_dir, tmp_path):
    ok(accelerate_launch("zero2.yaml", tmp_path, "--placement", "zero3", "--teacher-dir", str(teacher_dir)))
    for f in reports(tmp_path):
        assert (f["world"], f["distributed_type"]) == (2, "DEEPSPEED")
        assert all(local == full for local, full in f["student_shards"].values())  # ZeRO-2 keeps whole weights
        assert_halves(f["teacher_shards"], min_sharded=40)
    assert_same_weights(weights(single), weights(tmp_path))


# ---- FSDP2 teacher under DDP ------------------------------------------------------------

@pytest.mark.distributed
def test_fsdp_teacher_is_sharded_under_ddp(single, tmp_path):
    ok(torchrun(tmp_path, "--placement", "fsdp"))
    for f in reports(tmp_path):
        assert (f["world"], f["distributed_type"]) == (2, "MULTI_CPU")
        assert f["teacher_type"].startswith("FSDP") and not f["teacher_requires_grad"]
        assert_halves(f["teacher_shards"], min_sharded=40)
    assert_same_weights(weights(single), weights(tmp_path))  # sharding the teacher changes nothing learnt


# ---- the CLI under accelerate launch ------------------------------------------------------

@pytest.mark.distributed
def test_cli_runs_unchanged_under_accelerate_launch(workspace):  # noqa: F811 (the imported fixture)
    """`accelerate launch --config_file launch/ddp.yaml -m distill_toolkit.cli train CONFIG.yaml`."""
    config = _write_config(workspace, teacher={"path": str(workspace / "teacher")},
                           student={"init_from": "teacher", "layers": [1, 3]},
                           distillation={"temperature": 2, "hard_label_weight": 0.5})
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "ddp.yaml"),
           "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
           "-m", "distill_toolkit.cli", "train", str(config), "--set", "training.teacher_placement=fsdp"]
    job = ok(run_job(cmd, env={"ACCELERATE_USE_CPU": "1"}))
    summary = json.loads((workspace / "out" / "result.json").read_text())
    assert summary["global_step"] == 6  # 6 optimiser steps of 2 ranks x 16 examples
    assert (workspace / "out" / "final" / "model.safetensors").is_file()
    assert job.output.count("resumed from") == 0


# ---- failures -----------------------------------------------------------------------------

@pytest.mark.distributed
def test_a_dying_rank_ends_the_whole_job_with_its_error(tmp_path):
    job = torchrun(tmp_path, "--fail-rank", "1", "--fail-at", "2", timeout=120)
    assert job.returncode != 0
    assert job.seconds < 100, f"the surviving rank hung for {job.seconds:.0f} s"
    assert "injected failure on rank 1 at step 2" in job.output, job.rank_errors()
    assert re.search(r"rank\s*:\s*1", job.output), "the launcher's summary must name the failed rank"


@pytest.mark.distributed
def test_accelerate_launch_cpu_flag_is_refused_not_run_alone(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts one process: it must stop and name what works."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--main_process_port", str(free_port()), str(WORKER), str(tmp_path)]
    job = run_job(cmd, timeout=120)
    assert job.returncode != 0 and not (tmp_path / "final").exists()
    assert "started this process alone" in job.output and "launch/ddp.yaml" in job.output, job.rank_errors()


def test_a_rank_left_alone_is_refused(monkeypatch):
    from types import SimpleNamespace

    from distill_toolkit.engine.accelerator import LaunchError, _check_built

    monkeypatch.setenv("WORLD_SIZE", "2")
    alone = SimpleNamespace(num_processes=1, distributed_type=SimpleNamespace(name="NO"))
    with pytest.raises(LaunchError, match=r"started 2 processes but this one joined a group of 1.*launch/ddp.yaml"):
        _check_built(alone, "ddp")


# ---- launch files, configs, bad input (single process) ----------------------------------

LAUNCH_FILES = ("single", "ddp", "fsdp2", "zero2", "zero3", "zero3_offload", "multi_node")


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_files_parse_and_name_their_mode(name):
    config = yaml.safe_load((LAUNCH / f"{name}.yaml").read_text())
    expected = {"single": "NO", "ddp": "MULTI_GPU", "fsdp2": "FSDP", "multi_node": "MULTI_GPU"}.get(name, "DEEPSPEED")
    assert config["distributed_type"] == expected
    if expected == "DEEPSPEED":
        ds_file = ROOT / config["deepspeed_config"]["deepspeed_config_file"]
        ds = json.loads(ds_file.read_text())
        assert ds_file.stem == name
        assert ds["zero_optimization"]["stage"] == (2 if name == "zero2" else 3)
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
            assert ds[key] == "auto", f"{ds_file.name}: {key} should be filled by Accelerate"
        assert ds["bf16"]["enabled"] == ds["fp16"]["enabled"] == "auto"
    if name == "fsdp2":
        assert config["fsdp_config"]["fsdp_version"] == 2
    if name == "multi_node":
        assert config["main_process_ip"] == "<MAIN_NODE_IP>" and config["num_machines"] > 1


def test_zero3_offload_config_offloads_params_and_optimizer():
    ds = json.loads((DS_CONFIGS / "zero3_offload.json").read_text())["zero_optimization"]
    assert ds["offload_param"]["device"] == ds["offload_optimizer"]["device"] == "cpu"


def test_slurm_script_runs_accelerate_launch_on_every_node(tmp_path):
    """The script against stand-ins for srun/scontrol/accelerate: what each node would run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'node-a\\nnode-b\\n'\n")
    (bin_dir / "accelerate").write_text("#!/bin/bash\necho \"accelerate $*\"\n")
    # srun runs its command once per node, as SLURM would, with that node's SLURM_NODEID
    (bin_dir / "srun").write_text("#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
                                  "for n in 0 1; do SLURM_NODEID=$n \"$@\"; done\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NNODES="2", SLURM_JOB_NODELIST="node-[a-b]",
               GPUS_PER_NODE="4")
    done = subprocess.run(["bash", str(LAUNCH / "slurm.sh"), "run.yaml"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        assert "--config_file launch/multi_node.yaml" in line and "--num_machines 2" in line
        assert "--num_processes 8" in line and f"--machine_rank {rank}" in line
        assert "--main_process_ip node-a" in line and line.endswith("train run.yaml")


def _cfg(**kw):
    from distill_toolkit import TrainingConfig

    return TrainingConfig(output_dir="unused", trackers=[], **kw)


def test_unknown_teacher_placement_is_refused():  # a value check: config alone
    from distill_toolkit import ConfigError

    with pytest.raises(ConfigError, match=r"training.teacher_placement: unknown placement 'sharded'.*zero3"):
        _cfg(teacher_placement="sharded").validate()


def test_zero3_teacher_needs_a_deepspeed_launch():
    from distill_toolkit import ConfigError

    with pytest.raises(ConfigError, match=r"teacher_placement: 'zero3' cannot run under a single launch.*"
                                          r"launch/zero2.yaml.*teacher_placement: fsdp"):
        check_launch(_cfg(teacher_placement="zero3"))


def test_fsdp_teacher_is_refused_under_deepspeed(monkeypatch):
    from distill_toolkit import ConfigError

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match=r"'fsdp' cannot run under a deepspeed launch.*teacher_placement: zero3"):
        check_launch(_cfg(teacher_placement="fsdp"))


def test_accelerate_fsdp_on_cpu_names_the_route_that_works(monkeypatch):
    from distill_toolkit.engine.accelerator import LaunchError

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    with pytest.raises(LaunchError, match=r"needs GPUs.*launch/ddp.yaml.*teacher_placement: fsdp"):
        check_launch(_cfg())


def test_deepspeed_without_a_compiler_names_the_route_that_works(monkeypatch, tmp_path):
    from distill_toolkit.engine.accelerator import LaunchError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the check is for CPU runs, also on GPU hosts
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    with pytest.raises(LaunchError, match=r"no C\+\+ compiler.*launch/ddp.yaml.*teacher_placement: fsdp"):
        check_launch(_cfg(deepspeed_config=str(DS_CONFIGS / "zero2.json")))


def test_missing_deepspeed_config_is_refused():
    from distill_toolkit import ConfigError

    with pytest.raises(ConfigError, match=r"training.deepspeed_config: file 'nope.json' not found"):
        check_launch(_cfg(deepspeed_config="nope.json"))


def test_cli_refuses_placement_before_loading_any_model(tmp_path):
    config = {"teacher": {"path": str(tmp_path / "no-teacher-here")}, "student": {"path": str(tmp_path / "nope")},
              "data": {"name": "sentiment"},
              "training": {"output_dir": str(tmp_path / "out"), "teacher_placement": "zero3"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "distill_toolkit.cli", "train", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "training.teacher_placement" in done.stderr and "launch/zero2.yaml" in done.stderr
    assert "no-teacher-here" not in done.stderr  # refused before the missing teacher was even looked for


def test_cpu_offload_teacher_gives_the_replicated_result(single, tmp_path):
    facts = _worker().run([str(tmp_path), "--batch-size", "8", "--placement", "cpu_offload"])
    assert facts["history"] == pytest.approx(json.loads((single / "report_rank0.json").read_text())["history"],
                                             rel=1e-6)
    assert_same_weights(weights(single), weights(tmp_path), atol=1e-6)
