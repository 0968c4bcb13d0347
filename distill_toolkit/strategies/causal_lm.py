"""``causal_lm``: token-level KD for decoder language models.

Per next-token position that counts (not padding, not a ``-100`` label, so prompts can be
masked by setting their labels to ``-100``)::

    kd_loss_weight(t) * D(p_T || p_S; T)  +  hard_label_weight(t) * CE(student, next token)
    + intermediate matches (hidden states, with projections), as in ``single``

``D`` is any logits loss of the registry (``forward_kl``, ``reverse_kl``, ``jsd``, ``skew_kl``,
``total_variation``; ``kd_loss_kwargs`` carries ``beta``/``alpha``/``top_k``). The loss is a *sum*
over tokens; the loop divides the gradients by the number of tokens of the whole accumulation
window on all ranks (:meth:`loss_items`), so micro-batches with different token counts give the
same update as one big batch.

Memory: the models are asked for no full-vocabulary logits (``logits_to_keep=1``, no ``labels``);
the final hidden states are captured by a hook on the output head and the KD is computed
``chunk_size`` positions at a time (:func:`~distill_toolkit.losses.chunked.chunked_lm_kd`).
"""

from __future__ import annotations

import torch

from distill_toolkit.features import ModelView
from distill_toolkit.losses.chunked import chunked_lm_kd
from distill_toolkit.schedulers import scheduled_weight
from distill_toolkit.strategies.base import StrategyError, register_strategy
from distill_toolkit.strategies.single import SingleTeacher, match_feature_keys

HEAD_INPUT = "head_input"


def _student_inputs(batch: dict) -> dict:
    from distill_toolkit.engine.teachers import model_inputs  # engine imports strategies: import late

    return model_inputs(batch, "student")


def next_token_targets(inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, targets)`` of shape ``(B, L-1)``: which positions predict a real next token, and which."""
    ids = inputs["input_ids"]
    labels = inputs.get("labels", ids)
    targets = labels[:, 1:]
    mask = targets != -100
    if "attention_mask" in inputs:
        mask = mask & inputs["attention_mask"][:, 1:].bool()
    return mask, targets.masked_fill(~mask, 0)


@register_strategy("causal_lm")
class CausalLMDistillation(SingleTeacher):
    """Next-token KD between decoder LMs with a shared vocabulary."""

    chunk_size = 1024

    def feature_keys(self) -> dict[str, list[str]]:
        keys = super().feature_keys()
        return {role: [HEAD_INPUT] + feature for role, feature in keys.items()}

    def forward_overrides(self, role: str) -> dict:
        return {"labels": None, "logits_to_keep": 1, "use_cache": False}

    def setup(self, student: ModelView, teachers: dict[str, ModelView]) -> None:
        teacher = teachers["teacher"]
        vocab_S = student.model.get_output_embeddings().out_features
        vocab_T = teacher.model.get_output_embeddings().out_features
        if vocab_S != vocab_T:
            raise StrategyError(
                f"student vocabulary ({vocab_S}) differs from the teacher's ({vocab_T}): token-level KD needs the "
                "same vocabulary. Fix: use a student that shares the teacher's tokenizer, or separate "
                "student/teacher batches with the cross-tokenizer collator")
        self.projections = torch.nn.ModuleList(
            self._build_projection(i, m, student, teacher) for i, m in enumerate(self.config.matches))

    def loss_items(self, batch: dict) -> int:
        mask, _ = next_token_targets(_student_inputs(batch))
        return int(mask.sum())

    def forward(self, batch, student: ModelView, teachers: dict[str, ModelView], progress: float):
        teacher = teachers["teacher"]
        cfg = self.config
        inputs = _student_inputs(batch)
        mask, targets = next_token_targets(inputs)
        n = max(int(mask.sum()), 1)
        hidden_S = student.features[HEAD_INPUT][:, :-1][mask]
        hidden_T = teacher.features[HEAD_INPUT][:, :-1][mask]
        kd_sum, ce_sum = chunked_lm_kd(
            hidden_S, student.model.get_output_embeddings(), hidden_T, teacher.model.get_output_embeddings(),
            loss=cfg.kd_loss, temperature=cfg.temperature, chunk_size=self.chunk_size,
            labels=targets[mask] if cfg.hard_label_weight > 0 else None, **cfg.kd_loss_kwargs)
        terms = {"kd": kd_sum.detach() / n}
        total = scheduled_weight(cfg.kd_loss_weight_schedule, cfg.kd_loss_weight, progress) * kd_sum
        if cfg.hard_label_weight > 0:
            terms["hard_label"] = ce_sum.detach() / n
            total = total + scheduled_weight(cfg.hard_label_weight_schedule, cfg.hard_label_weight, progress) * ce_sum
        for match, loss_fn, proj in zip(cfg.matches, self.match_losses, self.projections):
            feats_S = [proj(student.features[k]) for k in match_feature_keys(match, "student")]
            feats_T = [teacher.features[k] for k in match_feature_keys(match, "teacher")]
            value = loss_fn(feats_S[0], feats_T[0], mask=inputs.get("attention_mask"))
            terms[match.name()] = value.detach()
            # matches are means over the micro-batch; weight them by its tokens so the window mean holds
            total = total + scheduled_weight(match.weight_schedule, match.weight, progress) * value * n
        return total, terms
