"""TextBrewer's distillers (``textbrewer.distillers``), each a translation onto :class:`distill_toolkit.Trainer`.

``BasicDistiller``, ``GeneralDistiller``, ``MultiTeacherDistiller`` and ``MultiTaskDistiller`` take
TextBrewer's arguments; ``train()`` takes TextBrewer's (the user's optimizer, ``scheduler_class`` +
``scheduler_args``, ``max_grad_norm``, ``callback``, ``batch_postprocessor``, ``**args`` for the models)
and runs the one loop (:mod:`.running`) with TextBrewer's loss (:mod:`.objective`). ``BasicTrainer``
(:mod:`.trainer`) is importable from here too, as in TextBrewer.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch

from distill_toolkit.compat.textbrewer import presets
from distill_toolkit.compat.textbrewer.calls import AdaptorCall, Batches, CachedBatches, ModelCall, TaskBatches
from distill_toolkit.compat.textbrewer.objective import TextBrewerLoss
from distill_toolkit.compat.textbrewer.running import (Rewind, device_is_cpu, epoch_checkpoints, epoch_steps,
                                                       run, step_batches, step_checkpoints, tensorboard_writer)
from distill_toolkit.compat.textbrewer.trainer import BasicTrainer
from distill_toolkit.config import DistillationConfig as ToolkitDistillationConfig

logger = logging.getLogger("Distillation")


def _models(model_T) -> list:
    return list(model_T.values()) if isinstance(model_T, dict) else \
        list(model_T) if isinstance(model_T, (list, tuple)) else [model_T]


class DistillationContext:
    """``with distiller:``: the teachers in eval mode and the student in train mode; modes restored on exit."""

    def __enter__(self):
        self._modes = [(m, m.training) for m in [self.model_S, *_models(self.model_T)]]
        for model in _models(self.model_T):
            model.eval()
        self.model_S.train()

    def __exit__(self, exc_type, exc_val, exc_tb):
        for model, training in self._modes:
            model.train(training)


class BasicDistiller(DistillationContext):
    """Single-teacher single-task distillation: KD on logits and the hard-label losses (TextBrewer's arguments)."""

    kind = "basic"

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S):
        super().__init__()
        self.t_config, self.d_config = train_config, distill_config
        self.model_T, self.model_S, self.adaptor_T, self.adaptor_S = model_T, model_S, adaptor_T, adaptor_S
        if distill_config.kd_loss_type not in presets.KD_LOSS_MAP:
            raise ValueError(f"DistillationConfig.kd_loss_type: unknown {distill_config.kd_loss_type!r}. Fix: use "
                             f"one of {', '.join(presets.KD_LOSS_MAP)}")
        self.kd_loss = presets.KD_LOSS_MAP[distill_config.kd_loss_type]
        device_is_cpu(train_config.device)  # refuse a device the loop cannot use now, not at train()
        self.local_rank, self.rank, self.print_freq = -1, 0, 20
        self.tb_writer = tensorboard_writer(train_config.log_dir)
        self.logits_cache: list = []
        self.trainer = None  # the distill_toolkit.Trainer of the last train() call

    def _initialize(self, optimizer, scheduler_class, scheduler_args, scheduler):
        """TextBrewer's ``initialize_training``: projections join the optimizer, then the scheduler is built."""
        for proj, group in zip(getattr(self, "projs", []), getattr(self, "projs_group", [])):
            if proj is not None:
                optimizer.add_param_group({"params": proj.parameters(), **group})
        if scheduler_class is not None:
            scheduler = scheduler_class(optimizer=optimizer, **(scheduler_args or {}))
        return optimizer, scheduler

    def train(self, optimizer, dataloader, num_epochs=None, scheduler_class=None, scheduler_args=None, scheduler=None,
              max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None, **args):
        """Train the student: ``num_epochs`` passes over ``dataloader``, or ``num_steps`` optimiser steps (cycling it).

        As TextBrewer: a dict batch is fed as ``model(**batch, **args)``, a tuple as ``model(*batch, **args)``;
        ``callback(model=student, step=global_step)`` runs at every checkpoint (``output_dir/gs{step}.pkl``);
        ``scheduler_class(optimizer=optimizer, **scheduler_args)`` schedules the LR; ``max_grad_norm > 0`` clips
        the student's gradients. ``scheduler`` (deprecated in TextBrewer) is a ready scheduler.
        """
        optimizer, scheduler = self._initialize(optimizer, scheduler_class, scheduler_args, scheduler)
        if num_epochs is None and num_steps is None:
            raise ValueError("train(): give num_epochs or num_steps")
        gas = self.t_config.gradient_accumulation_steps
        caching = self.d_config.is_caching_logits
        if num_steps is not None:
            if caching:
                raise ValueError("DistillationConfig.is_caching_logits cannot be used with num_steps. Fix: train "
                                 "with num_epochs, or set is_caching_logits=False")
            total = int(num_steps)
            data, schedule, due = step_batches(dataloader, batch_postprocessor, total, gas), total, \
                step_checkpoints(self._ckpt_steps(), total)
        else:
            per_epoch, total, schedule = epoch_steps(dataloader, num_epochs, gas)
            due = epoch_checkpoints(per_epoch, num_epochs, self.t_config.ckpt_frequency,
                                    self.t_config.ckpt_epoch_frequency)
            data = (CachedBatches(self._cache(dataloader, batch_postprocessor, args), per_epoch * gas) if caching
                    else Batches(dataloader, batch_postprocessor, per_epoch * gas))
        self._run(optimizer, scheduler, data, total, schedule, due, callback, max_grad_norm, args)

    def _ckpt_steps(self) -> int:
        if self.t_config.ckpt_steps is None:
            raise ValueError("train(num_steps=...) saves every TrainingConfig.ckpt_steps steps. Fix: set "
                             "TrainingConfig(ckpt_steps=...)")
        return int(self.t_config.ckpt_steps)

    def _teachers(self, args: dict):
        """The teacher wrapper(s) and adaptor(s) handed to the Trainer."""
        return ModelCall(self.model_T, args, teacher_index=0), AdaptorCall(self.adaptor_T, teacher=True)

    def _run(self, optimizer, scheduler, data, total, schedule, due, callback, max_grad_norm, args) -> None:
        cached = isinstance(data, CachedBatches)
        strategy = TextBrewerLoss(ToolkitDistillationConfig(strategy="textbrewer"), self.d_config, self.kind,
                                  getattr(self, "projs", []), cached=cached)
        teacher, teacher_adaptor = self._teachers(args)
        adaptor_S = AdaptorCall(self.adaptor_S, probability_shift=self.d_config.probability_shift)
        run(self, student=ModelCall(self.model_S, args), teacher=teacher, data=data, strategy=strategy,
            optimizer=optimizer, scheduler=scheduler, total_steps=total, schedule_steps=schedule, due=due,
            callback=callback, max_grad_norm=max_grad_norm, student_adaptor=adaptor_S,
            teacher_adaptor=teacher_adaptor, rewind=Rewind(data if cached else None))

    def _cache(self, dataloader, batch_postprocessor, args) -> list:
        """``is_caching_logits``: every batch (on the device) with its teachers' logits (on the CPU), computed once."""
        logger.info("Caching batches and teacher's logits...")
        device = torch.device(self.t_config.device)
        adaptors = self.adaptor_T if isinstance(self.adaptor_T, (list, tuple)) else None
        teachers = _models(self.model_T)
        calls = [ModelCall(m.to(device), args) for m in teachers]
        self.logits_cache = []
        for batch in dataloader:
            batch = batch_postprocessor(batch) if batch_postprocessor is not None else batch
            batch = _to_device(batch, device)
            with torch.no_grad():
                outputs = [call(batch) for call in calls]
            results = [post_adaptor((adaptors[i] if adaptors else self.adaptor_T)(batch, out))
                       for i, out in enumerate(outputs)]
            self.logits_cache.append([batch, [[lg.to("cpu") for lg in r["logits"]] for r in results]])
        return self.logits_cache


def post_adaptor(result: dict) -> dict:
    """TextBrewer's ``post_adaptor``: ``logits``, ``logits_mask``, ``losses`` and ``labels`` made lists."""
    for key in ("logits", "logits_mask", "losses", "labels"):
        if key in result and not isinstance(result[key], (list, tuple)):
            result[key] = [result[key]]
    return result


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return tuple(_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    return batch


class GeneralDistiller(BasicDistiller):
    """Single-teacher distillation with ``intermediate_matches`` (hidden states, attention maps, projections).

    The projections are built here, as in TextBrewer (same initial values under the same seed), and join
    the optimizer in ``train()`` with the settings of ``proj[3]``. ``custom_matches`` are not supported.
    """

    kind = "general"

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S,
                 custom_matches: Optional[list] = None):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        if custom_matches:
            raise NotImplementedError(
                "GeneralDistiller(custom_matches=...) is not supported (in TextBrewer 0.2.1 it is a testing feature "
                "that fails in compute_loss). Fix: match named modules with distill_toolkit.Trainer and "
                "Match(feature='module', teacher_module=..., student_module=...)")
        self.projs: list = []
        self.projs_group: list = []
        for im in distill_config.intermediate_matches:
            if im.proj is not None:
                self.projs_group.append(im.proj[3])
                self.projs.append(presets.PROJ_MAP[im.proj[0]](im.proj[1], im.proj[2]).to(train_config.device))
            else:
                self.projs.append(None)
                self.projs_group.append(None)
        self.has_custom_matches = False
        _no_caching(distill_config, type(self).__name__)


def _no_caching(distill_config, name: str) -> None:
    if distill_config.is_caching_logits:
        warnings.warn(f"{name} does not cache logits (as in TextBrewer, is_caching_logits is set to False); "
                      "BasicDistiller and MultiTeacherDistiller do", stacklevel=3)
    distill_config.is_caching_logits = False


class MultiTeacherDistiller(BasicDistiller):
    """Several teachers of one task: KD on the mean of their logits (no intermediate matches, as in TextBrewer).

    ``model_T`` is a list of teachers; ``adaptor_T`` one adaptor for all, or a list, one per teacher.
    """

    kind = "multi_teacher"

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        if hasattr(adaptor_T, "__iter__") and len(adaptor_T) != len(model_T):
            raise ValueError(f"MultiTeacherDistiller: {len(adaptor_T)} adaptors for {len(model_T)} teachers. Fix: "
                             "give one adaptor per teacher, or one adaptor for all")
        if distill_config.intermediate_matches:
            warnings.warn("MultiTeacherDistiller ignores intermediate_matches, as in TextBrewer. For matches per "
                          "teacher use distill_toolkit.Trainer with strategy 'multi_teacher'", stacklevel=2)

    def _teachers(self, args: dict):
        adaptors = list(self.adaptor_T) if hasattr(self.adaptor_T, "__iter__") else [self.adaptor_T] * len(self.model_T)
        teachers = [ModelCall(m, args, teacher_index=i) for i, m in enumerate(self.model_T)]
        return teachers, {f"teacher{i}": AdaptorCall(a, teacher=True) for i, a in enumerate(adaptors)}


class MultiTaskDistiller(GeneralDistiller):
    """Several tasks, one teacher each, into one student (``model_T``, ``adaptor_T``, ``adaptor_S``: ``{task: x}``)."""

    kind = "multi_task"

    def __init__(self, train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S):
        super().__init__(train_config, distill_config, model_T, model_S, adaptor_T, adaptor_S)
        if not (isinstance(model_T, dict) and isinstance(adaptor_T, dict) and isinstance(adaptor_S, dict)) or \
                not set(model_T) == set(adaptor_T) == set(adaptor_S):
            raise ValueError("MultiTaskDistiller: model_T, adaptor_T and adaptor_S must be dicts with the same task "
                             f"names, got {_keys(model_T)}, {_keys(adaptor_T)}, {_keys(adaptor_S)}")

    def train(self, optimizer, dataloaders, num_steps, scheduler_class=None, scheduler_args=None, scheduler=None,
              max_grad_norm=-1.0, tau=1, callback=None, batch_postprocessors=None, **args):
        """Train for ``num_steps``; each micro-batch's task is drawn with ``P(task) ~ len(dataloader) ** tau``."""
        optimizer, scheduler = self._initialize(optimizer, scheduler_class, scheduler_args, scheduler)
        total = int(num_steps)
        data = TaskBatches(dataloaders, total * self.t_config.gradient_accumulation_steps, tau, batch_postprocessors)
        self._run(optimizer, scheduler, data, total, total, step_checkpoints(self._ckpt_steps(), total), callback,
                  max_grad_norm, args)

    def _teachers(self, args: dict):
        return ({task: ModelCall(m, args, teacher_index=0) for task, m in self.model_T.items()},
                {task: AdaptorCall(a, teacher=True) for task, a in self.adaptor_T.items()})


__all__ = ["BasicTrainer", "BasicDistiller", "GeneralDistiller", "MultiTeacherDistiller", "MultiTaskDistiller"]


def _keys(value):
    return sorted(value) if isinstance(value, dict) else type(value).__name__
