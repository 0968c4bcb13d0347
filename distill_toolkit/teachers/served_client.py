"""HTTP for a served teacher: JSON requests to an OpenAI-compatible server, with a timeout, retries and a pool.

Standard library only (``urllib``). A request that cannot connect, times out, or gets a 5xx / 429 answer is
retried with exponential back-off (``backoff_s * 2**attempt``); any other 4xx answer is the caller's mistake
and raised at once with the server's own message.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

__all__ = ["ServedTeacherError", "ServerClient"]

_RETRIED_STATUS = (429, 500, 502, 503, 504)


class ServedTeacherError(RuntimeError):
    """The teacher server cannot be used as configured; the message names the cause and the fix."""


class HTTPStatusError(ServedTeacherError):
    """The server answered with an error status (``status``) that retrying will not cure."""

    def __init__(self, message: str, status: int, body: str):
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class ServerClient:
    """JSON over HTTP to ``base_url`` (e.g. ``http://127.0.0.1:8000/v1``).

    Attributes:
        base_url: the server's OpenAI-compatible root, ending in ``/v1``.
        timeout_s: seconds a single request may take (connect + answer).
        retries: extra tries after a failed one (connection errors, timeouts, 5xx, 429).
        backoff_s: wait before the first retry; doubled for each further one.
        concurrency: requests in flight at once (:meth:`map`).
        api_key: sent as ``Authorization: Bearer ...`` when set (vLLM/SGLang ``--api-key``).
    """

    base_url: str
    timeout_s: float = 120.0
    retries: int = 3
    backoff_s: float = 0.5
    concurrency: int = 4
    api_key: Optional[str] = None

    @property
    def root(self) -> str:
        """The server's root without the ``/v1`` suffix (where ``/extras/...`` and ``/tokenize`` live)."""
        url = self.base_url.rstrip("/")
        return url[:-3] if url.endswith("/v1") else url

    def get(self, path: str) -> Any:
        """``GET base_url + path`` as JSON."""
        return self._with_retries(lambda: self._once("GET", self.base_url.rstrip("/") + path, None), path)

    def post(self, path: str, body: dict, *, root: bool = False, retries: Optional[int] = None) -> Any:
        """``POST`` ``body`` as JSON to ``base_url + path`` (``root=True``: the server root + ``path``);
        ``retries`` overrides :attr:`retries` (0 for a probe whose failure is an answer)."""
        url = (self.root if root else self.base_url.rstrip("/")) + path
        return self._with_retries(lambda: self._once("POST", url, body), path, retries)

    def map(self, fn: Callable[[Any], Any], items: Iterable) -> list:
        """``[fn(item) ...]`` in order, ``concurrency`` at a time (the first error is raised)."""
        items = list(items)
        if self.concurrency <= 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))

    # ---- one request and its retries ----------------------------------------------------
    def _once(self, method: str, url: str, body: Optional[dict]) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
            return json.loads(answer.read().decode("utf-8"))

    def _with_retries(self, call: Callable[[], Any], path: str, retries: Optional[int] = None) -> Any:
        retries = self.retries if retries is None else retries
        last: Optional[BaseException] = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return call()
            except urllib.error.HTTPError as err:
                body = _read_body(err)
                if err.code not in _RETRIED_STATUS:
                    raise HTTPStatusError(f"the teacher server answered {path} with HTTP {err.code}: {body[:600]}",
                                          err.code, body) from err
                last = HTTPStatusError(f"HTTP {err.code}: {body[:600]}", err.code, body)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = err
        if isinstance(last, HTTPStatusError):  # it answered, with a server error every time
            raise HTTPStatusError(f"the teacher server answered {path} with {last} ({retries + 1} tries). Fix: see "
                                  "the server's log; llama-cpp-python needs `--logits_all true` for log-probabilities",
                                  last.status, last.body) from last
        raise ServedTeacherError(
            f"cannot reach the teacher server at {self.base_url} ({path}) after {retries + 1} tries, the last "
            f"failing with {type(last).__name__}: {getattr(last, 'reason', last)}. Fix: start the server (e.g. "
            "`python -m llama_cpp.server --model MODEL.gguf --logits_all true --port PORT`), check `teacher.server` "
            "(host, port, the /v1 suffix), or raise `teacher.timeout_s` / `teacher.retries` for a slow one") from last


def _read_body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - a broken body must not hide the status
        return ""
