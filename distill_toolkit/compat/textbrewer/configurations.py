"""TextBrewer's ``TrainingConfig`` and ``DistillationConfig`` (``textbrewer.configurations``).

Same arguments, defaults and attributes as TextBrewer 0.2.1. What distill_toolkit cannot honour
is refused when the config is built, with the alternative: ``fp16`` (Apex amp; use
``mixed_precision='fp16'`` or ``'bf16'``, torch autocast through Accelerate), ``data_parallel`` and
``local_rank`` (``torch.nn.DataParallel`` / hand-made DDP; use :class:`distill_toolkit.Trainer`
under ``accelerate launch``).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Union

from distill_toolkit.compat.textbrewer.presets import FEATURES, PROJ_MAP, TEMPERATURE_SCHEDULER, WEIGHT_SCHEDULER

MIXED_PRECISION = ("no", "fp16", "bf16")


class Config:
    """Base class of the two configs: ``from_dict``, ``from_json_file`` and a readable ``repr``."""

    def __init__(self, **kwargs):
        pass

    @classmethod
    def from_json_file(cls, json_filename):
        """Build the config from a JSON file of its arguments."""
        with open(json_filename) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_dict(cls, dict_object):
        """Build the config from a dict of its arguments."""
        return cls(**dict_object)

    def __str__(self):
        return "".join(f"{k} : {v}\n" for k, v in self.__dict__.items())

    def __repr__(self):
        return f"{self.__class__.__name__}:\n{self}"


class TrainingConfig(Config):
    """How to train (TextBrewer's arguments; see its documentation).

    Args:
        gradient_accumulation_steps: micro-batches per optimiser step.
        ckpt_frequency: with ``num_epochs``, save (and call the callback) this many times per epoch.
        ckpt_epoch_frequency: with ``num_epochs``, save every this many epochs (and after the last).
        ckpt_steps: with ``num_steps``, save every this many steps (and at the last); required then.
        log_dir: TensorBoard folder for the loss scalars (``scalar/total_loss`` ...); None: no log.
        output_dir: where ``gs{step}.pkl`` (the student's ``state_dict``) is written, created here.
        device: ``'cuda'`` (default), ``'cuda:0'`` or ``'cpu'``.
        fp16, fp16_opt_level: Apex amp, not supported: ``fp16=True`` raises ``NotImplementedError``.
        data_parallel, local_rank: not supported (``NotImplementedError``); see the module docstring.
        mixed_precision: (distill_toolkit only) ``'no'``, ``'fp16'`` or ``'bf16'``: torch autocast.
    """

    def __init__(self, gradient_accumulation_steps=1, ckpt_frequency=1, ckpt_epoch_frequency=1, ckpt_steps=None,
                 log_dir=None, output_dir="./saved_models", device="cuda", fp16=False, fp16_opt_level="O1",
                 data_parallel=False, local_rank=-1, mixed_precision="no"):
        super().__init__()
        if fp16:
            raise NotImplementedError(
                "TrainingConfig.fp16: Apex amp is not supported by distill_toolkit.compat.textbrewer. Fix: "
                "TrainingConfig(mixed_precision='fp16') (or 'bf16'): torch autocast through Accelerate")
        if data_parallel:
            raise NotImplementedError(
                "TrainingConfig.data_parallel: torch.nn.DataParallel is not supported. Fix: train one process per "
                "device with distill_toolkit.Trainer under `accelerate launch --config_file launch/ddp.yaml`")
        if local_rank != -1:
            raise NotImplementedError(
                "TrainingConfig.local_rank: hand-made DistributedDataParallel is not supported; the compatibility "
                "layer runs one process. Fix: keep local_rank=-1, or use distill_toolkit.Trainer under "
                "`accelerate launch` for several processes")
        if mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"TrainingConfig.mixed_precision: unknown {mixed_precision!r}. Fix: use one of "
                             f"{', '.join(MIXED_PRECISION)}")
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.ckpt_frequency = ckpt_frequency
        self.ckpt_epoch_frequency = ckpt_epoch_frequency
        self.ckpt_steps = ckpt_steps
        self.log_dir = log_dir
        self.output_dir = output_dir
        self.device = device
        self.fp16 = fp16
        self.fp16_opt_level = fp16_opt_level
        self.data_parallel = data_parallel
        self.local_rank = local_rank
        self.mixed_precision = mixed_precision
        os.makedirs(self.output_dir, exist_ok=True)


class IntermediateMatch:
    """One entry of ``intermediate_matches``: ``layer_T``/``layer_S`` index the adaptor's ``hidden`` or
    ``attention`` lists (two layers each for ``fsp``/``nst``); ``proj = [kind, dim_S, dim_T, {group}]``."""

    def __init__(self, layer_T: Union[int, List[int]], layer_S: Union[int, List[int]], weight: float, loss: str,
                 feature: str, proj: Optional[List] = None):
        self.layer_T, self.layer_S, self.feature, self.weight, self.loss, self.proj = (
            layer_T, layer_S, feature, weight, loss, proj)
        if feature not in FEATURES:
            raise ValueError(f"intermediate_matches: feature {feature!r} is unknown. Fix: use one of {FEATURES}")
        if proj:
            if proj[0] not in PROJ_MAP:
                raise ValueError(f"intermediate_matches: proj {proj!r}: unknown projection {proj[0]!r}. Fix: use "
                                 f"one of {', '.join(PROJ_MAP)}")
            if len(proj) < 3 or type(proj[1]) is not int or type(proj[2]) is not int:
                raise ValueError(f"intermediate_matches: proj {proj!r} must be [kind, dim_S, dim_T] (two ints), "
                                 "optionally with a dict of optimiser settings, e.g. ['linear', 312, 768]")
            if len(proj) == 3:
                self.proj.append(dict())
            elif not isinstance(proj[3], dict):
                raise ValueError(f"intermediate_matches: proj[3] must be a dict (optimiser settings), got {proj[3]!r}")

    def __str__(self):
        return ", ".join(f"{k} : {v}" for k, v in self.__dict__.items())

    def __repr__(self):
        return f"\n{self.__class__.__name__}: {self}"

    @classmethod
    def from_dict(cls, dict_object):
        """Build from a dict with the keys layer_T, layer_S, weight, loss, feature (and proj)."""
        return None if dict_object is None else cls(**dict_object)


def _scheduler(registry, value, field: str):
    if isinstance(value, str) and value == "none":
        return None
    if value not in registry:
        raise ValueError(f"DistillationConfig.{field}: unknown scheduler {value!r}. Fix: use 'none' or one of "
                         f"{', '.join(registry.keys())}" + (" (flsw and cwsm with their parameters, e.g. "
                                                            "['flsw', 1, 2])" if registry is TEMPERATURE_SCHEDULER
                                                            else ""))
    return registry[value]


class DistillationConfig(Config):
    """What to distil (TextBrewer's arguments and attributes; see its documentation).

    The loss is ``kd_loss_weight * KD + hard_label_weight * sum(losses) + sum(match weight * match loss)``.
    ``*_scheduler`` names are replaced by the functions they name (``None`` for ``'none'``), as in
    TextBrewer; a weight scheduler then *replaces* its weight after every optimiser step.
    ``is_caching_logits`` is honoured by ``BasicDistiller`` and ``MultiTeacherDistiller`` with ``num_epochs``.
    """

    def __init__(self, temperature=4, temperature_scheduler="none", hard_label_weight=0,
                 hard_label_weight_scheduler="none", kd_loss_type="ce", kd_loss_weight=1,
                 kd_loss_weight_scheduler="none", probability_shift=False,
                 intermediate_matches: Optional[List[Dict]] = None, is_caching_logits=False):
        super().__init__()
        self.temperature = temperature
        self.temperature_scheduler = _scheduler(TEMPERATURE_SCHEDULER, temperature_scheduler, "temperature_scheduler")
        self.hard_label_weight = hard_label_weight
        self.hard_label_weight_scheduler = _scheduler(WEIGHT_SCHEDULER, hard_label_weight_scheduler,
                                                      "hard_label_weight_scheduler")
        self.kd_loss_type = kd_loss_type
        self.kd_loss_weight = kd_loss_weight
        self.kd_loss_weight_scheduler = _scheduler(WEIGHT_SCHEDULER, kd_loss_weight_scheduler,
                                                   "kd_loss_weight_scheduler")
        self.probability_shift = probability_shift
        self.intermediate_matches: List[IntermediateMatch] = [
            IntermediateMatch.from_dict(im) for im in (intermediate_matches or [])]
        self.is_caching_logits = is_caching_logits
