"""Distillation losses, found by name through a registry.

    from distill_toolkit import losses
    fn = losses.get("forward_kl")          # or "kl", "jsd", "hidden_mse", ...
    loss = fn(logits_S, logits_T, 2.0, mask=losses.mask_from_labels(labels))

Logits losses live in :mod:`.logits`, intermediate-feature losses (TextBrewer's) in
:mod:`.features`; add your own with :func:`register_loss`.
"""

from . import cross_tokenizer, features, logits, relations
from .cross_tokenizer import CROSS_TOKENIZER_LOSSES, aligned_kd, uld
from .features import (
    attention_ce,
    attention_ce_mean,
    attention_mse,
    attention_mse_sum,
    cos,
    fsp,
    hidden_mse,
    minilm_value_relation,
    mmd,
    pkd,
)
from .logits import (
    SparseTeacher,
    forward_kl,
    jsd,
    kd_ce,
    kd_mse,
    mask_from_labels,
    multilabel_kd,
    probability_shift,
    reverse_kl,
    skew_kl,
    sparse_from_dense,
    total_variation,
)
from .relations import minilm_attention, minilmv2_relation
from .sampled import SAMPLED_LOSSES, sampled_from_dense
from .registry import LOSS_KINDS, UnknownLossError, available_losses, get, loss_kind, register_loss

_BUILTIN_LOGITS = {
    "kd_ce": kd_ce,
    "kd_mse": kd_mse,
    "forward_kl": forward_kl,
    "kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "skew_kl": skew_kl,
    "total_variation": total_variation,
    "tv": total_variation,
    "multilabel_kd": multilabel_kd,
    "uld": uld,
    "aligned_kd": aligned_kd,
}

_BUILTIN_FEATURES = {
    # TextBrewer's intermediate_matches names ...
    "attention_mse": attention_mse,
    "attention_mse_sum": attention_mse_sum,
    "attention_ce": attention_ce,
    "attention_ce_mean": attention_ce_mean,
    "hidden_mse": hidden_mse,
    "cos": cos,
    "pkd": pkd,
    "fsp": fsp,
    "gram": fsp,
    "mmd": mmd,
    "nst": mmd,
    # ... and the short forms of TextBrewer's function names.
    "att_mse": attention_mse,
    "att_mse_sum": attention_mse_sum,
    "att_ce": attention_ce,
    "att_ce_mean": attention_ce_mean,
    "minilm_value_relation": minilm_value_relation,
    # MiniLM / MiniLMv2 (relations.py)
    "minilm_attention": minilm_attention,
    "minilmv2_relation": minilmv2_relation,
}


def _register_builtins() -> None:
    for name, fn in _BUILTIN_LOGITS.items():
        register_loss(name, fn, kind="logits", overwrite=True)
    for name, fn in _BUILTIN_FEATURES.items():
        register_loss(name, fn, kind="feature", overwrite=True)


_register_builtins()

__all__ = [
    "CROSS_TOKENIZER_LOSSES",
    "LOSS_KINDS",
    "SAMPLED_LOSSES",
    "SparseTeacher",
    "UnknownLossError",
    "attention_ce",
    "attention_ce_mean",
    "attention_mse",
    "aligned_kd",
    "attention_mse_sum",
    "available_losses",
    "cos",
    "cross_tokenizer",
    "features",
    "forward_kl",
    "fsp",
    "get",
    "hidden_mse",
    "jsd",
    "kd_ce",
    "kd_mse",
    "logits",
    "loss_kind",
    "mask_from_labels",
    "minilm_attention",
    "minilm_value_relation",
    "minilmv2_relation",
    "mmd",
    "multilabel_kd",
    "pkd",
    "probability_shift",
    "register_loss",
    "relations",
    "reverse_kl",
    "sampled_from_dense",
    "skew_kl",
    "sparse_from_dense",
    "total_variation",
    "uld",
]
