"""``causal_lm``: token-level KD for decoder language models.

Per next-token position that counts (not padding, not a ``-100`` label, so prompts can be
masked by setting their labels to ``-100``)::

    kd_loss_weight(t) * D(p_T || p_S; T)  +  hard_label_weight(t) * CE(student, next token)
    + intermediate matches (hidden states, with projections), as in ``single``

the :class:`~distill_toolkit.strategies.objective.KDObjective`, every setting of it honoured. ``D``
is any logits loss of the registry (``forward_kl``, ``reverse_kl``, ``jsd``, ``skew_kl``,
``total_variation``; ``kd_loss_kwargs`` carries ``beta``/``alpha``/``top_k``).
``temperature_scheduler`` (``flsw``/``cwsm``) gives each token its temperature, its mean taken over
all the micro-batch's counted tokens (whatever ``chunk_size``; one extra pass of the heads without
gradients); ``probability_shift`` swaps the teacher's top logit with the true next token's. A top-k
teacher cache has no full logits, so with one these two are refused at setup (``cwsm``, which reads
the student only, still applies). On-policy batches hold no ground truth: they get no hard-label
term and no probability shift.

The loss is a *sum* over tokens; the loop divides the gradients by the number of tokens of the
whole accumulation window on all ranks (:meth:`loss_items`), so micro-batches with different
token counts give the same update as one big batch.

Memory: the models are asked for no full-vocabulary logits (``logits_to_keep=1``, no ``labels``);
the final hidden states are captured by a hook on the base model and the KD is computed a chunk of
positions at a time, the chunk sized by a memory budget (``chunk_bytes``), with the student head's
logits, the divergence and their gradients fused in one pass
(:func:`~distill_toolkit.losses.fused.fused_lm_kd`; ``fused: false`` for the checkpointed reference
route, :func:`~distill_toolkit.losses.chunked.chunked_lm_kd`).

Teacher sources: a teacher model (replicated, offloaded, FSDP- or ZeRO-3-sharded: a partitioned
output head is gathered once per micro-batch), or a teacher cache (dense or top-k log-probabilities
of the shifted positions; no teacher forward at all), or a served teacher (top-k log-probabilities over
HTTP, :mod:`distill_toolkit.teachers.served`; it also scores on-policy samples, re-tokenized when it reads
text prompts).

On-policy distillation (GKD, Agarwal et al. 2024): with ``strategy_options.lmbda = p``, a fraction
``p`` of the micro-batches is replaced, before the teacher runs, by the student's own completions
of the batch's prompts (the ``-100``-labelled prefix of each example); the teacher scores them and
the loss covers the generated tokens only. Which micro-batches go on-policy is drawn from a
generator seeded by ``(training.seed, epoch, micro-batch)``, so every rank decides alike (and a
resumed run decides as the uninterrupted one); each rank samples from its own prompts.

``strategy_options`` (all optional):

- ``lmbda`` (0): fraction of micro-batches trained on the student's samples.
- ``max_new_tokens`` (32): tokens sampled per prompt on those batches.
- ``generation_temperature`` (1.0): sampling temperature; 0 decodes greedily.
- ``fused`` (true): compute the student head, the divergence and their gradients in one pass, a chunk
  at a time (:func:`~distill_toolkit.losses.fused.fused_lm_kd`); ``false`` keeps the reference route
  (:func:`~distill_toolkit.losses.chunked.chunked_lm_kd`, checkpointed: the heads run again in backward).
  Losses without a closed form there, and student heads that are not a plain ``nn.Linear``, take the
  reference route either way.
- ``chunk_bytes`` (536870912, 512 MiB): memory budget for one chunk's ``[chunk, vocab]`` temporaries;
  the positions per chunk follow from it and the vocabulary.
- ``chunk_size`` (null): positions per chunk; overrides ``chunk_bytes`` when set.

Different tokenizers: ``kd_loss: uld`` (Universal Logit Distillation) or ``aligned_kd`` (offset-aligned
token-level KD; ``kd_loss_kwargs``: ``shared_weight``, ``uld_weight``, ``span_weight``) take the
cross-tokenizer route (:mod:`~distill_toolkit.strategies.cross_tokenizer_lm`) on batches of
:class:`~distill_toolkit.data.CrossTokenizerLMCollator`; any other ``kd_loss`` refuses two vocabularies.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch
from torch import nn

from distill_toolkit.batch import model_inputs
from distill_toolkit.config import ConfigError
from distill_toolkit.config.base import is_finite_number, is_int
from distill_toolkit.data.lm import lm_batch, prompts_of
from distill_toolkit.features import HEAD_INPUT, ModelView, max_positions, unwrap
from distill_toolkit.losses import SparseTeacher
from distill_toolkit.losses.chunked import DEFAULT_CHUNK_BYTES, materialised_head
from distill_toolkit.strategies.base import Strategy, StrategyError, register_strategy
from distill_toolkit.strategies.cross_tokenizer_lm import (check_cross_tokenizer_batch, check_cross_tokenizer_config,
                                                           cross_tokenizer_kd, is_cross_tokenizer)
from distill_toolkit.strategies.generation import generate_completions
from distill_toolkit.strategies.objective import KDObjective, select_rows
from distill_toolkit.tasks import next_token_mask

OPTIONS = {"lmbda": 0.0, "max_new_tokens": 32, "generation_temperature": 1.0, "fused": True,
           "chunk_bytes": DEFAULT_CHUNK_BYTES, "chunk_size": None}
CROSS_TOKENIZER = ("Fix: set distillation.kd_loss: uld or aligned_kd (cross-tokenizer KD, see docs/causal_lm.md) "
                   "and batch the data with distill_toolkit.data.CrossTokenizerLMCollator (the CLI does so for "
                   "those losses), or use a student that shares the teacher's tokenizer (e.g. built from the "
                   "teacher's layers, student_from_teacher). Token-level KD with "
                   "forward_kl/reverse_kl/jsd/... compares distributions over the same classes")


def next_token_targets(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, targets)`` of shape ``(B, L-1)``: which positions predict a real next token, and which."""
    ids = inputs["input_ids"]
    mask = next_token_mask(inputs)
    if mask is None:  # neither padding nor labels: every position counts
        mask = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    return mask, inputs.get("labels", ids)[:, 1:].masked_fill(~mask, 0)


def _draw(key: tuple) -> float:
    """A uniform number in [0, 1) that depends on ``key`` alone (same on every rank, same after resume)."""
    seed = int(hashlib.sha256(repr(tuple(key)).encode()).hexdigest()[:15], 16)
    return float(torch.rand((), generator=torch.Generator().manual_seed(seed)))


def _pad_id(model: nn.Module) -> int:
    """A token id to pad generated batches with (masked out; it only has to be a valid index)."""
    model = unwrap(model)
    for config in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(config, name, None)
            value = value[0] if isinstance(value, (list, tuple)) and value else value
            if isinstance(value, int) and value >= 0:
                return value
    return 0


@register_strategy("causal_lm")
class CausalLMDistillation(Strategy):
    """Next-token KD between decoder LMs with a shared vocabulary; optionally on the student's own samples."""

    def __init__(self, config):
        super().__init__(config)
        self.objective = KDObjective(config)
        options = self.check_options(self.options)
        self.lmbda = options["lmbda"]
        self.max_new_tokens = options["max_new_tokens"]
        self.generation_temperature = options["generation_temperature"]
        self.chunk_size, self.chunk_bytes, self.fused = options["chunk_size"], options["chunk_bytes"], options["fused"]
        self.on_policy = False  # whether the current micro-batch holds the student's samples
        self.cross_tokenizer = is_cross_tokenizer(config)
        self.vocab_differs = False  # set by setup()
        if self.cross_tokenizer:
            check_cross_tokenizer_config(config, options)

    @property
    def projections(self) -> nn.ModuleList:
        """One per match, built by :meth:`setup` (``Identity`` where none is needed)."""
        return self.objective.projections

    @classmethod
    def check_options(cls, options: dict, where: str = "distillation.strategy_options") -> dict:
        """``options`` completed with the defaults; a :class:`ConfigError` naming the bad field otherwise."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}", "unknown option of strategy 'causal_lm'",
                              f"use one of {', '.join(OPTIONS)}")
        out = {**OPTIONS, **options}
        if not (is_finite_number(out["lmbda"]) and 0 <= out["lmbda"] <= 1):
            raise ConfigError(f"{where}.lmbda", f"must be a fraction in [0, 1], got {out['lmbda']!r}",
                              "set e.g. `lmbda: 0.5` (half the batches on the student's samples), or 0 for none")
        if not (is_int(out["max_new_tokens"]) and out["max_new_tokens"] > 0):
            raise ConfigError(f"{where}.max_new_tokens", f"must be a positive integer, got {out['max_new_tokens']!r}",
                              "set e.g. `max_new_tokens: 32`")
        if not (is_finite_number(out["generation_temperature"]) and out["generation_temperature"] >= 0):
            raise ConfigError(f"{where}.generation_temperature",
                              f"must be a number >= 0, got {out['generation_temperature']!r}",
                              "set e.g. `generation_temperature: 1.0` (0 decodes greedily)")
        if not (out["chunk_size"] is None or (is_int(out["chunk_size"]) and out["chunk_size"] > 0)):
            raise ConfigError(f"{where}.chunk_size", f"must be a positive integer or null, got {out['chunk_size']!r}",
                              "set e.g. `chunk_size: 256`, or remove it to size chunks by chunk_bytes")
        if not (is_int(out["chunk_bytes"]) and out["chunk_bytes"] > 0):
            raise ConfigError(f"{where}.chunk_bytes", f"must be a positive number of bytes, got {out['chunk_bytes']!r}",
                              f"set e.g. `chunk_bytes: {DEFAULT_CHUNK_BYTES}` (512 MiB)")
        if not isinstance(out["fused"], bool):
            raise ConfigError(f"{where}.fused", f"must be true or false, got {out['fused']!r}",
                              "set `fused: false` for the reference (checkpointed) KD route")
        return out

    def feature_keys(self) -> dict[str, list[str]]:
        return {role: [HEAD_INPUT] + keys for role, keys in self.objective.feature_keys().items()}

    def forward_overrides(self, role: str) -> dict:
        return {"labels": None, "logits_to_keep": 1, "use_cache": False}

    # ---- before any forward: length checks, on-policy generation -------------------------
    def prepare_batch(self, batch: dict, student: nn.Module, teachers: dict, key: Optional[tuple] = None) -> dict:
        """Check ``batch`` against the models' position limits, and on on-policy draws replace its
        completions by the student's samples (prompt and padding masked). ``key`` identifies the
        micro-batch identically on every rank; ``None`` (the probe batch) never generates."""
        inputs = model_inputs(batch, "student")
        limit, owner = self._position_limit(student, teachers)
        self._check_length(inputs["input_ids"].shape[1], limit, owner, "a batch")
        if self.cross_tokenizer:
            self._check_length(model_inputs(batch, "teacher")["input_ids"].shape[1], limit, owner, "a teacher batch")
            check_cross_tokenizer_batch(self.config, batch, self.vocab_differs)
        elif isinstance(batch.get("teacher"), dict):
            raise StrategyError(f"the batch holds separate teacher inputs (another tokenizer) but kd_loss "
                                f"{self.config.kd_loss!r} compares one vocabulary. {CROSS_TOKENIZER}")
        self.on_policy = key is not None and self.lmbda > 0 and _draw(key) < self.lmbda
        if not self.on_policy:
            return batch
        if batch.get("teacher_cache"):
            raise StrategyError("distillation.strategy_options.lmbda > 0 generates new text, which a teacher cache "
                                "holds no outputs for. Fix: train with the teacher model online, or set lmbda: 0")
        prompts = prompts_of(inputs)
        self._check_length(max(map(len, prompts)) + self.max_new_tokens, limit, owner,
                           "the longest prompt + strategy_options.max_new_tokens")
        pad = _pad_id(student)
        completions = generate_completions(student, prompts, max_new_tokens=self.max_new_tokens,
                                           temperature=self.generation_temperature, pad_token_id=pad)
        for model in teachers.values():  # a teacher served with text prompts reads the samples re-tokenized
            canonical = getattr(model, "canonical_completions", None)
            completions = canonical(prompts, completions) if callable(canonical) else completions
        device = inputs["input_ids"].device
        generated = {k: v.to(device) for k, v in lm_batch(list(zip(prompts, completions)), pad).items()}
        return {**{k: v for k, v in batch.items() if k in ("task", "id")}, **generated}

    @staticmethod
    def _position_limit(student: nn.Module, teachers: dict) -> tuple[Optional[int], str]:
        limits = [(max_positions(m), role) for role, m in [("student", student), *teachers.items()] if m is not None]
        limits = [(n, role) for n, role in limits if n is not None]
        return min(limits) if limits else (None, "")

    @staticmethod
    def _check_length(length: int, limit: Optional[int], owner: str, what: str) -> None:
        if limit is not None and length > limit:
            raise StrategyError(
                f"{what} has {length} positions but the {owner} accepts at most {limit} (max_position_embeddings). "
                "Fix: lower the tokenizer/collator max_length (data.max_length; CausalLMCollator(max_length=...)) "
                "or strategy_options.max_new_tokens so that prompt + completion fit")

    # ---- setup: vocabularies, teacher source, projections ---------------------------------
    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        teacher = teachers["teacher"]
        vocab_S = unwrap(student.model).get_output_embeddings().out_features
        given = HEAD_INPUT not in teacher.features  # distributions given (cache, served teacher): no head here
        if not given:
            vocab_T = unwrap(teacher.model).get_output_embeddings().out_features
        elif isinstance(teacher.logits[0], SparseTeacher):  # top-k cache: the largest class index it names
            top = int(teacher.logits[0].indices.max()) + 1
            vocab_T = vocab_S if top <= vocab_S else f"at least {top}"
        else:
            vocab_T = teacher.logits[0].shape[-1]
        self.vocab_differs = vocab_S != vocab_T
        if self.cross_tokenizer:
            if teacher.model is None:
                raise StrategyError(f"kd_loss {self.config.kd_loss!r} runs the teacher on its own tokens; a teacher "
                                    "cache holds no outputs for them. Fix: pass the teacher model (no teacher_cache)")
            return
        if vocab_S != vocab_T:
            raise StrategyError(
                f"student vocabulary ({vocab_S}) differs from the teacher's ({vocab_T}): token-level KD needs the "
                f"same vocabulary. {CROSS_TOKENIZER}")
        if given:
            if self.lmbda > 0 and teacher.model is None:  # a served teacher (teacher.model set) scores samples
                raise StrategyError("distillation.strategy_options.lmbda > 0 needs the teacher model to score the "
                                    "student's samples; a teacher cache only holds outputs for the data set. "
                                    "Fix: pass the teacher model, or set lmbda: 0")
            self.objective.check_kd_source(teacher.logits[0])
        self.objective.build_projections(student, teachers)

    def loss_items(self, batch: dict) -> int:
        """The number of next tokens that count in ``batch``: the loss is a sum over them."""
        mask, _ = next_token_targets(model_inputs(batch, "student"))
        return int(mask.sum())

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        teacher = teachers["teacher"]
        mask, targets = next_token_targets(model_inputs(batch, "student"))
        n = max(int(mask.sum()), 1)
        if self.cross_tokenizer:
            kd, hard = cross_tokenizer_kd(self.config, batch, student, teacher, self.config.hard_label_weight > 0)
            return self.objective.total(progress, kd=kd, hard=hard, items=n)
        hidden_S = student.features[HEAD_INPUT][:, :-1][mask]
        head_S = unwrap(student.model).get_output_embeddings()
        # the student's own samples are no ground truth: no hard-label term, no probability shift on them
        token_kd = dict(ground_truth=not self.on_policy, chunk_size=self.chunk_size, chunk_bytes=self.chunk_bytes,
                        fused=self.fused, progress=progress)
        if HEAD_INPUT in teacher.features:  # a teacher model: its head runs on its final hidden states
            hidden_T = teacher.features[HEAD_INPUT][:, :-1][mask]
            with materialised_head(unwrap(teacher.model).get_output_embeddings()) as head_T:
                kd, hard = self.objective.token_kd(hidden_S, head_S, hidden_T, head_T, targets[mask], **token_kd)
        else:  # a teacher cache: (top-k) distributions of the shifted positions, read from the batch
            rows_T = select_rows(teacher.logits[0], mask)
            kd, hard = self.objective.token_kd(hidden_S, head_S, rows_T, None, targets[mask], **token_kd)
        # matches are means over the micro-batch; items=n weights them by its tokens so the window mean holds
        loss, terms = self.objective.total(progress, kd=kd, hard=hard,
                                           matches=self.objective.match_terms(student, teachers), items=n)
        if self.lmbda > 0:
            terms["on_policy"] = torch.tensor(float(self.on_policy), device=kd.device)
        return loss, terms
