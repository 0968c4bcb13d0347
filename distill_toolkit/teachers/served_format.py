"""From the OpenAI ``logprobs`` answer to the toolkit's top-k teacher format (:class:`SparseTeacher`).

An OpenAI-compatible completion answer names each of the top log-probabilities by its token's *text*
(``{" the": -0.4, ...}``), not its id; vLLM can send ``"token_id:464"`` instead
(``return_tokens_as_token_ids``). :class:`TokenIndex` maps a token's text back to its id through the
student's tokenizer (whose vocabulary is checked to be the server's). Texts that several ids share (the
partial UTF-8 bytes of a byte-level BPE render as ``""``, as do control tokens on llama.cpp) cannot be
mapped: those entries are dropped and their mass joins the tail.

Temperature: a server returns ``log softmax(z)`` of its logits ``z`` (temperature 1). :func:`tempered_top_k`
turns the K values of a position into the KD temperature ``T``'s distribution on our side: the K entries
become ``l_i / T`` and the tail (the mass ``m = 1 - sum exp(l_i)`` outside them, known exactly) is taken
as if spread evenly over the other ``V - K`` tokens, each ``log(m / (V - K)) / T``; the whole is then
renormalised. At ``T = 1`` this is exactly the server's distribution restricted to the top-K plus the
tail bucket (what a top-k teacher cache stores); at ``T > 1`` the even spread over-estimates the tail's
tempered mass a little (an upper bound: ``sum p^(1/T)`` is largest for an even spread).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from distill_toolkit.losses import SparseTeacher

__all__ = ["TokenIndex", "tempered_top_k"]

_ID_PREFIX = "token_id:"
_FLOOR = torch.finfo(torch.float32).min


class TokenIndex:
    """Token text <-> id for a tokenizer, as OpenAI-compatible servers write token texts.

    ``text[i]`` is the UTF-8 text of id ``i`` with incomplete multi-byte sequences dropped (what
    llama.cpp's server and vLLM write); ``id_of(text)`` is the id, or None when no id or several
    have that text.
    """

    def __init__(self, tokenizer):
        size = len(tokenizer)
        self.size = size
        decoded = tokenizer.batch_decode([[i] for i in range(size)], clean_up_tokenization_spaces=False)
        self.raw = decoded  # a token that *is* U+FFFD's bytes decodes to "\ufffd" on both sides
        self.text = [t.replace("\ufffd", "") for t in decoded]
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self.special = special
        owners: dict[str, list[int]] = {}
        for i, text in enumerate(self.text):
            owners.setdefault(text, []).append(i)
        for i in special:  # llama.cpp renders control tokens as "" unless asked for special tokens
            owners.setdefault("", []).append(i)
        self._id = {text: ids[0] if len(set(ids)) == 1 else None for text, ids in owners.items()}

    def id_of(self, key: str) -> Optional[int]:
        """The id a ``top_logprobs`` key names; None when unknown or shared by several ids."""
        if key.startswith(_ID_PREFIX) and key[len(_ID_PREFIX):].isdigit():
            return int(key[len(_ID_PREFIX):])
        return self._id.get(key)

    def known(self, key: str) -> bool:
        """Whether ``key`` is the text of some id (ambiguous or not) or an explicit ``token_id:N``."""
        return key in self._id or (key.startswith(_ID_PREFIX) and key[len(_ID_PREFIX):].isdigit())

    def matches(self, key: str, token_id: int) -> bool:
        """Whether the server's text ``key`` for a prompt token is id ``token_id``'s."""
        if key.startswith(_ID_PREFIX):
            return key == f"{_ID_PREFIX}{token_id}"
        return key in (self.text[token_id], self.raw[token_id]) or (token_id in self.special and key == "")


def parse_entry(entry: Optional[Mapping[str, float]], index: TokenIndex, k: int) -> dict[int, float]:
    """``{id: logprob}`` of one position's ``top_logprobs``, the ``k`` largest mappable entries."""
    out: dict[int, float] = {}
    for key, value in (entry or {}).items():
        token = index.id_of(key)
        if token is not None and value is not None and math.isfinite(value) and 0 <= token < index.size:
            out[token] = max(out.get(token, -math.inf), float(value))
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:k])


def tempered_top_k(rows: Sequence[Mapping[int, float]], k: int, vocab: int, temperature: float) -> SparseTeacher:
    """``SparseTeacher`` of ``len(rows)`` positions at ``temperature`` from the server's ``{id: logprob}`` rows.

    A row with fewer than ``k`` entries (dropped ambiguous texts) is filled with the smallest unused ids at the
    tail's even share, so no entry claims a zero probability. See the module docstring for the temperature.
    """
    n = len(rows)
    logprobs = torch.empty((n, k), dtype=torch.float64)
    indices = torch.empty((n, k), dtype=torch.long)
    shares = torch.empty((n,), dtype=torch.float64)
    for r, row in enumerate(rows):
        ids, values = list(row.keys())[:k], list(row.values())[:k]
        shares[r] = share = _share(values, vocab)
        used, fill = set(ids), 0
        while len(ids) < k:  # fewer than k mapped: pad with unused ids at the tail's share
            while fill in used:
                fill += 1
            ids.append(fill)
            values.append(share)
            used.add(fill)
        indices[r] = torch.tensor(ids, dtype=torch.long)
        logprobs[r] = torch.tensor(values, dtype=torch.float64)
    rest = max(vocab - k, 0)  # ids outside the k entries: the tail bucket
    scaled = logprobs / temperature
    if not rest:
        total = torch.logsumexp(scaled, dim=-1, keepdim=True)
        return SparseTeacher((scaled - total).float(), indices, torch.full((n,), _FLOOR))
    tail = shares / temperature + math.log(rest)
    total = torch.logsumexp(torch.cat([scaled, tail.unsqueeze(-1)], dim=-1), dim=-1, keepdim=True)
    return SparseTeacher((scaled - total).float(), indices, (tail - total.squeeze(-1)).clamp_min(_FLOOR).float())


def _share(values: Sequence[float], vocab: int) -> float:
    """log of the even share of the tail mass that each id outside the ``values`` entries gets."""
    mass = math.fsum(math.exp(v) for v in values)
    return math.log(max(1.0 - mass, 1e-30)) - math.log(max(vocab - len(values), 1))
