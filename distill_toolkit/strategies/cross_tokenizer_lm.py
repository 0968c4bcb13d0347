"""The cross-tokenizer route of ``causal_lm``: ``kd_loss: uld`` or ``aligned_kd`` (different vocabularies).

Batches come from :class:`~distill_toolkit.data.CrossTokenizerLMCollator`: a ``student`` and a
``teacher`` sub-batch of the same texts and, for ``aligned_kd``, their span alignment. Per batch:

- ``uld``: the counted next-token positions (not padding, not ``-100``) of each side are paired in
  order, the longer side truncated (:func:`~distill_toolkit.losses.cross_tokenizer.pair_by_order`),
  and ULD compares each pair;
- ``aligned_kd``: each span both sides cover (and learn) wholly is one row: the next-token
  distributions at the positions predicting its first token, and the log-probability of its actual
  tokens on each side (:func:`~distill_toolkit.losses.cross_tokenizer.aligned_kd`).

The hard-label term is the student's next-token cross-entropy over its own counted tokens, and both
terms are *sums*, normalised by the loop over the student's counted tokens (``loss_items``). The
output heads run on the counted positions only, without chunking: memory holds ``N x vocab`` logits
per side for the ``N`` counted tokens of a micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn.functional as F

from distill_toolkit.batch import ALIGNMENT, TEACHER, model_inputs
from distill_toolkit.config import ConfigError
from distill_toolkit.features import HEAD_INPUT, unwrap
from distill_toolkit.losses import CROSS_TOKENIZER_LOSSES, uld
from distill_toolkit.losses.cross_tokenizer import aligned_kd, pair_by_order, span_pairs
from distill_toolkit.schedulers import build_temperature_scheduler, constant_temperature
from distill_toolkit.strategies.base import StrategyError
from distill_toolkit.tasks import next_token_mask

ALIGNED_KD_KWARGS = ("shared_weight", "uld_weight", "span_weight")
COLLATOR_FIX = ("batch the data with distill_toolkit.data.CrossTokenizerLMCollator(student_tokenizer, "
                "teacher_tokenizer) (the CLI does so for kd_loss: uld / aligned_kd)")


def is_cross_tokenizer(config) -> bool:
    """Whether ``config.kd_loss`` compares models with different vocabularies."""
    return config.kd_loss in CROSS_TOKENIZER_LOSSES


def check_cross_tokenizer_config(config, options: dict) -> None:
    """What the cross-tokenizer route does not combine with; a :class:`ConfigError` naming the field."""
    where = "distillation"
    if options["lmbda"] > 0:
        raise ConfigError(f"{where}.strategy_options.lmbda", f"kd_loss {config.kd_loss!r} is trained on fixed "
                          "text: the student's samples would have to be re-tokenised for the teacher", "set lmbda: 0")
    if config.matches:
        raise ConfigError(f"{where}.matches", "hidden-state matches compare positions, which differ across tokenizers "
                          f"under kd_loss {config.kd_loss!r}", "remove the matches")
    constant = build_temperature_scheduler(config.temperature_scheduler) is constant_temperature
    if config.probability_shift or not constant:
        raise ConfigError(f"{where}.temperature_scheduler", f"kd_loss {config.kd_loss!r} takes one constant "
                          "temperature and no probability shift", "use temperature_scheduler: constant and "
                          "probability_shift: false")
    allowed = ALIGNED_KD_KWARGS if config.kd_loss == "aligned_kd" else ()
    unknown = sorted(set(config.kd_loss_kwargs) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.kd_loss_kwargs.{unknown[0]}", f"not an option of kd_loss {config.kd_loss!r}",
                          f"use {', '.join(allowed)}" if allowed else "remove it (uld takes none)")


def check_cross_tokenizer_batch(config, batch: dict, vocab_differs: bool) -> None:
    """Before any forward: a batch the route can read (a teacher sub-batch where the vocabularies differ;
    the span alignment for ``aligned_kd``)."""
    if vocab_differs and not isinstance(batch.get(TEACHER), Mapping):
        raise StrategyError(f"the teacher's vocabulary differs from the student's, so kd_loss {config.kd_loss!r} needs "
                            f"the text tokenised for the teacher too (a 'teacher' sub-batch). Fix: {COLLATOR_FIX}")
    alignment = batch.get(ALIGNMENT)
    if config.kd_loss == "aligned_kd" and not (isinstance(alignment, Mapping) and "student_spans" in alignment):
        raise StrategyError(f"kd_loss 'aligned_kd' needs the span alignment of the two tokenisations "
                            f"(batch['alignment']). Fix: {COLLATOR_FIX}")


def _head_rows(view, mask: torch.Tensor) -> torch.Tensor:
    """The output head's logits at the ``True`` positions of ``mask`` ``(B, L-1)``: ``(N, vocab)``."""
    hidden = view.features[HEAD_INPUT][:, :-1][mask]
    return unwrap(view.model).get_output_embeddings()(hidden).float()


def _targets(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    ids = inputs["input_ids"]
    mask = next_token_mask(inputs)
    if mask is None:
        mask = torch.ones_like(ids[:, 1:], dtype=torch.bool)
    return mask, ids[:, 1:]


def cross_tokenizer_kd(config, batch: dict, student, teacher, hard: bool
                       ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(kd_sum, ce_sum or None)`` for one cross-tokenizer batch (module docstring)."""
    if teacher.model is None or HEAD_INPUT not in teacher.features:
        raise StrategyError(f"kd_loss {config.kd_loss!r} runs the teacher's output head on its positions, so it needs "
                            "the teacher model (a teacher cache holds no outputs for them). Fix: pass the teacher")
    inputs_S, inputs_T = model_inputs(batch, "student"), model_inputs(batch, TEACHER)
    mask_S, next_S = _targets(inputs_S)
    mask_T, next_T = _targets(inputs_T)
    logits_S = _head_rows(student, mask_S)
    logp_S = torch.log_softmax(logits_S, dim=-1)
    ce = -logp_S.gather(-1, next_S[mask_S].unsqueeze(-1)).sum() if hard else None
    with torch.no_grad():
        logits_T = _head_rows(teacher, mask_T)
    T = config.temperature
    if config.kd_loss == "uld":
        keep_S, keep_T = pair_by_order(mask_S, mask_T)
        return uld(logits_S[keep_S[mask_S]], logits_T[keep_T[mask_T]], T, reduction="sum"), ce
    alignment = batch[ALIGNMENT]
    pairs = span_pairs(alignment["student_spans"], alignment["teacher_spans"],
                       F.pad(mask_S, (1, 0)), F.pad(mask_T, (1, 0)))  # token t is learnt when position t-1 counts
    span_logp_S = _span_logp(logp_S, next_S, mask_S, pairs.index_S, len(pairs.row))
    with torch.no_grad():
        span_logp_T = _span_logp(torch.log_softmax(logits_T, -1), next_T, mask_T, pairs.index_T, len(pairs.row))
    # row of the head's output at (b, first - 1): its rank among the counted positions of mask
    rows_S = _rank(mask_S)[pairs.row, pairs.first_S - 1]
    rows_T = _rank(mask_T)[pairs.row, pairs.first_T - 1]
    kd = aligned_kd(logits_S[rows_S], logits_T[rows_T], T, shared_S=alignment["student_shared_ids"],
                    shared_T=alignment["teacher_shared_ids"], span_logp_S=span_logp_S, span_logp_T=span_logp_T,
                    reduction="sum", **config.kd_loss_kwargs)
    return kd, ce


def _rank(mask: torch.Tensor) -> torch.Tensor:
    """``(B, L)``: the index of each ``True`` position of ``mask`` in ``x[mask]`` (row-major)."""
    return (mask.flatten().long().cumsum(0) - 1).view(mask.shape)


def _span_logp(logp: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, n: int):
    """Per span pair, the sum of the log-probabilities of its actual tokens (``index``: each token's pair)."""
    token_logp = logp.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)  # (N,) for counted positions
    pair = index[:, 1:][mask]  # the pair of the token each counted position predicts
    out = token_logp.new_zeros(n)
    keep = pair >= 0
    return out.index_add(0, pair[keep], token_logp[keep])
