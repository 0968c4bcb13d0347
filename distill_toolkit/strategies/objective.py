"""The one KD objective, written once and composed by ``single``, ``multi_teacher``, ``multi_task`` and ``causal_lm``.

At training progress ``t`` in [0, 1]::

    kd_loss_weight(t) * KD(student logits, teacher logits; T)                      -> term "kd"
    + hard_label_weight(t) * the student's own loss on the labels                  -> term "hard_label"
    + sum over (match m, teacher r) pairs:
          m.weight(t) * m.loss(projection_{m,r}(student feature), feature of r)   -> term "<m.name()>"

Every setting of :class:`~distill_toolkit.config.DistillationConfig` that shapes this loss is read
here and nowhere else: ``temperature`` and ``temperature_scheduler`` (``flsw``/``cwsm`` give one
temperature per row), ``kd_loss`` and ``kd_loss_kwargs``, ``probability_shift`` (the teacher's top
logit swapped with the true label's before KD and before the schedule), the two weights and their
schedules, and each match with its loss, projection, weight and schedule.

A strategy holds one :class:`KDObjective` (an ``nn.Module``: its projections train with the
student) and uses it in three steps:

1. :meth:`KDObjective.bind` (several teachers): which (match, teacher) pairs exist. A match reads
   the teacher it names (``Match.teacher``), else every teacher; without ``bind`` there is one
   teacher, role ``"teacher"``, and every match reads it. :meth:`~KDObjective.feature_keys` then
   says which features to hook; with several teachers the match terms are logged as
   ``<role>/<match name>``.
2. :meth:`KDObjective.setup` on the probe views: logits and label checks, then
   :meth:`~KDObjective.build_projections` (one projection per pair, sizes read from the models).
3. Every micro-batch, ``objective(student, teachers, progress, kd_teacher=None)`` for logits given as
   rows (classification, token tasks, QA). A strategy that computes KD its own way (``causal_lm``:
   a sum over tokens, chunk by chunk, :meth:`~KDObjective.token_kd`) combines its terms with
   :meth:`~KDObjective.total`, passing ``items`` (the number of tokens summed over).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from distill_toolkit import losses
from distill_toolkit.config import PAIR_LOSSES, DistillationConfig, Match
from distill_toolkit.config.distillation import HEAD_FEATURES
from distill_toolkit.features import ModelView
from distill_toolkit.losses.chunked import DEFAULT_CHUNK_BYTES, chunked_lm_kd, chunked_row_map
from distill_toolkit.losses.fused import fused_lm_kd, fused_supported
from distill_toolkit.projections import build_projection
from distill_toolkit.schedulers import (
    CentredTemperature,
    build_temperature_scheduler,
    constant_temperature,
    scheduled_weight,
)
from distill_toolkit.strategies.base import StrategyError

Pair = tuple  # (match index, Match, teacher role)
MatchTerm = tuple  # (logged name, Match, value)


def match_feature_keys(match: Match, side: str) -> list[str]:
    """Feature keys a match reads on ``side`` (``"teacher"`` or ``"student"``)."""
    if match.feature == "module":
        return [f"module:{getattr(match, side + '_module')}"]
    layer = getattr(match, side + "_layer")
    layers = layer if isinstance(layer, list) else [layer]
    return [f"{match.feature}:{i}" for i in layers]


def select_rows(logits: torch.Tensor, mask) -> torch.Tensor:
    """Keep the positions where ``mask`` is true: (B, L, C) -> (N, C); 2-D logits pass through.

    A :class:`SparseTeacher` (top-k teacher cache) has the rows of each of its fields selected.
    """
    if isinstance(logits, losses.SparseTeacher):
        if mask is None or logits.logprobs.dim() == 2:
            return logits
        keep = mask.bool()
        return losses.SparseTeacher(*(None if t is None else t[keep] for t in logits))
    if mask is None or logits.dim() == 2:
        return logits
    return logits[mask.bool()]


class KDObjective(nn.Module):
    """KD + hard labels + intermediate matches, weighted by their schedules; see the module docstring."""

    def __init__(self, config: DistillationConfig):
        super().__init__()
        self.config = config
        self.kd_loss = losses.get(config.kd_loss)
        self.temperature_scheduler = build_temperature_scheduler(config.temperature_scheduler)
        self.match_losses = [losses.get(m.loss) for m in config.matches]
        self.roles: tuple = ("teacher",)
        self.pairs: list[Pair] = [(i, m, "teacher") for i, m in enumerate(config.matches)]
        self.projections = nn.ModuleList()  # one per pair, built by setup(); Identity where none is needed
        self.ready = False

    # ---- which teachers, which features ---------------------------------------------------
    def bind(self, roles) -> None:
        """Several teachers: each match reads the teacher it names, else every one of ``roles``."""
        for i, match in enumerate(self.config.matches):
            if match.teacher is not None and match.teacher not in roles:
                raise StrategyError(f"distillation.matches[{i}].teacher: {match.teacher!r} is not one of the teachers "
                                    f"given ({', '.join(roles)}). Fix: name one of them, or remove `teacher` so the "
                                    "match reads every teacher")
        self.roles = tuple(roles)
        self.pairs = [(i, m, role) for i, m in enumerate(self.config.matches) for role in self.roles
                      if m.teacher in (None, role)]

    def feature_keys(self) -> dict[str, list[str]]:
        """``{"student": [...], role: [...]}``: the features the matches read on each model."""
        keys: dict[str, list[str]] = {"student": [], **{role: [] for role in self.roles}}
        for _, match, role in self.pairs:
            keys["student"] += match_feature_keys(match, "student")
            keys[role] += match_feature_keys(match, "teacher")
        return {side: list(dict.fromkeys(names)) for side, names in keys.items()}

    # ---- setup: checks on the probe views, projections -----------------------------------------
    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        """Check logits (when KD is on) and labels against the probe views, then build the projections."""
        if self.config.kd_loss_weight > 0:
            for role in self.roles:
                try:
                    self.check_logits(student, teachers[role])
                except StrategyError as err:
                    if len(self.roles) == 1:
                        raise
                    raise StrategyError(f"teacher {role!r} vs the student: {err}") from None
        self.check_labels(student)
        self.build_projections(student, teachers)

    def check_labels(self, student: ModelView) -> None:
        """Hard-label loss and probability shift both need ``labels`` in the batch."""
        if self.config.hard_label_weight > 0 and student.loss is None:
            raise StrategyError(
                "distillation.hard_label_weight is > 0 but the student computed no loss: the batch has no "
                "`labels`. Fix: add labels to the data, or set hard_label_weight: 0 (pure KD on unlabelled text)")
        if self.config.probability_shift and student.labels is None:
            raise StrategyError("distillation.probability_shift needs `labels` in the batch. "
                                "Fix: add labels, or set probability_shift: false")

    def check_logits(self, student: ModelView, teacher: ModelView) -> None:
        """The student's and the teacher's logits heads must compare (same heads, shapes, classes)."""
        if not student.logits:
            raise StrategyError("distillation.kd_loss_weight is > 0 but the student's view has no logits. Fix: return "
                                "`logits` from the adaptor, or set kd_loss_weight: 0")
        if len(student.logits) != len(teacher.logits):
            raise StrategyError(f"the student has {len(student.logits)} logits heads and the teacher "
                                f"{len(teacher.logits)}; they must be the same task")
        for l_S, l_T in zip(student.logits, teacher.logits):
            if isinstance(l_T, losses.SparseTeacher):  # top-k teacher cache: classes are given by index
                self.check_kd_source(l_T)
                if l_T.logprobs.shape[:-1] != l_S.shape[:-1]:
                    raise StrategyError(f"logits positions differ: student {tuple(l_S.shape[:-1])} vs cached top-k "
                                        f"teacher {tuple(l_T.logprobs.shape[:-1])}")
                continue
            if l_S.shape != l_T.shape:
                fix = ("give the student the teacher's number of labels (`num_labels`)"
                       if l_S.shape[-1] != l_T.shape[-1] else
                       "feed both models the same tokenized batch (or use separate student/teacher batches "
                       "with aligned positions)")
                raise StrategyError(f"logits shapes differ: student {tuple(l_S.shape)} vs teacher {tuple(l_T.shape)}, "
                                    f"so distillation.kd_loss cannot compare them. Fix: {fix}")

    def check_kd_source(self, logits_T) -> None:
        """A top-k teacher (cache) has no full logits: probability shift and ``flsw`` need them."""
        if not isinstance(logits_T, losses.SparseTeacher):
            return
        if self.config.probability_shift:
            raise StrategyError("distillation.probability_shift swaps the teacher's top logit with the label's, but "
                                "the teacher cache holds only its top-k log-probabilities. Fix: build the cache "
                                "without top_k, or set probability_shift: false")
        schedule = self.temperature_scheduler
        if isinstance(schedule, CentredTemperature) and schedule.reads_teacher:
            raise StrategyError(f"distillation.temperature_scheduler {schedule.name!r} compares the student's and the "
                                "teacher's full logits, but the teacher cache holds only its top-k. Fix: use "
                                "`constant` or [cwsm, beta], or build the cache without top_k")

    def build_projections(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        """One projection per (match, teacher) pair, its sizes read from the probe views' features."""
        self.projections = nn.ModuleList(
            self._projection(i, m, student, teachers[role]) for i, m, role in self.pairs)
        self.ready = True

    def _projection(self, i: int, match: Match, student: ModelView, teacher: ModelView) -> nn.Module:
        where = f"distillation.matches[{i}]"
        feats_S = [student.features[k] for k in match_feature_keys(match, "student")]
        feats_T = [teacher.features[k] for k in match_feature_keys(match, "teacher")]
        dim_S, dim_T = feats_S[0].shape[-1], feats_T[0].shape[-1]
        if match.feature in HEAD_FEATURES:  # per-head q/k/v: compared through relations, any width; never projected
            self._probe_loss(i, match, feats_S[0], feats_T[0], student.inputs_mask)
            return nn.Identity()
        if match.feature == "attention":
            if match.projection is not None:
                raise StrategyError(f"{where}.projection: attention maps are not projected. Fix: remove it")
            if feats_S[0].shape != feats_T[0].shape and match.loss in ("attention_mse", "attention_ce"):
                raise StrategyError(
                    f"{where}: attention shapes differ (student {tuple(feats_S[0].shape)}, teacher "
                    f"{tuple(feats_T[0].shape)}). Fix: use loss attention_mse_sum or attention_ce_mean, which "
                    "compare head-averaged maps, or match models with the same number of heads")
            self._probe_loss(i, match, feats_S[0], feats_T[0], student.inputs_mask)
            return nn.Identity()
        if feats_S[0].shape[:-1] != feats_T[0].shape[:-1] and match.loss not in ("pkd",):
            raise StrategyError(f"{where}: feature shapes differ beyond the width: student {tuple(feats_S[0].shape)} "
                                f"vs teacher {tuple(feats_T[0].shape)}. Fix: feed both models the same positions")
        if match.projection is None:
            if dim_S != dim_T and match.loss not in ("mmd", "nst"):
                raise StrategyError(
                    f"{where}: student width {dim_S} differs from teacher width {dim_T} and there is no projection. "
                    f"Fix: set `projection: linear` on this match (maps {dim_S} -> {dim_T})")
            return nn.Identity()
        if isinstance(match.projection, list) and tuple(match.projection[1:3]) != (dim_S, dim_T):
            raise StrategyError(f"{where}.projection: declares {match.projection[1]} -> {match.projection[2]} but the "
                                f"features are {dim_S} -> {dim_T}. Fix: write `projection: {match.projection_kind}` "
                                "and let the sizes be read from the models")
        return build_projection(match.projection_kind, dim_S, dim_T).to(device=feats_S[0].device)

    def _probe_loss(self, i: int, match: Match, feat_S, feat_T, mask) -> None:
        """Run an unprojected match's loss once on the probe features, so a shape it cannot compare (e.g.
        head counts) fails at setup, naming the match, rather than at the first step."""
        try:
            with torch.no_grad():
                self.match_losses[i](feat_S, feat_T, mask=mask, **match.loss_kwargs)
        except (ValueError, RuntimeError, TypeError) as err:
            raise StrategyError(f"distillation.matches[{i}] ({match.loss} on {match.feature}): {err}") from None

    # ---- the terms ------------------------------------------------------------------------------
    def kd_term(self, student: ModelView, teacher: ModelView) -> torch.Tensor:
        """KD summed over the logits heads, on the positions the student's mask keeps (a mean over rows)."""
        cfg = self.config
        kd = 0.0
        mask = student.logits_mask
        for l_S, l_T in zip(student.logits, teacher.logits):
            l_S, l_T = select_rows(l_S, mask), select_rows(l_T, mask)
            if cfg.probability_shift:
                labels = student.labels if student.labels.dim() == 1 else select_rows(student.labels, mask)
                l_T = losses.probability_shift(l_T, labels)
            temperature = self.temperature_scheduler(l_S, l_T, cfg.temperature)
            kd = kd + self.kd_loss(l_S, l_T, temperature, **cfg.kd_loss_kwargs)
        return kd

    def hard_label_term(self, student: ModelView) -> torch.Tensor:
        """The student's own loss on the labels (mean)."""
        if student.loss is None:
            raise StrategyError("a batch without `labels` reached a run with hard_label_weight > 0")
        return student.loss.mean()

    def token_kd(self, hidden_S: torch.Tensor, head_S, hidden_T, head_T, targets: torch.Tensor, *,
                 ground_truth: bool = True, chunk_size: Optional[int] = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                 fused: bool = True, progress: Optional[float] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """KD and hard-label *sums* over next-token rows, chunk by chunk. Returns ``(kd_sum, ce_sum or None)``.

        ``targets`` (N,) are the rows' next tokens. With ``ground_truth=False`` (the student's own
        samples) there is no hard-label term and no probability shift. The temperature schedule's
        statistics cover all N rows, whatever the chunk size (``chunk_size`` positions, else sized by
        ``chunk_bytes``). ``fused`` (default): head, divergence and gradients in one pass
        (:func:`~distill_toolkit.losses.fused.fused_lm_kd`) when the loss and the student head allow it,
        else the checkpointed reference route (:func:`~distill_toolkit.losses.chunked.chunked_lm_kd`).
        With ``progress`` the fused route stores one gradient for the weighted sum that :meth:`total`
        forms at that progress, so the two sums must be combined by :meth:`total` at the same ``progress``.
        """
        cfg = self.config
        hard = ground_truth and cfg.hard_label_weight > 0
        shift = targets if ground_truth and cfg.probability_shift else None
        chunks = dict(chunk_size=chunk_size, chunk_bytes=chunk_bytes)
        temperature = self._row_temperatures(hidden_S, head_S, hidden_T, head_T, shift, chunks)
        kwargs = dict(loss=cfg.kd_loss, temperature=temperature, labels=targets if hard else None, shift_labels=shift,
                      **chunks, **cfg.kd_loss_kwargs)
        if fused and fused_supported(cfg.kd_loss, head_S):
            weights = None if progress is None else (
                scheduled_weight(cfg.kd_loss_weight_schedule, cfg.kd_loss_weight, progress),
                scheduled_weight(cfg.hard_label_weight_schedule, cfg.hard_label_weight, progress) if hard else 0.0)
            kd, ce = fused_lm_kd(hidden_S, head_S, hidden_T, head_T, weights=weights, **kwargs)
        else:
            kd, ce = chunked_lm_kd(hidden_S, head_S, hidden_T, head_T, **kwargs)
        return kd, (ce if hard else None)

    def _row_temperatures(self, hidden_S, head_S, hidden_T, head_T, shift, chunks: dict):
        schedule, base = self.temperature_scheduler, self.config.temperature
        if schedule is constant_temperature:
            return base
        if not isinstance(schedule, CentredTemperature):
            raise StrategyError(f"distillation.temperature_scheduler: {schedule!r} cannot be computed a chunk of "
                                "tokens at a time. Fix: use `constant`, [flsw, beta, gamma] or [cwsm, beta]")
        weights = chunked_row_map(hidden_S, head_S, hidden_T, head_T, schedule.weights, shift_labels=shift, **chunks)
        return schedule.from_weights(weights, base)

    def match_terms(self, student: ModelView, teachers: dict[str, ModelView]) -> list[MatchTerm]:
        """``(name, match, value)`` per (match, teacher) pair; each value is a mean over the batch."""
        if len(self.projections) != len(self.pairs):
            raise StrategyError("the distillation objective was not set up; the Trainer calls setup() on a probe "
                                "batch before training")
        out = []
        for (i, match, role), proj in zip(self.pairs, self.projections):
            feats_S = [proj(student.features[k]) for k in match_feature_keys(match, "student")]
            feats_T = [teachers[role].features[k] for k in match_feature_keys(match, "teacher")]
            if match.loss in PAIR_LOSSES:
                value = self.match_losses[i](feats_S, feats_T, mask=student.inputs_mask, **match.loss_kwargs)
            else:
                value = self.match_losses[i](feats_S[0], feats_T[0], mask=student.inputs_mask, **match.loss_kwargs)
            out.append((match.name() if len(self.roles) == 1 else f"{role}/{match.name()}", match, value))
        return out

    # ---- the weighted total -----------------------------------------------------------------
    def total(self, progress: float, *, kd: Optional[torch.Tensor] = None, hard: Optional[torch.Tensor] = None,
              matches: list = (), items: Optional[int] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss at ``progress`` (each weight by its schedule) and its unweighted, detached terms.

        ``items=None``: every term is a mean. ``items=n``: ``kd`` and ``hard`` are sums over ``n``
        items (tokens); the matches, means, are multiplied by ``n`` so that the loss is a sum, and the
        logged ``kd``/``hard_label`` are divided by ``n`` (per-item means).
        """
        cfg = self.config
        parts, terms = [], {}
        if kd is not None:
            parts.append(scheduled_weight(cfg.kd_loss_weight_schedule, cfg.kd_loss_weight, progress) * kd)
            terms["kd"] = kd if items is None else kd.detach() / items
        if hard is not None:
            parts.append(scheduled_weight(cfg.hard_label_weight_schedule, cfg.hard_label_weight, progress) * hard)
            terms["hard_label"] = hard if items is None else hard.detach() / items
        for name, match, value in matches:
            weight = scheduled_weight(match.weight_schedule, match.weight, progress)
            parts.append(weight * value if items is None else weight * value * items)
            terms[name] = terms.get(name, 0) + value
        if not parts:
            raise StrategyError("the loss has no term: kd_loss_weight and hard_label_weight are 0 and no match "
                                "applies. Fix: set distillation.kd_loss_weight > 0, hard_label_weight > 0, or add "
                                "matches")
        loss = parts[0].new_zeros((), dtype=torch.float32)
        for part in parts:
            loss = loss + part
        return loss, {name: value.detach() for name, value in terms.items()}

    def forward(self, student: ModelView, teachers: dict[str, ModelView], progress: float,
                kd_teacher: Optional[ModelView] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on logits given as rows: ``(loss, terms)``.

        ``kd_teacher`` is the view KD reads: by default the one teacher; required with several
        (``multi_teacher`` passes the combination of their logits).
        """
        if kd_teacher is None and len(self.roles) != 1:
            raise StrategyError(f"KD over {len(self.roles)} teachers needs one combined view of their logits")
        cfg = self.config
        kd_teacher = teachers[self.roles[0]] if kd_teacher is None else kd_teacher
        kd = self.kd_term(student, kd_teacher) if cfg.kd_loss_weight > 0 else None
        hard = self.hard_label_term(student) if cfg.hard_label_weight > 0 else None
        return self.total(progress, kd=kd, hard=hard, matches=self.match_terms(student, teachers))
