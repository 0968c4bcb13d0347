"""``single``: one teacher, logits KD plus any number of intermediate matches.

This is TextBrewer's GeneralDistiller; with no matches it is its BasicDistiller. The loss::

    kd_weight(t) * sum over logits heads of KD(student, teacher; T)
    + hard_label_weight(t) * student's own loss
    + sum_i match_i.weight(t) * match_i.loss(projection_i(student feature), teacher feature)
"""

from __future__ import annotations

import torch
from torch import nn

from distill_toolkit import losses
from distill_toolkit.config import PAIR_LOSSES, DistillationConfig, Match
from distill_toolkit.features import ModelView
from distill_toolkit.projections import build_projection
from distill_toolkit.schedulers import build_temperature_scheduler, scheduled_weight
from distill_toolkit.strategies.base import Strategy, StrategyError, register_strategy


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


def probability_shift(logits_T: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Swap the teacher's top logit with the true label's, so the teacher's argmax is the label.

    Works on rows (N, C) with labels (N,); labels ``< 0`` (ignored positions) are left unchanged.
    """
    logits_T = logits_T.clone()
    rows = torch.arange(logits_T.size(0), device=logits_T.device)
    top = logits_T.argmax(dim=-1)
    target = torch.where(labels < 0, top, labels)
    top_value = logits_T[rows, top].clone()
    target_value = logits_T[rows, target].clone()
    logits_T[rows, top] = target_value
    logits_T[rows, target] = top_value
    return logits_T


@register_strategy("single")
class SingleTeacher(Strategy):
    """One teacher: KD on logits, hard-label loss and intermediate matches with projections."""

    def __init__(self, config: DistillationConfig):
        super().__init__(config)
        self.kd_loss = losses.get(config.kd_loss)
        self.temperature_scheduler = build_temperature_scheduler(config.temperature_scheduler)
        self.match_losses = [losses.get(m.loss) for m in config.matches]
        # Filled by setup(), once the feature widths are known; Identity where no projection.
        self.projections = nn.ModuleList()

    def feature_keys(self) -> dict[str, list[str]]:
        keys = {"student": [], "teacher": []}
        for match in self.config.matches:
            for side in keys:
                keys[side] += match_feature_keys(match, side)
        return keys

    # ---- setup: check shapes once, build projections -------------------------------------
    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        teacher = teachers["teacher"]
        cfg = self.config
        if cfg.kd_loss_weight > 0:
            self._check_logits(student, teacher)
        self._check_labels(student)
        self.projections = nn.ModuleList(
            self._build_projection(i, m, student, teacher) for i, m in enumerate(cfg.matches))

    def _check_labels(self, student: ModelView) -> None:
        """Hard-label loss and probability shift both need ``labels`` in the batch."""
        if self.config.hard_label_weight > 0 and student.loss is None:
            raise StrategyError(
                "distillation.hard_label_weight is > 0 but the student computed no loss: the batch has no "
                "`labels`. Fix: add labels to the data, or set hard_label_weight: 0 (pure KD on unlabelled text)")
        if self.config.probability_shift and student.labels is None:
            raise StrategyError("distillation.probability_shift needs `labels` in the batch. "
                                "Fix: add labels, or set probability_shift: false")

    def _check_logits(self, student: ModelView, teacher: ModelView) -> None:
        if len(student.logits) != len(teacher.logits):
            raise StrategyError(f"the student has {len(student.logits)} logits heads and the teacher "
                                f"{len(teacher.logits)}; they must be the same task")
        for l_S, l_T in zip(student.logits, teacher.logits):
            if isinstance(l_T, losses.SparseTeacher):  # top-k teacher cache: classes are given by index
                if l_T.logprobs.shape[:-1] != l_S.shape[:-1]:
                    raise StrategyError(f"logits positions differ: student {tuple(l_S.shape[:-1])} vs cached top-k "
                                        f"teacher {tuple(l_T.logprobs.shape[:-1])}")
                continue
            if l_S.shape != l_T.shape:
                fix = ("give the student the teacher's number of labels (`num_labels`)" if l_S.shape[-1] != l_T.shape[-1]
                       else "feed both models the same tokenized batch (or use separate student/teacher batches "
                            "with aligned positions)")
                raise StrategyError(f"logits shapes differ: student {tuple(l_S.shape)} vs teacher {tuple(l_T.shape)}, "
                                    f"so distillation.kd_loss cannot compare them. Fix: {fix}")

    def _build_projection(self, i: int, match: Match, student: ModelView, teacher: ModelView) -> nn.Module:
        where = f"distillation.matches[{i}]"
        feats_S = [student.features[k] for k in match_feature_keys(match, "student")]
        feats_T = [teacher.features[k] for k in match_feature_keys(match, "teacher")]
        dim_S, dim_T = feats_S[0].shape[-1], feats_T[0].shape[-1]
        if match.feature == "attention":
            if match.projection is not None:
                raise StrategyError(f"{where}.projection: attention maps are not projected. Fix: remove it")
            if feats_S[0].shape != feats_T[0].shape and match.loss in ("attention_mse", "attention_ce"):
                raise StrategyError(
                    f"{where}: attention shapes differ (student {tuple(feats_S[0].shape)}, teacher "
                    f"{tuple(feats_T[0].shape)}). Fix: use loss attention_mse_sum or attention_ce_mean, which "
                    "compare head-averaged maps, or match models with the same number of heads")
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
        ref = feats_S[0]
        return build_projection(match.projection_kind, dim_S, dim_T).to(device=ref.device)

    def param_groups(self, learning_rate: float) -> list[dict]:
        params = [p for p in self.projections.parameters() if p.requires_grad]
        return [{"params": params, "lr": learning_rate}] if params else []

    # ---- the loss ---------------------------------------------------------------------
    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        teacher = teachers["teacher"]
        cfg = self.config
        terms: dict[str, torch.Tensor] = {}
        total = student.logits[0].new_zeros((), dtype=torch.float32)

        kd_weight = scheduled_weight(cfg.kd_loss_weight_schedule, cfg.kd_loss_weight, progress)
        if cfg.kd_loss_weight > 0:
            kd = self.kd_term(student, teacher)
            terms["kd"] = kd
            total = total + kd_weight * kd

        hl_weight = scheduled_weight(cfg.hard_label_weight_schedule, cfg.hard_label_weight, progress)
        if cfg.hard_label_weight > 0:
            if student.loss is None:
                raise StrategyError("a batch without `labels` reached a run with hard_label_weight > 0")
            hard = student.loss.mean()
            terms["hard_label"] = hard
            total = total + hl_weight * hard

        for match, loss_fn, proj in zip(cfg.matches, self.match_losses, self.projections):
            feats_S = [proj(student.features[k]) for k in match_feature_keys(match, "student")]
            feats_T = [teacher.features[k] for k in match_feature_keys(match, "teacher")]
            if match.loss in PAIR_LOSSES:
                value = loss_fn(feats_S, feats_T, mask=student.inputs_mask)
            else:
                value = loss_fn(feats_S[0], feats_T[0], mask=student.inputs_mask)
            terms[match.name()] = value
            total = total + scheduled_weight(match.weight_schedule, match.weight, progress) * value

        return total, {k: v.detach() for k, v in terms.items()}

    def kd_term(self, student: ModelView, teacher: ModelView) -> torch.Tensor:
        """KD summed over the logits heads, on the positions the student's mask keeps."""
        cfg = self.config
        kd = 0.0
        mask = student.logits_mask
        for l_S, l_T in zip(student.logits, teacher.logits):
            l_S, l_T = select_rows(l_S, mask), select_rows(l_T, mask)
            if cfg.probability_shift:
                labels = student.labels if student.labels.dim() == 1 else select_rows(student.labels, mask)
                l_T = probability_shift(l_T, labels)
            temperature = self.temperature_scheduler(l_S, l_T, cfg.temperature)
            kd = kd + self.kd_loss(l_S, l_T, temperature, **cfg.kd_loss_kwargs)
        return kd
