"""TextBrewer 0.2.1's loss as a distill_toolkit strategy: the distillers' ``compute_loss``, rule for rule.

One optimiser step of a TextBrewer distiller, on the toolkit's views of the adaptors' dicts::

    kd_loss_weight * sum over logits heads of kd_loss(S rows, T rows, temperature)   -> unweighted_kd_loss
    + sum over intermediate_matches m of m.weight * m.loss(proj(S feature), T feature, mask=S inputs_mask)
                                                     -> unweighted_<feature>_<loss>_<layer_S>_<layer_T>
    + hard_label_weight * sum of the student's ``losses`` (each averaged)          -> unweighted_hard_label_loss

as TextBrewer writes it, which the toolkit's own objective
(:class:`~distill_toolkit.strategies.KDObjective`) deliberately does not:

- the weights are read from the TextBrewer ``DistillationConfig`` at every step, and its weight
  schedulers *replace* them after every optimiser step (the first step uses the configured weight);
- a term is present when its inputs are: KD when both adaptors return ``logits`` (``GeneralDistiller``,
  ``MultiTaskDistiller``; always for ``BasicDistiller``/``MultiTeacherDistiller``), the hard-label term
  when the student's adaptor returns ``losses``, whatever the weights;
- each side's logits rows are chosen by its own adaptor's ``logits_mask`` (a cached teacher: the student's);
- ``MultiTeacherDistiller`` distils the mean of the teachers' logits and no intermediate matches;
- the projections are built by the distiller when it is constructed (as TextBrewer, so they hold the
  same initial values under the same seed) and handed in here.

The losses, schedules and projections are distill_toolkit's own, found through the TextBrewer-named
registries of :mod:`distill_toolkit.compat.textbrewer.presets`.
"""

from __future__ import annotations

from typing import Optional

import torch
from accelerate.utils import send_to_device
from torch import nn

from distill_toolkit import losses
from distill_toolkit.batch import batch_task
from distill_toolkit.compat.textbrewer import presets
from distill_toolkit.compat.textbrewer.calls import DEFERRED
from distill_toolkit.config import DistillationConfig
from distill_toolkit.features import ModelView
from distill_toolkit.strategies import Strategy, StrategyError, Supervised, select_rows

KINDS = ("basic", "general", "multi_teacher", "multi_task")


def _rows(logits: list, mask) -> list:
    return [select_rows(lg, mask) for lg in logits]


def _shift(logits_T: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TextBrewer's probability shift on rows (N, C) or on unselected (B, L, C) logits."""
    flat = logits_T.reshape(-1, logits_T.size(-1))
    return losses.probability_shift(flat, labels.reshape(-1)).view(logits_T.shape)


class StreamBatches:
    """Mixin of the compatibility strategies: the loop's placeholder batches resolved from :attr:`stream`
    (a :class:`~.calls.Stream`) and put on the student's device, just before the models run."""

    stream = None
    records: Optional[list] = None

    def prepare_batch(self, batch, student, teachers, key=None):
        """The batch behind a placeholder, on the student's device (other batches unchanged)."""
        if self.stream is None or DEFERRED not in batch:
            return batch
        device = next(student.parameters()).device
        return send_to_device(self.stream.resolve(int(batch[DEFERRED])), device)


def record(strategy, loss: torch.Tensor, terms: dict) -> None:
    """Keep one micro-batch's loss and terms (detached) when ``strategy.records`` is a list (TensorBoard scalars)."""
    if strategy.records is not None:
        strategy.records.append((loss.detach(), {k: v.detach() for k, v in terms.items()}))


class TextBrewerLoss(StreamBatches, Strategy):
    """The loss of a TextBrewer distiller (``kind``: one of :data:`KINDS`); built by the compatibility distillers.

    Args:
        config: the toolkit ``DistillationConfig`` recorded for the run (its ``strategy`` is ``"textbrewer"``).
        textbrewer_config: the TextBrewer ``DistillationConfig``, read at every step.
        kind: which distiller's rules apply.
        projections: one entry per intermediate match: its projection module, or None.
        cached: teacher logits come from ``is_caching_logits`` (their rows chosen by the student's mask).
    """

    name = "textbrewer"

    def __init__(self, config: DistillationConfig, textbrewer_config=None, kind: str = "general",
                 projections: Optional[list] = None, cached: bool = False):
        super().__init__(config)
        if textbrewer_config is None or kind not in KINDS:
            raise StrategyError("strategy 'textbrewer' is built by the distillers of distill_toolkit.compat.textbrewer"
                                f" (kind one of {', '.join(KINDS)}). Fix: use them, or strategy 'single', "
                                "'multi_teacher' or 'multi_task' with distill_toolkit.Trainer")
        self.tb, self.kind, self.cached = textbrewer_config, kind, cached
        self.kd_loss = presets.KD_LOSS_MAP[textbrewer_config.kd_loss_type]
        projections = list(projections or [])
        self.projs = nn.ModuleDict({str(i): p for i, p in enumerate(projections) if p is not None})
        self.teacher_roles = ("teacher",)

    def bind(self, roles: list, tasks=None) -> None:
        """The teachers are the ones given (one, ``teacher0``..., or one per task)."""
        if not roles:
            raise StrategyError("a TextBrewer distiller needs its teacher model(s)")
        self.teacher_roles = tuple(roles)

    def teachers_for(self, batch) -> tuple:
        """Every teacher, or (``multi_task``) the teacher of the batch's task."""
        if self.kind == "multi_task":
            return (batch_task(batch),)
        return self.teacher_roles

    def forward(self, batch, student: ModelView, teachers: dict, progress: float):
        """TextBrewer's ``compute_loss`` for this distiller: ``(total loss, {unweighted_*: term})``."""
        views = [teachers[r] for r in self.teachers_for(batch)]
        loss, terms = 0, {}
        if self.kind == "multi_teacher":
            loss = self._kd(student, [v.logits for v in views], views[0].logits_mask, terms)
        elif self.kind == "basic" or (student.logits and views[0].logits):
            loss = self._kd(student, [views[0].logits], views[0].logits_mask, terms)
        if self.kind in ("general", "multi_task"):
            loss = self._matches(student, views[0], loss, terms)
        if student.loss is not None:
            terms["unweighted_hard_label_loss"] = student.loss
            loss = loss + student.loss * self.tb.hard_label_weight
        if not isinstance(loss, torch.Tensor):
            raise StrategyError("nothing to optimise: the adaptors returned no logits (in both), no losses and the "
                                "config has no intermediate_matches. Fix: return `logits` or `losses` from them")
        record(self, loss, terms)
        return loss, {k: v.detach() for k, v in terms.items()}

    def _kd(self, student: ModelView, teachers_logits: list, mask_T, terms: dict):
        """KD on the mean of the teachers' logits (one teacher: its logits), rows chosen by each side's mask."""
        cfg = self.tb
        if not student.logits or not all(teachers_logits):
            raise StrategyError(f"{self.kind}: the adaptors must return `logits` (student and teacher)")
        mask_T = student.logits_mask if self.cached else mask_T
        logits_S = _rows(student.logits, student.logits_mask)
        per_teacher = [_rows(logits, mask_T) for logits in teachers_logits]
        total = 0
        for l_T, l_S in zip(zip(*per_teacher), logits_S):
            l_T = l_T[0] if len(l_T) == 1 else sum(l_T) / len(l_T)
            if cfg.probability_shift:
                if student.labels is None:
                    raise StrategyError("DistillationConfig.probability_shift needs `labels` from the student's "
                                        "adaptor. Fix: return them, or set probability_shift=False")
                labels = student.labels
                if l_T.dim() == 2 and labels.dim() > 1 and student.logits_mask is not None:
                    labels = select_rows(labels, student.logits_mask)
                l_T = _shift(l_T, labels)
            scheduler = cfg.temperature_scheduler
            temperature = scheduler(l_S, l_T, cfg.temperature) if scheduler is not None else cfg.temperature
            total = total + self.kd_loss(l_S, l_T, temperature)
        terms["unweighted_kd_loss"] = total
        return total * cfg.kd_loss_weight

    def _matches(self, student: ModelView, teacher: ModelView, loss, terms: dict):
        for i, match in enumerate(self.tb.intermediate_matches):
            layers_S = match.layer_S if isinstance(match.layer_S, list) else [match.layer_S]
            layers_T = match.layer_T if isinstance(match.layer_T, list) else [match.layer_T]
            inter_S = [self._feature(student, "student", match.feature, s) for s in layers_S]
            inter_T = [self._feature(teacher, "teacher", match.feature, t) for t in layers_T]
            if str(i) in self.projs:
                inter_S = [self.projs[str(i)](s) for s in inter_S]
            pair = isinstance(match.layer_S, list) and isinstance(match.layer_T, list)
            value = presets.MATCH_LOSS_MAP[match.loss](inter_S if pair else inter_S[0], inter_T if pair else inter_T[0],
                                                       mask=student.inputs_mask)
            loss = loss + value * match.weight
            name_S, name_T = ("-".join(map(str, layers)) for layers in (layers_S, layers_T))
            terms[f"unweighted_{match.feature}_{match.loss}_{name_S}_{name_T}"] = value
        return loss

    @staticmethod
    def _feature(view: ModelView, side: str, feature: str, layer: int) -> torch.Tensor:
        key = f"{feature}:{layer}"
        if key not in view.features:
            have = sorted(k for k in view.features if k.startswith(feature + ":"))
            raise StrategyError(f"intermediate_matches: the {side}'s adaptor returned no {feature}[{layer}] "
                                f"({len(have)} {feature} entries). Fix: return `{feature}` with that layer (e.g. "
                                "outputs.hidden_states with output_hidden_states=True)")
        return view.features[key]


class RecordingSupervised(StreamBatches, Supervised):
    """``BasicTrainer``: the toolkit's ``supervised`` strategy, its micro-batch losses kept for TensorBoard."""

    def forward(self, batch, student: ModelView, teachers: dict, progress: float):
        """The ``supervised`` loss, kept for the TensorBoard scalar ``total_loss``."""
        loss, terms = super().forward(batch, student, teachers, progress)
        record(self, loss, {})
        return loss, terms
