"""TextBrewer's ``BasicTrainer``: supervised training of one model (e.g. the teacher), on the toolkit's
``supervised`` strategy: the loss is the sum of the adaptor's ``losses``, each averaged."""

from __future__ import annotations

from distill_toolkit.compat.textbrewer.calls import AdaptorCall, Batches, ModelCall
from distill_toolkit.compat.textbrewer.objective import RecordingSupervised
from distill_toolkit.compat.textbrewer.running import (Rewind, device_is_cpu, epoch_checkpoints, epoch_steps,
                                                       run, step_batches, step_checkpoints, tensorboard_writer)
from distill_toolkit.config import DistillationConfig as ToolkitDistillationConfig


class BasicTrainer:
    """Trains ``model`` on the ``losses`` its ``adaptor`` returns (TextBrewer's arguments; no distillation).

    ``with trainer:`` puts the model in train mode and restores its mode on exit.
    """

    def __init__(self, train_config, model, adaptor):
        self.t_config, self.model, self.adaptor = train_config, model, adaptor
        device_is_cpu(train_config.device)
        self.local_rank, self.rank, self.print_freq = -1, 0, 20
        self.tb_writer = tensorboard_writer(train_config.log_dir)
        self.trainer = None  # the distill_toolkit.Trainer of the last train() call

    def __enter__(self):
        self.model_is_training = self.model.training
        self.model.train()

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.model.train(self.model_is_training)

    def train(self, optimizer, dataloader, num_epochs, scheduler_class=None, scheduler_args=None, scheduler=None,
              max_grad_norm=-1.0, num_steps=None, callback=None, batch_postprocessor=None, **args):
        """Train as :meth:`BasicDistiller.train <distill_toolkit.compat.textbrewer.BasicDistiller.train>` does."""
        if scheduler_class is not None:
            scheduler = scheduler_class(optimizer=optimizer, **(scheduler_args or {}))
        gas = self.t_config.gradient_accumulation_steps
        if num_steps is not None:
            if self.t_config.ckpt_steps is None:
                raise ValueError("train(num_steps=...) saves every TrainingConfig.ckpt_steps steps. Fix: set "
                                 "TrainingConfig(ckpt_steps=...)")
            total = schedule = int(num_steps)
            due = step_checkpoints(int(self.t_config.ckpt_steps), total)
            data = step_batches(dataloader, batch_postprocessor, total, gas)
        else:
            per_epoch, total, schedule = epoch_steps(dataloader, num_epochs, gas)
            due = epoch_checkpoints(per_epoch, num_epochs, self.t_config.ckpt_frequency,
                                    self.t_config.ckpt_epoch_frequency)
            data = Batches(dataloader, batch_postprocessor, per_epoch * gas)
        run(self, student=ModelCall(self.model, args), teacher=None, data=data,
            strategy=RecordingSupervised(ToolkitDistillationConfig(strategy="supervised")), optimizer=optimizer,
            scheduler=scheduler, total_steps=total, schedule_steps=schedule, due=due, callback=callback,
            max_grad_norm=max_grad_norm, student_adaptor=AdaptorCall(self.adaptor), teacher_adaptor=None,
            rewind=Rewind())
