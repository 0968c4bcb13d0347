"""A teacher served by an inference server: top-k log-probabilities over the OpenAI-compatible API.

``teacher: {server: http://HOST:PORT/v1, model: NAME, top_k: K}`` in a config (or :class:`ServedTeacher`
in Python) stands in for a teacher model in strategy ``causal_lm``: each batch's sequences are sent to
``/v1/completions`` with ``echo: true, logprobs: K, max_tokens: 1`` and the answer's top-K log-probabilities
of every prompt position become the batch's :class:`SparseTeacher` (what a top-k teacher cache holds).
That works offline (``distill-toolkit cache-teacher`` writes them to the teacher cache once) and
on-policy (``strategy_options.lmbda``: the student's samples are scored by the server as they are drawn).

Tested with llama-cpp-python's server (``python -m llama_cpp.server --model M.gguf --logits_all true``);
vLLM and SGLang speak the same API (docs/causal_lm.md says what to set on them).

What :meth:`ServedTeacher.connect` checks before any training: the server answers (retries with back-off,
a timeout), it serves ``model`` (``/v1/models``), it returns K log-probabilities per position, whether it
takes token-id prompts (else the text is sent and the server's tokens are compared with ours, per
sequence), where in its answer the distribution after token ``t`` sits (OpenAI's convention puts it at
entry ``t + 1``; llama-cpp-python's at ``t``, found with a probe), and that its vocabulary is the
student tokenizer's (its ``/extras/tokenize`` or ``/tokenize`` where it has one, and the token texts of
its answer). Temperature: see :mod:`distill_toolkit.teachers.served_format`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Optional, Sequence

import torch
from torch import nn

from distill_toolkit.features import ModelView
from distill_toolkit.losses import SparseTeacher
from distill_toolkit.teachers.served_client import HTTPStatusError, ServedTeacherError, ServerClient
from distill_toolkit.teachers.served_format import TokenIndex, parse_entry, tempered_top_k

__all__ = ["ServedTeacher", "ServedTeacherError", "served_teacher_from_spec"]

PROBE = "The capital of France is Paris. The capital of Italy is Rome, and the capital of Spain is"
PROMPT_FORMATS = ("auto", "ids", "text")
CROSS_TOKENIZER_FIX = ("Fix: serve a teacher that uses the student's tokenizer (the same vocabulary), or distil "
                       "across tokenizers with a local teacher model (docs/causal_lm.md, cross-tokenizer KD)")


class ServedTeacher(nn.Module):
    """A frozen teacher behind an OpenAI-compatible server; calling :meth:`view` scores a batch.

    Args:
        server: the server's ``/v1`` URL, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model name the server serves (one of ``/v1/models``).
        tokenizer: the student's tokenizer; the server's vocabulary must be the same.
        top_k: log-probabilities asked per position (K).
        temperature: the KD temperature the returned distributions are put at (the server's are at 1).
        prompt: ``ids`` (token-id prompts: vLLM, SGLang), ``text`` (llama-cpp-python) or ``auto`` (probe).
        batch_size: sequences per request (OpenAI batch prompts; llama-cpp-python takes 1).
        timeout_s, retries, backoff_s, concurrency, api_key: see :class:`ServerClient`.
        connect: run :meth:`connect` now.
    """

    def __init__(self, server: str, model: str, tokenizer, top_k: int, *, temperature: float = 1.0,
                 prompt: str = "auto", batch_size: int = 1, timeout_s: float = 120.0, retries: int = 3,
                 backoff_s: float = 0.5, concurrency: int = 4, api_key: Optional[str] = None, connect: bool = True):
        super().__init__()
        if prompt not in PROMPT_FORMATS:
            raise ValueError(f"teacher.prompt: unknown {prompt!r}. Fix: use one of {', '.join(PROMPT_FORMATS)}")
        self.client = ServerClient(server, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                   concurrency=concurrency, api_key=api_key)
        self.server, self.model_name, self.top_k = server, model, int(top_k)
        self.temperature, self.batch_size, self.prompt = float(temperature), int(batch_size), prompt
        self.tokenizer = tokenizer
        self.index = TokenIndex(tokenizer)
        self.vocab_size = self.index.size
        identity = json.dumps({"served": model, "top_k": self.top_k}, sort_keys=True).encode()
        # the teacher's fingerprint (teacher caches) hashes its state_dict: this buffer names the served model
        self.register_buffer("identity", torch.tensor(list(hashlib.sha256(identity).digest()), dtype=torch.uint8))
        self.prompt_format: Optional[str] = None if prompt == "auto" else prompt
        self.lag: Optional[int] = None  # answer entry of the distribution after token t is t + lag
        self._first: dict[int, dict] = {}  # distribution after a one-token prefix (when lag == 0), by token
        self.stats = {"requests": 0, "sequences": 0, "tokens": 0}
        if connect:
            self.connect()

    # ---- checks -------------------------------------------------------------------------
    def connect(self) -> "ServedTeacher":
        """Check the server (reachable, model served, K log-probs, prompt format, alignment, vocabulary)."""
        served = [m.get("id") for m in self.client.get("/models").get("data", [])]
        if self.model_name not in served:
            raise ServedTeacherError(f"teacher.model: the server at {self.server} does not serve {self.model_name!r}; "
                                     f"it serves {served}. Fix: set `teacher.model` to one of them (llama-cpp-python: "
                                     "the --model_alias given, else the model path; vLLM: --served-model-name)")
        probe = self.tokenizer(PROBE, add_special_tokens=False)["input_ids"]
        entries = self._probe_echo(probe)
        self._check_count(entries)
        self._check_vocabulary(probe, entries)
        self.lag = self._find_lag(probe, entries)
        return self

    def _probe_echo(self, probe: list[int]) -> dict:
        if self.prompt_format is None:
            try:
                self.prompt_format = "ids"
                return self._complete([probe], echo=True, retries=0)[0]
            except HTTPStatusError as err:
                if err.status not in (400, 422) and "prompt" not in err.body:
                    raise
                self.prompt_format = "text"  # llama-cpp-python refuses token ids (HTTP 500 naming `prompt`)
        return self._complete([probe], echo=True)[0]

    def _check_count(self, answer: dict) -> None:
        counts = [len(e) for e in answer["top_logprobs"] if e]
        most, wanted = max(counts, default=0), min(self.top_k, self.vocab_size)
        if most < wanted:
            raise ServedTeacherError(
                f"teacher.top_k: asked for {self.top_k} log-probabilities per position, the server returned at most "
                f"{most} (its vocabulary may be smaller, it may cap them, or several tokens share a text). Fix: lower "
                f"`teacher.top_k` to at most {most}, or raise the server's limit (vLLM: --max-logprobs)")

    def _check_vocabulary(self, probe: list[int], answer: dict) -> None:
        server_ids = self._server_tokenize(PROBE)
        if server_ids is not None and server_ids != probe and server_ids[1:] != probe:  # [1:]: a BOS it adds
            raise ServedTeacherError(
                f"the server's vocabulary differs from the student's tokenizer: it tokenizes {PROBE[:30]!r}... as "
                f"{server_ids[:8]}..., the student's tokenizer as {probe[:8]}.... {CROSS_TOKENIZER_FIX}")
        texts = answer["tokens"][:len(probe)]
        same = sum(self.index.matches(t, i) for t, i in zip(texts, probe))
        keys = [k for e in answer["top_logprobs"] if e for k in e]
        known = sum(self.index.known(k) for k in keys)
        if len(texts) < len(probe) or same < 0.9 * len(probe) or known < 0.9 * max(len(keys), 1):
            raise ServedTeacherError(
                f"the server's vocabulary differs from the student's tokenizer: {same}/{len(probe)} probe tokens and "
                f"{known}/{len(keys)} of its top-k token texts match it (server: {texts[:6]}, student: "
                f"{[self.index.text[i] for i in probe[:6]]}). {CROSS_TOKENIZER_FIX}")

    def _server_tokenize(self, text: str) -> Optional[list[int]]:
        """The server's own tokens of ``text`` (llama-cpp-python ``/extras/tokenize``, vLLM ``/tokenize``)."""
        for path, body in (("/extras/tokenize", {"input": text, "model": self.model_name}),
                           ("/tokenize", {"prompt": text, "model": self.model_name, "add_special_tokens": False})):
            try:
                tokens = self.client.post(path, body, root=True, retries=0).get("tokens")
            except HTTPStatusError:
                continue
            if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                return tokens
        return None

    def _find_lag(self, probe: list[int], answer: dict) -> int:
        """Where the distribution after ``probe[:2]`` sits in the echo answer: entry 2 (OpenAI) or 1."""
        after = self._next_token([probe[:2]])[0]
        scores = {}
        for lag in (0, 1):
            entry = parse_entry(answer["top_logprobs"][1 + lag], self.index, self.top_k)
            common = [t for t in after if t in entry]
            if len(common) >= min(3, len(after)):
                scores[lag] = max(abs(after[t] - entry[t]) for t in common)
        good = {lag: err for lag, err in scores.items() if err < 0.05}
        if not good:
            raise ServedTeacherError(
                f"cannot align the server's echoed log-probabilities with the prompt positions (differences {scores}); "
                "the server may not compute log-probabilities of the prompt. Fix: start llama-cpp-python with "
                "`--logits_all true`; on vLLM check that echo with logprobs is supported")
        return min(good, key=good.get)

    # ---- requests -----------------------------------------------------------------------
    def _prompt(self, ids: Sequence[int]):
        if self.prompt_format == "ids":
            return [int(t) for t in ids]
        return self.tokenizer.decode(list(ids), clean_up_tokenization_spaces=False)

    def _complete(self, sequences: list[list[int]], *, echo: bool, retries: Optional[int] = None) -> list[dict]:
        """One ``/completions`` request for ``sequences``; per sequence ``{"tokens", "top_logprobs"}``."""
        prompts = [self._prompt(s) for s in sequences]
        body = {"model": self.model_name, "prompt": prompts[0] if len(prompts) == 1 else prompts, "echo": echo,
                "logprobs": self.top_k, "max_tokens": 1, "temperature": 0.0}
        answer = self.client.post("/completions", body, retries=retries)
        self.stats["requests"] += 1
        choices = sorted(answer.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != len(sequences) or any(not c.get("logprobs") for c in choices):
            raise ServedTeacherError(f"the server answered {len(sequences)} prompt(s) with {len(choices)} choice(s) "
                                     "without the log-probabilities asked for. Fix: start llama-cpp-python with "
                                     "`--logits_all true`; check that the server supports `logprobs` on /completions")
        return [{"tokens": c["logprobs"].get("tokens") or [], "top_logprobs": c["logprobs"].get("top_logprobs") or []}
                for c in choices]

    def _next_token(self, prefixes: list[list[int]]) -> list[dict[int, float]]:
        """The distribution after each prefix, from the first generated token's log-probabilities."""
        answers = self._complete(prefixes, echo=False)
        return [parse_entry((a["top_logprobs"] or [None])[0], self.index, self.top_k) for a in answers]

    def _rows(self, sequence: list[int], answer: dict) -> list[dict[int, float]]:
        """``{id: logprob}`` after each of ``sequence[:-1]`` (position t predicts token t + 1)."""
        tokens, tops = answer["tokens"], answer["top_logprobs"]
        n = len(sequence)
        if len(tops) < n - 1 + self.lag or len(tokens) < n:
            raise ServedTeacherError(f"the server returned log-probabilities for {len(tops)} positions of a {n}-token "
                                     "prompt (it may skip BOS tokens inside a sequence). Fix: remove BOS tokens from "
                                     "inside the sequences, or use a server that takes token-id prompts")
        if self.prompt_format == "text":
            wrong = next((t for t in range(n) if not self.index.matches(tokens[t], sequence[t])), None)
            if wrong is not None:
                raise ServedTeacherError(
                    f"the server tokenized the text of a sequence differently from its token ids (position {wrong}: "
                    f"server {tokens[wrong]!r}, ours {self.index.text[sequence[wrong]]!r}); a text-prompt server "
                    "(llama-cpp-python) can only score sequences in their canonical tokenization. Fix: use a server "
                    "that takes token-id prompts (vLLM, SGLang: teacher.prompt: ids), or data tokenized by the "
                    "student's tokenizer")
        rows = [parse_entry(tops[t + self.lag], self.index, self.top_k) if tops[t + self.lag] else None
                for t in range(n - 1)]
        if rows and rows[0] is None:  # the first entry is null in echo answers: ask for it alone
            first = sequence[0]
            if first not in self._first:
                self._first[first] = self._next_token([[first]])[0]
            rows[0] = self._first[first]
        return rows

    def score(self, sequences: Sequence[Sequence[int]]) -> list[SparseTeacher]:
        """Per sequence of ``n >= 2`` token ids, its ``(n - 1, K)`` :class:`SparseTeacher` at ``temperature``."""
        if self.lag is None:
            self.connect()
        sequences = [[int(t) for t in s] for s in sequences]
        chunks = [sequences[i:i + self.batch_size] for i in range(0, len(sequences), self.batch_size)]
        answers = [a for chunk in self.client.map(lambda c: self._complete(c, echo=True), chunks) for a in chunk]
        self.stats["sequences"] += len(sequences)
        self.stats["tokens"] += sum(len(s) for s in sequences)
        return [tempered_top_k(self._rows(s, a), self.top_k, self.vocab_size, self.temperature)
                for s, a in zip(sequences, answers)]

    def view(self, inputs: dict) -> ModelView:
        """The teacher's view of a batch: ``logits[0]`` a ``(B, L-1, K)`` :class:`SparseTeacher` (shifted)."""
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        B, L = ids.shape
        k = self.top_k
        logprobs = torch.full((B, max(L - 1, 0), k), -float(torch.log(torch.tensor(float(k)))))
        indices = torch.arange(k).expand(B, max(L - 1, 0), k).clone()
        tail = torch.full((B, max(L - 1, 0)), torch.finfo(torch.float32).min)
        rows = [mask[b].nonzero().squeeze(-1).cpu() for b in range(B)]
        todo = [b for b in range(B) if len(rows[b]) >= 2]
        scored = self.score([ids[b, rows[b]].tolist() for b in todo])
        for b, sparse in zip(todo, scored):
            where = rows[b][:-1]  # position t of the batch predicts t + 1
            logprobs[b, where], indices[b, where], tail[b, where] = sparse.logprobs, sparse.indices, sparse.tail_logprob
        device = ids.device
        return ModelView(logits=[SparseTeacher(logprobs.to(device), indices.to(device), tail.to(device))],
                         inputs_mask=mask, model=self)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **_) -> ModelView:
        """:meth:`view` of ``input_ids`` (other model inputs are ignored)."""
        return self.view({"input_ids": input_ids, "attention_mask": attention_mask})

    def canonical_completions(self, prompts: Sequence[Sequence[int]],
                              completions: Sequence[Sequence[int]]) -> list[list[int]]:
        """The student's sampled ``completions`` as a text-prompt server will see them: re-tokenized.

        A text-prompt server (llama-cpp-python) re-tokenizes what it is sent, so sampled token sequences that
        are not canonical could not be scored position by position. On-policy training then learns the
        canonical tokens of the same text; with token-id prompts the completions are kept as they are.
        """
        if self.prompt_format != "text":
            return [list(c) for c in completions]
        out = []
        for prompt, completion in zip(prompts, completions):
            text = self.tokenizer.decode(list(prompt) + list(completion), clean_up_tokenization_spaces=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(ids[len(prompt):] if ids[:len(prompt)] == list(prompt) and len(ids) > len(prompt)
                       else list(completion))
        return out

    def extra_repr(self) -> str:
        return f"server={self.server!r}, model={self.model_name!r}, top_k={self.top_k}, temperature={self.temperature}"


def served_teacher_from_spec(spec, tokenizer, temperature: float, connect: bool = True) -> ServedTeacher:
    """A :class:`ServedTeacher` from a config's ``teacher:`` section (:class:`ServedTeacherSpec`), connected
    unless ``connect=False`` (e.g. training from its cache: the server is not needed)."""
    return ServedTeacher(spec.server, spec.model, tokenizer, spec.top_k, temperature=temperature, prompt=spec.prompt,
                         batch_size=spec.batch_size, timeout_s=spec.timeout_s, retries=spec.retries,
                         backoff_s=spec.backoff_s, concurrency=spec.concurrency, api_key=spec.api_key,
                         connect=connect)
