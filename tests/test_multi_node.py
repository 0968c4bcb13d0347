"""Two machines on one host: ``launch/multi_node.yaml`` as machine ranks 0 and 1, and ``launch/slurm.sh``
under a real (single-host) Slurm.

- ``launch/multi_node.yaml`` is launched twice, as two "machines" (``--machine_rank 0`` and ``1``) of one
  process each, on 127.0.0.1 over gloo; only addresses and counts are given on the command line. The
  ranks must form one group of 2 (one worker under each launcher) and train exactly like one process
  with the same global batch, as ``tests/test_distributed.py`` checks for one machine.
- ``launch/slurm.sh`` runs unchanged under ``sbatch`` on a Slurm cluster started here: munged, slurmctld
  and two slurmd daemons (Debian's Slurm is built with multiple-slurmd support, so two nodes, named after
  this host, can live on 127.0.0.1). ``sbatch --nodes 2`` then gives the script the two-node allocation it
  asks for, SLURM_NODEID 0 and 1 become the machine ranks, and the CLI run it starts must reproduce a
  single-process run. Skipped, with the apt line to run, where the Slurm binaries are not installed.

Every process is started here, and on a timeout stopped here, by its PID.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_cli import _data, _tokenizer, _write_config
from test_distributed import _stop, _worker, assert_same_weights, free_port, reports, weights
from transformers import BertConfig, BertForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
WORKER = Path(__file__).parent / "scripts" / "multi_node_train.py"
TIMEOUT = 90  # per job; a healthy two-machine job takes 10-20 s here
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "sinfo", "squeue", "scancel")
SLURM_APT = ("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
             "slurmctld slurmd slurm-client munge")


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", **(extra or {}))
    for key in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "WORLD_SIZE", "RANK", "LOCAL_RANK",
                "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


# ---- two `accelerate launch` machines ------------------------------------------------------

@dataclass
class Machine:
    rank: int
    pid: int
    returncode: int
    output: str


def launch_machines(out: Path, *args: str, timeout: int = TIMEOUT) -> list[Machine]:
    """``accelerate launch --config_file launch/multi_node.yaml`` once per machine rank, all at once."""
    port = free_port()
    logs = out.parent / f"{out.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for rank in range(2):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(LAUNCH / "multi_node.yaml"),
               "--machine_rank", str(rank), "--num_machines", "2", "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               str(WORKER), str(out), *args]
        log = open(logs / f"machine{rank}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.monotonic() + timeout
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for proc, _ in procs:
            _stop(proc)  # this launcher and the workers under it, by PID
        text = "\n".join(f"----- machine {r} -----\n{(logs / f'machine{r}.log').read_text()[-3000:]}"
                         for r in range(2))
        pytest.fail(f"the two machines did not finish within {timeout} s (killed):\n{text}")
    finally:
        for _, log in procs:
            log.close()
    return [Machine(rank, proc.pid, proc.returncode, (logs / f"machine{rank}.log").read_text())
            for rank, (proc, _) in enumerate(procs)]


def ok(machines: list[Machine]) -> list[Machine]:
    for m in machines:
        assert m.returncode == 0, f"machine {m.rank} failed (exit {m.returncode}):\n{m.output[-4000:]}"
    return machines


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one process, global batch 8 (the same as tests/test_distributed.py's)."""
    out = tmp_path_factory.mktemp("single")
    _worker().run([str(out), "--batch-size", "8"])
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_multi_node_yaml_as_two_machines_trains_like_one_process(single, tmp_path):
    out = tmp_path / "run"
    machines = ok(launch_machines(out, "--batch-size", "4"))  # 2 machines x 1 process x batch 4 = 8
    seen = [json.loads((out / f"launch_rank{r}.json").read_text()) for r in range(2)]
    for rank, s in enumerate(seen):  # one worker under each launcher, each on its own node of 2
        assert s["ppid"] == machines[rank].pid, f"rank {rank} was not started by machine {rank}'s launcher: {s}"
        assert (s["GROUP_RANK"], s["GROUP_WORLD_SIZE"]) == (str(rank), "2")
        assert (s["LOCAL_RANK"], s["LOCAL_WORLD_SIZE"], s["WORLD_SIZE"]) == ("0", "1", "2")
        assert s["MASTER_ADDR"] == "127.0.0.1"
    facts = reports(out)
    for f in facts:
        assert (f["world"], f["env_world_size"], f["distributed_type"]) == (2, "2", "MULTI_CPU")
        assert f["is_main"] == (f["rank"] == 0)
    ref = json.loads((single / "report_rank0.json").read_text())
    assert facts[0]["global_step"] == ref["global_step"] == 8
    torch.testing.assert_close(torch.tensor(facts[0]["history"]), torch.tensor(ref["history"]), rtol=1e-5, atol=1e-6)
    assert_same_weights(weights(single), weights(out))
    for f in facts:  # evaluation gathers over both machines: 13 examples score 13
        assert f["eval"]["count"] == 13 and f["eval"]["accuracy"] == pytest.approx(ref["eval"]["accuracy"])


@pytest.mark.distributed
@pytest.mark.slow
def test_a_dying_machine_ends_the_other_one_too(tmp_path):
    started = time.monotonic()
    machines = launch_machines(tmp_path / "run", "--fail-rank", "1", "--fail-at", "2")
    seconds = time.monotonic() - started
    assert all(m.returncode != 0 for m in machines), [(m.rank, m.returncode) for m in machines]
    assert "injected failure on rank 1 at step 2" in machines[1].output, machines[1].output[-3000:]
    assert seconds < 60, f"machine 0 outlived machine 1's failure by {seconds:.0f} s"
    assert not (tmp_path / "run" / "final").exists()


# ---- launch/slurm.sh under a real Slurm ----------------------------------------------------

class Slurm:
    """munged + slurmctld + 2 slurmd (nodes HOST and HOST-1, 1 CPU each) on 127.0.0.1, in a temp dir.

    slurm.sh dials the first node of SLURM_JOB_NODELIST (which Slurm sorts by name) by its name, so
    that node is named as this host (a name that resolves); HOST-1 sorts after it and is only
    Slurm's. (NodeName=localhost is rewritten by Slurm and clashes: "fatal: Duplicated NodeHostName".)
    """

    def __init__(self, root: Path):
        self.host = socket.gethostname().split(".")[0]
        self.nodes = (self.host, f"{self.host}-1")
        self.root, self.procs, self.jobs = root, [], []
        root.chmod(0o755)  # munged wants its socket's directories searchable by everyone
        for sub in ("state", *(f"spool/{n}" for n in self.nodes)):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self.key = root / "munge.key"
        self.key.write_bytes(os.urandom(1024))
        self.key.chmod(0o600)
        self.socket = root / "munge.sock"
        self.conf = root / "slurm.conf"
        self.conf.write_text(self.config())
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":
                del self.env[key]

    def config(self) -> str:
        user, host = getpass.getuser(), self.host
        ctld, *slurmd = (free_port() for _ in range(1 + len(self.nodes)))
        r = self.root
        lines = [
            "ClusterName=distilltest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmUser={user}", f"SlurmdUser={user}",
            f"SlurmctldPort={ctld}", f"SlurmdPort={slurmd[0]}",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r}/state", f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid", f"SlurmdPidFile={r}/slurmd.%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log", f"SlurmdLogFile={r}/slurmd.%n.log",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            # no cgroups: processes tracked through /proc, no task binding or containment
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "SchedulerType=sched/builtin",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none", "ReturnToService=2", "SlurmdTimeout=60", "InactiveLimit=0", "KillWait=5",
            "MailProg=/bin/true",
        ]
        for name, port in zip(self.nodes, slurmd):
            lines.append(f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs=1 "
                         "RealMemory=1000 State=UNKNOWN")
        lines.append("PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
        return "\n".join(lines) + "\n"

    def _daemon(self, name: str, *cmd: str) -> None:
        log = open(self.root / f"{name}.out", "w")
        self.procs.append((name, subprocess.Popen(list(cmd), cwd=self.root, env=self.env, stdout=log,
                                                  stderr=subprocess.STDOUT)))
        log.close()

    def start(self) -> None:
        r = self.root
        self._daemon("munged", "munged", "--foreground", "--force", f"--socket={self.socket}",
                     f"--key-file={self.key}", f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log",
                     f"--seed-file={r}/munged.seed")
        self._wait(lambda: self.socket.exists(), 15, "munged never created its socket")
        self._daemon("slurmctld", "slurmctld", "-D", "-c", "-f", str(self.conf))
        self._wait(lambda: self._cli("scontrol", "ping").returncode == 0, 30, "slurmctld never answered")
        for node in self.nodes:
            self._daemon(f"slurmd-{node}", "slurmd", "-D", "-f", str(self.conf), "-N", node)
        self._wait(self._all_idle, 45, "the slurmd nodes never came up idle")

    def _cli(self, *cmd: str, timeout: int = 30) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def _all_idle(self) -> bool:
        done = self._cli("sinfo", "-h", "-N", "-o", "%N %t")
        states = dict(line.split() for line in done.stdout.splitlines() if line.strip())
        return done.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes)

    def _wait(self, ready, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    pytest.fail(f"{name} exited with {proc.returncode} while starting the cluster:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        pytest.fail(f"{what} within {seconds} s:\n{self.logs()}")

    def logs(self) -> str:
        files = sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out"))
        return "\n".join(f"----- {f.name} -----\n{f.read_text(errors='replace')[-2500:]}" for f in files)

    def sbatch(self, *args: str, env: dict, timeout: int = TIMEOUT) -> dict:
        """Submit, wait for the job to end (scancel on timeout) and return its ``scontrol show job`` fields."""
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, env={**env, "SLURM_CONF": str(self.conf)},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"sbatch refused the job: {done.stderr}"
        job = done.stdout.strip().split(";")[0]
        self.jobs.append(job)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job)
            if info.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
                return info
            time.sleep(1)
        self._cli("scancel", job)
        pytest.fail(f"job {job} did not end within {timeout} s (cancelled): {self.job(job)}\n{self.logs()}")

    def job(self, job: str) -> dict:
        text = self._cli("scontrol", "show", "job", "-o", job).stdout
        return dict(field.split("=", 1) for field in text.split() if "=" in field)

    def stop(self) -> None:
        for job in self.jobs:
            self._cli("scancel", job)
        deadline = time.monotonic() + 15
        while self.jobs and time.monotonic() < deadline and self._cli("squeue", "-h").stdout.strip():
            time.sleep(0.5)
        for _, proc in reversed(self.procs):  # slurmds, slurmctld, then munged: each by its PID
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing:
        pytest.fail(f"Slurm is not installed (missing on PATH: {', '.join(missing)}); .ci/run installs it: {SLURM_APT}")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        socket.gethostbyname(cluster.host)
    except OSError as error:
        pytest.fail(f"this host's name {cluster.host!r} does not resolve ({error}): slurm.sh dials node 0 by its name")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def workspace(tmp_path):
    """tests/test_cli.py's workspace with dropout off (per-rank dropout draws differ from one process's)."""
    teacher_dir = tmp_path / "teacher"
    tokenizer = _tokenizer(teacher_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertForSequenceClassification(config).save_pretrained(teacher_dir)
    for split, n in (("train", 64), ("dev", 32), ("test", 32)):
        _data(tmp_path / f"{split}.jsonl", n, seed=len(split))  # every sentence 4 words: equal lengths
    return tmp_path


@pytest.mark.distributed
@pytest.mark.slow
def test_slurm_script_on_two_nodes_trains_like_one_process(slurm, workspace):
    config = _write_config(workspace, teacher={"path": str(workspace / "teacher")},
                           student={"init_from": "teacher", "layers": [1, 3]},
                           distillation={"temperature": 2, "hard_label_weight": 0.5})
    ref = subprocess.run([sys.executable, "-m", "distill_toolkit.cli", "train", str(config),
                          "--set", "training.batch_size=32", "--set", f"training.output_dir={workspace / 'single'}"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert ref.returncode == 0, ref.stderr[-3000:]

    env = _env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `accelerate`
                "GPUS_PER_NODE": "1", "MAIN_PORT": str(free_port())})
    # what the script asks for that this cluster has not: GPUs, 32 CPUs per task; the log goes to the workspace
    info = slurm.sbatch("--nodes", "2", "--gres", "none", "--cpus-per-task", "1", "--time", "5",
                        "--output", str(workspace / "slurm-%j.out"), str(LAUNCH / "slurm.sh"), str(config), env=env)
    log = "".join(p.read_text() for p in workspace.glob("slurm-*.out"))
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), f"{info}\n{log[-5000:]}\n{slurm.logs()}"
    hosts = slurm._cli("scontrol", "show", "hostnames", info["NodeList"]).stdout.split()
    assert info["NumNodes"] == "2" and hosts == list(slurm.nodes), (info, hosts)  # hosts[0]: slurm.sh's MAIN_ADDR
    for node in slurm.nodes:  # srun's step 0 (one `accelerate launch`) ran on each node
        assert f"launch task StepId={info['JobId']}.0 request" in (slurm.root / f"slurmd.{node}.log").read_text(), node

    summary = json.loads((workspace / "out" / "result.json").read_text())
    single = json.loads((workspace / "single" / "result.json").read_text())
    assert summary["global_step"] == single["global_step"] == 6  # 2 nodes x batch 16 = one process x batch 32
    assert_same_weights(weights(workspace / "single"), weights(workspace / "out"))
