"""Start and stop a llama-cpp-python OpenAI-compatible server (``python -m llama_cpp.server``) on 127.0.0.1.

Used by the served-teacher tests, example and benchmark, and handy for trying a served teacher locally::

    with llama_server(smollm2_gguf(), Path("server.log")) as url:   # http://127.0.0.1:PORT/v1
        teacher = ServedTeacher(url, "smollm2", tokenizer, top_k=32)

It runs ``--logits_all true`` (the echoed prompt log-probabilities need it) on one thread at a free port,
waits until ``/v1/models`` answers, and stops the process by its PID on exit. llama-cpp-python is the
``served`` extra (``CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'llama-cpp-python[server]==0.3.36'``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["MODEL_ALIAS", "free_port", "llama_server"]

MODEL_ALIAS = "smollm2"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/models", timeout=2) as answer:
            return bool(json.loads(answer.read()).get("data"))
    except OSError:
        return False


@contextlib.contextmanager
def llama_server(gguf: Path, log: Path, *, alias: str = MODEL_ALIAS, n_ctx: int = 512, threads: int = 1,
                 start_timeout_s: float = 180):
    """``http://127.0.0.1:PORT/v1`` of a llama-cpp-python server for ``gguf``, stopped by PID on exit."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
               "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true", "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx), "--verbose", "false"]
    url = f"http://127.0.0.1:{port}/v1"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-cpp-python server did not start (exit {process.poll()}):\n"
                                   + Path(log).read_text()[-3000:])
            time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
