"""TextBrewer's loss functions under their TextBrewer names (``textbrewer.losses``).

Each is a distill_toolkit loss (:mod:`distill_toolkit.losses`) with TextBrewer's signature; the
values equal TextBrewer 0.2.1's on the same tensors, with and without masks (tested against the
``textbrewer`` package in ``tests/test_losses.py`` and ``tests/test_compat_textbrewer.py``).

- logits: ``kd_ce_loss(logits_S, logits_T, temperature=1)``, ``kd_mse_loss(...)``; ``temperature``
  is a float or a per-row tensor (a temperature scheduler's output).
- features: ``fn(feature_S, feature_T, mask=None)``; ``fsp_loss``/``mmd_loss`` take two layers per side.
"""

from __future__ import annotations

from distill_toolkit import losses as _losses


def kd_mse_loss(logits_S, logits_T, temperature=1):
    """MSE between the temperature-scaled logits of student and teacher."""
    return _losses.kd_mse(logits_S, logits_T, temperature)


def kd_ce_loss(logits_S, logits_T, temperature=1):
    """Soft-target cross-entropy ``-sum p_T log p_S`` at ``temperature``, averaged over rows."""
    return _losses.kd_ce(logits_S, logits_T, temperature)


att_mse_loss = _losses.attention_mse
att_mse_sum_loss = _losses.attention_mse_sum
att_ce_loss = _losses.attention_ce
att_ce_mean_loss = _losses.attention_ce_mean
hid_mse_loss = _losses.hidden_mse
cos_loss = _losses.cos
pkd_loss = _losses.pkd
fsp_loss = _losses.fsp
mmd_loss = _losses.mmd

__all__ = ["kd_mse_loss", "kd_ce_loss", "att_mse_loss", "att_mse_sum_loss", "att_ce_loss", "att_ce_mean_loss",
           "hid_mse_loss", "cos_loss", "pkd_loss", "fsp_loss", "mmd_loss"]
