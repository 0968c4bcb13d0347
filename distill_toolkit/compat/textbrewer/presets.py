"""TextBrewer's registries (``textbrewer.presets``): names -> losses, projections and schedulers.

The entries are distill_toolkit's functions under TextBrewer's names. :func:`register_new` adds
an entry as in TextBrewer; the distillers look names up when they compute the loss, so an entry
registered after a distiller is built is still found.
"""

from __future__ import annotations

from typing import Callable

from distill_toolkit.compat.textbrewer.losses import (att_ce_loss, att_ce_mean_loss, att_mse_loss, att_mse_sum_loss,
                                                      cos_loss, fsp_loss, hid_mse_loss, kd_ce_loss, kd_mse_loss,
                                                      mmd_loss, pkd_loss)
from distill_toolkit.compat.textbrewer.projections import linear_projection, projection_with_activation
from distill_toolkit.compat.textbrewer.schedulers import (constant_temperature_scheduler,
                                                          cwsm_temperature_scheduler_builder,
                                                          flsw_temperature_scheduler_builder,
                                                          linear_decay_weight_scheduler,
                                                          linear_growth_weight_scheduler)


class DynamicKeyDict:
    """A dict whose key may be ``[name, *args]`` (or ``[name, {kwargs}]``): the entry is then called with them.

    ``TEMPERATURE_SCHEDULER[["flsw", 1, 2]]`` is ``flsw_temperature_scheduler_builder(1, 2)``.
    """

    def __init__(self, kv_dict: dict):
        self.store = kv_dict

    def __getitem__(self, key):
        if not isinstance(key, (list, tuple)):
            return self.store[key]
        name, args = key[0], key[1:]
        if len(args) == 1 and isinstance(args[0], dict):
            return self.store[name](**args[0])
        return self.store[name](*args)

    def __setitem__(self, key, value):
        self.store[key] = value

    def __contains__(self, key) -> bool:
        return (key[0] if isinstance(key, (list, tuple)) and key else key) in self.store

    def keys(self):
        """The registered names."""
        return self.store.keys()


TEMPERATURE_SCHEDULER = DynamicKeyDict({"constant": constant_temperature_scheduler,
                                        "flsw": flsw_temperature_scheduler_builder,
                                        "cwsm": cwsm_temperature_scheduler_builder})
"""Temperature schedulers: ``'constant'``, ``['flsw', beta, gamma]``, ``['cwsm', beta]``."""

FEATURES = ["hidden", "attention"]
"""The intermediate features an ``intermediate_matches`` entry may name."""

ADAPTOR_KEYS = ["logits", "logits_mask", "losses", "inputs_mask", "labels"] + FEATURES
"""The keys of an adaptor's dict that the distillers read."""

KD_LOSS_MAP = {"mse": kd_mse_loss, "ce": kd_ce_loss}
"""KD losses on logits (``DistillationConfig.kd_loss_type``)."""

MATCH_LOSS_MAP = {"attention_mse_sum": att_mse_sum_loss, "attention_mse": att_mse_loss,
                  "attention_ce_mean": att_ce_mean_loss, "attention_ce": att_ce_loss, "hidden_mse": hid_mse_loss,
                  "cos": cos_loss, "pkd": pkd_loss, "gram": fsp_loss, "fsp": fsp_loss, "mmd": mmd_loss,
                  "nst": mmd_loss}
"""Intermediate-feature losses (the ``loss`` of an ``intermediate_matches`` entry)."""

PROJ_MAP = {"linear": linear_projection, "relu": projection_with_activation("ReLU"),
            "tanh": projection_with_activation("Tanh")}
"""Projections (``proj[0]`` of an ``intermediate_matches`` entry)."""

WEIGHT_SCHEDULER = {"linear_decay": linear_decay_weight_scheduler, "linear_growth": linear_growth_weight_scheduler}
"""Loss-weight schedulers (``kd_loss_weight_scheduler``, ``hard_label_weight_scheduler``)."""

MAPS = {"kd_loss": KD_LOSS_MAP, "match_Loss": MATCH_LOSS_MAP, "projection": PROJ_MAP,
        "weight_scheduler": WEIGHT_SCHEDULER, "temperature_scheduler": TEMPERATURE_SCHEDULER}


def register_new(map_name: str, name: str, func: Callable) -> None:
    """Add ``func`` to the registry ``map_name`` (one of :data:`MAPS`' keys) under ``name``."""
    if map_name not in MAPS:
        raise ValueError(f"register_new: unknown map {map_name!r}. Fix: use one of {', '.join(MAPS)}")
    if not callable(func):
        raise TypeError(f"register_new({map_name!r}, {name!r}): the function to register is not callable")
    MAPS[map_name][name] = func
