"""One TextBrewer ``train()`` call, run by :class:`distill_toolkit.Trainer`.

:func:`run` turns the call into the Trainer's arguments and runs it:

- the user's optimizer and LR scheduler are the loop's (``Trainer(optimizer=, lr_scheduler=)``; without a
  scheduler the LR stays constant, as in TextBrewer);
- ``max_grad_norm > 0`` clips the *student's* gradients before every optimiser step (a step pre-hook on
  the user's optimizer), as TextBrewer does, projections excluded;
- the data is one of the ``IterableDataset`` s of :mod:`.calls`, ``max_steps`` the number of optimiser
  steps TextBrewer takes (``len(dataloader) // gradient_accumulation_steps * num_epochs``, or ``num_steps``);
- :class:`TextBrewerSteps` does, after every optimiser step, what TextBrewer does there: weight schedulers,
  TensorBoard scalars (``distiller.tb_writer``), ``output_dir/gs{step}.pkl`` and ``callback(model, step)``;
- the random state (torch, CUDA, numpy, ``random``) of the call is put back before the first step, so the
  Trainer's set-up (its seeding, the probe batch) leaves dropout and shuffling as TextBrewer would have them.

The Trainer also writes its own record to ``output_dir`` (``run.json``, ``config.yaml``, ``result.json``,
and ``final/``: the student exported with safetensors).
"""

from __future__ import annotations

import json
import logging
import os
import random
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from distill_toolkit.compat.textbrewer.calls import Batches
from distill_toolkit.config import DistillationConfig, TrainingConfig
from distill_toolkit.engine import Callback, Trainer

logger = logging.getLogger("Distillation")


class Rewind:
    """The random state of one moment (and the order of a logits cache), to put back later."""

    def __init__(self, cache=None):
        self.cache = cache
        if cache is not None:
            cache.mark()
        self.states = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
                       torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)

    def restore(self) -> None:
        """Put the remembered state back."""
        cpu, numpy_state, python_state, cuda = self.states
        torch.set_rng_state(cpu)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if self.cache is not None:
            self.cache.reset()


def epoch_checkpoints(steps_per_epoch: int, num_epochs: int, frequency: int, epoch_frequency: int) -> Callable:
    """TextBrewer's ``num_epochs`` rule: save ``frequency`` times per epoch, every ``epoch_frequency`` epochs and
    after the last."""
    points = [int(steps_per_epoch * ci / frequency) for ci in range(frequency)]

    def due(step: int) -> bool:
        """Whether ``step`` saves a checkpoint."""
        epoch = (step - 1) // steps_per_epoch
        return step % steps_per_epoch in points and ((epoch + 1) % epoch_frequency == 0 or epoch + 1 == num_epochs)

    return due


def step_checkpoints(ckpt_steps: int, total: int) -> Callable:
    """TextBrewer's ``num_steps`` rule: save every ``ckpt_steps`` steps and at the last."""
    return lambda step: step % ckpt_steps == 0 or step == total


class TextBrewerSteps(Callback):
    """After every optimiser step: weight schedulers, TensorBoard scalars, checkpoint and callback when due."""

    def __init__(self, distiller, student: nn.Module, schedule_steps: float, due: Callable, callback, rewind: Rewind):
        self.distiller, self.student, self.total, self.due = distiller, student, schedule_steps, due
        self.callback, self.rewind = callback, rewind
        self.writer_step = 0

    def on_train_begin(self, trainer) -> None:
        """Put back the random state of the ``train()`` call."""
        self.rewind.restore()

    def on_step_end(self, trainer, step: int, logs: dict) -> None:
        """Weight schedulers, scalars, checkpoint and callback."""
        cfg = getattr(self.distiller, "d_config", None)
        if cfg is not None and cfg.kd_loss_weight_scheduler is not None:
            cfg.kd_loss_weight = cfg.kd_loss_weight_scheduler(step / self.total)
        if cfg is not None and cfg.hard_label_weight_scheduler is not None:
            cfg.hard_label_weight = cfg.hard_label_weight_scheduler(step / self.total)
        self._write(trainer.strategy)
        if self.due(step):
            self._save(step)

    def on_train_end(self, trainer, result: dict) -> None:
        """Flush the TensorBoard writer."""
        flush = getattr(self.distiller.tb_writer, "flush", None)
        if flush is not None:
            flush()

    def _write(self, strategy) -> None:
        writer = self.distiller.tb_writer
        for loss, terms in strategy.records or []:
            writer.add_scalar("scalar/total_loss", loss.cpu().item(), self.writer_step)
            for name, value in terms.items():
                writer.add_scalar(f"scalar/{name}", value.cpu().item(), self.writer_step)
            self.writer_step += 1
        if strategy.records:
            strategy.records.clear()

    def _save(self, step: int) -> None:
        logger.info(f"Saving at global step {step}")
        torch.save(self.student.state_dict(), os.path.join(self.distiller.t_config.output_dir, f"gs{step}.pkl"))
        if self.callback is not None:
            logger.info("Running callback function...")
            self.callback(model=self.student, step=step)
            self.student.train()


def device_is_cpu(device) -> bool:
    """Whether TextBrewer's ``TrainingConfig.device`` means the CPU; refuses what Accelerate cannot place."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type != "cuda":
        raise NotImplementedError(f"TrainingConfig.device: {device} is not supported. Fix: use 'cuda' or 'cpu'")
    if not torch.cuda.is_available():
        raise ValueError("TrainingConfig.device is 'cuda' but CUDA is not available. Fix: TrainingConfig(device='cpu')")
    if device.index not in (None, 0):
        raise NotImplementedError(f"TrainingConfig.device: {device}: the loop uses the first visible GPU. Fix: "
                                  f"device='cuda' with CUDA_VISIBLE_DEVICES={device.index}")
    return False


def toolkit_training(t_config, total_steps: int) -> TrainingConfig:
    """The Trainer's TrainingConfig for a TextBrewer ``TrainingConfig`` and a number of optimiser steps."""
    return TrainingConfig(output_dir=str(t_config.output_dir), max_steps=total_steps, batch_size=1,
                          gradient_accumulation_steps=t_config.gradient_accumulation_steps, max_grad_norm=None,
                          mixed_precision=t_config.mixed_precision, cpu=device_is_cpu(t_config.device), trackers=[],
                          eval_every_epochs=None, lr_scheduler="constant", overwrite=True)


def _loader(data) -> DataLoader:
    """The loop's loader over ``data``. Its own generator: a loader without one draws a seed from the global
    random state at every ``iter()``, which would shift the user's dropout and shuffling."""
    return DataLoader(data, batch_size=None, generator=torch.Generator())


def clip_hook(params: list, max_norm: float) -> Callable:
    """An optimizer step pre-hook clipping the norm of ``params``' gradients (TextBrewer clips the student's)."""
    def hook(optimizer, args, kwargs) -> None:
        """Clip before the step."""
        torch.nn.utils.clip_grad_norm_(params, max_norm)
    return hook


def _record(distiller) -> dict:
    configs = {name: vars(getattr(distiller, name)) for name in ("t_config", "d_config") if hasattr(distiller, name)}
    return json.loads(json.dumps({"textbrewer": {"distiller": type(distiller).__name__, **configs}}, default=str))


def run(distiller, *, student: nn.Module, teacher, data, strategy, optimizer, scheduler, total_steps: int,
        schedule_steps: float, due: Callable, callback, max_grad_norm: float, student_adaptor, teacher_adaptor,
        rewind: Rewind) -> dict:
    """Run one ``train()`` call on the Trainer (see the module docstring); returns the Trainer's result.

    ``student`` and ``teacher`` (one, a list or a ``{task: teacher}`` dict) are :class:`~.calls.ModelCall`
    wrappers; the user's models and projections get back their train/eval modes (module by module) and
    the teachers their ``requires_grad`` flags at the end.
    """
    wrappers = [] if teacher is None else list(teacher.values()) if isinstance(teacher, dict) else \
        list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    teachers = [w.model for w in wrappers]
    modes = [(m, m.training) for model in [student.model, *teachers, strategy] for m in model.modules()]
    grads = [(p, p.requires_grad) for m in teachers for p in m.parameters()]
    params = list(student.model.parameters())
    clip = max_grad_norm is not None and max_grad_norm > 0
    hook = optimizer.register_step_pre_hook(clip_hook(params, max_grad_norm)) if clip else None
    strategy.records = [] if distiller.tb_writer is not _NoOp else None
    strategy.stream = data
    steps = TextBrewerSteps(distiller, student.model, schedule_steps, due, callback, rewind)
    try:
        trainer = Trainer(student, toolkit_training(distiller.t_config, total_steps),
                          DistillationConfig(strategy=strategy.name), _loader(data),
                          teacher=teacher, student_adaptor=student_adaptor, teacher_adaptor=teacher_adaptor,
                          callbacks=[steps], run_config=_record(distiller), optimizer=optimizer,
                          lr_scheduler=scheduler, strategy=strategy)
        if trainer.accelerator.num_processes > 1:
            raise NotImplementedError("distill_toolkit.compat.textbrewer runs one process. Fix: run the script with "
                                      "`python`, or use distill_toolkit.Trainer under `accelerate launch`")
        distiller.trainer = trainer
        return trainer.train()
    finally:
        if hook is not None:
            hook.remove()
        for module, training in modes:  # module by module: a sub-module the user kept in eval stays so
            module.training = training
        for p, flag in grads:
            p.requires_grad_(flag)


def tensorboard_writer(log_dir):
    """A ``SummaryWriter`` for ``log_dir``, or TextBrewer's ``no_op`` writer when it is None."""
    if log_dir is None:
        return no_op
    from torch.utils.tensorboard import SummaryWriter  # a heavy import: only when a log is asked for

    return SummaryWriter(log_dir=log_dir)


def epoch_steps(dataloader, num_epochs, gradient_accumulation_steps: int) -> tuple:
    """``(steps per epoch, steps run, steps the schedules count)`` of TextBrewer's ``num_epochs`` mode."""
    if not hasattr(dataloader, "__len__"):
        raise ValueError("train(num_epochs=...) needs a dataloader with a length. Fix: pass num_steps=... instead")
    per_epoch, left = divmod(len(dataloader), gradient_accumulation_steps)
    if per_epoch == 0:
        raise ValueError(f"the dataloader has {len(dataloader)} batches, fewer than gradient_accumulation_steps "
                         f"({gradient_accumulation_steps}). Fix: more data or fewer accumulation steps")
    if left:
        warnings.warn(f"the last {left} batch(es) of every epoch are skipped: they do not fill an accumulation "
                      f"window of {gradient_accumulation_steps}. TextBrewer computed their losses (and logged them) "
                      "but discarded their gradients, so the weights are the same; the loss log has fewer entries. "
                      "Fix: a len(dataloader) divisible by gradient_accumulation_steps", stacklevel=3)
    return per_epoch, per_epoch * int(num_epochs), per_epoch * num_epochs


def step_batches(dataloader, postprocessor, num_steps: int, gradient_accumulation_steps: int) -> Batches:
    """The data of a ``num_steps`` run: pass by pass (the loop's epochs) when the passes fill whole accumulation
    windows; else, as TextBrewer's windows then run across passes, one ``cycle`` of every micro-batch."""
    if hasattr(dataloader, "__len__") and len(dataloader) % gradient_accumulation_steps == 0 and len(dataloader):
        return Batches(dataloader, postprocessor, len(dataloader))
    return Batches(dataloader, postprocessor, num_steps * gradient_accumulation_steps, endless=True)


class _NoOp:
    """TextBrewer's ``no_op`` writer: ``add_scalar`` does nothing."""

    @staticmethod
    def add_scalar(*args, **kwargs) -> None:
        """Write nothing."""


no_op = _NoOp
