"""``teacher: {server: ..., model: ..., top_k: ...}``: a teacher behind an OpenAI-compatible inference server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int

SERVED_PROMPT_FORMATS = ("auto", "ids", "text")


@dataclass
class ServedTeacherSpec(Serializable):
    """A served teacher for strategy ``causal_lm`` (see :mod:`distill_toolkit.teachers.served`).

    - ``server``: the server's OpenAI-compatible root, e.g. ``http://127.0.0.1:8000/v1``.
    - ``model``: the name it serves the teacher under (one of its ``/v1/models``).
    - ``top_k``: log-probabilities asked per position (the sparse teacher's K).
    - ``prompt``: ``ids`` (token-id prompts: vLLM, SGLang), ``text`` (llama-cpp-python) or ``auto`` (probed).
    - ``batch_size``: sequences per request (llama-cpp-python takes 1); ``concurrency``: requests in flight.
    - ``timeout_s``, ``retries``, ``backoff_s``: per request; retries wait ``backoff_s * 2**n``.
    - ``api_key``: sent as a bearer token (vLLM/SGLang ``--api-key``).

    The server's log-probabilities are at temperature 1; they are put at ``distillation.temperature`` on
    the toolkit's side (docs/causal_lm.md, "Served teacher").
    """

    server: str = ""
    model: str = ""
    top_k: int = 32
    prompt: str = "auto"
    batch_size: int = 1
    concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5
    api_key: Optional[str] = None

    def validate(self, where: str = "teacher") -> None:
        check_types(self, where)
        check(self.server.startswith(("http://", "https://")), f"{where}.server",
              f"must be an http(s) URL, got {self.server!r}", "set e.g. `server: http://127.0.0.1:8000/v1`")
        check(bool(self.model.strip()), f"{where}.model", "names no model",
              "set it to the name the server serves the teacher under (its /v1/models)")
        check(is_int(self.top_k) and self.top_k >= 1, f"{where}.top_k", f"must be a positive integer, got {self.top_k!r}",
              "set e.g. `top_k: 32`")
        check(self.prompt in SERVED_PROMPT_FORMATS, f"{where}.prompt", f"unknown value {self.prompt!r}",
              f"use one of {', '.join(SERVED_PROMPT_FORMATS)}")
        for name in ("batch_size", "concurrency"):
            value = getattr(self, name)
            check(is_int(value) and value >= 1, f"{where}.{name}", f"must be a positive integer, got {value!r}",
                  f"set e.g. `{name}: 1`")
        check(is_int(self.retries) and self.retries >= 0, f"{where}.retries",
              f"must be an integer >= 0, got {self.retries!r}", "set e.g. `retries: 3`")
        for name in ("timeout_s", "backoff_s"):
            value = getattr(self, name)
            check(is_finite_number(value) and value > 0, f"{where}.{name}", f"must be a positive number, got {value!r}",
                  f"set e.g. `{name}: {ServedTeacherSpec.__dataclass_fields__[name].default}`")
