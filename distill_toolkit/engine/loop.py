"""The training loop: the only one in the project.

Everything about *training* lives here (placement, ``accelerator.prepare``, accumulation,
clipping, mixed precision, LR schedule, evaluation, checkpoints and exact resume, trackers,
progress bar, callbacks); everything about *what is learnt* lives in the strategy.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, DistributedDataParallelKwargs, send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from distill_toolkit.activation_checkpointing import enable_gradient_checkpointing
from distill_toolkit.batch import model_inputs
from distill_toolkit.config import DistillationConfig, TrainingConfig
from distill_toolkit.data.cache import TeacherCache, resolve_teacher_cache, training_collator
from distill_toolkit.data.multitask import TaskCollator, probe_batches, task_loader
from distill_toolkit.data.samplers import LengthGroupedSampler
from distill_toolkit.engine.accelerator import build_accelerator
from distill_toolkit.engine.callbacks import Callback  # noqa: F401  (re-exported)
from distill_toolkit.engine.checkpoint import (load_checkpoint, newest_intact_checkpoint, resolve_resume,
                                              save_checkpoint)
from distill_toolkit.engine.export import card_classes, checkpoint_extras, export_student
from distill_toolkit.engine.model_card import model_card
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.engine.normalise import deepspeed_scale, normalise_gradients
from distill_toolkit.engine.optim import build_lr_scheduler, build_optimizer
from distill_toolkit.engine.run_dir import claim_output_dir
from distill_toolkit.engine.run_info import CONFIG_FILE, config_yaml, resolved_config, run_info
from distill_toolkit.engine.trackers import check_trackers, finish_trackers, start_trackers
from distill_toolkit.features import Adaptor
from distill_toolkit.metrics import accuracy  # noqa: F401  (re-exported: the metric of most tasks)
from distill_toolkit.strategies import build_strategy
from distill_toolkit.teachers import TeacherRunner, build_teacher, named_teachers, place_teacher, prepare_student_config

MetricFn = Callable[[np.ndarray, np.ndarray], dict]
logger = get_logger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step, the term and the last good checkpoint."""


@dataclass
class TrainState:
    """What a checkpoint records beside the weights: where the loop stands."""

    global_step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    best_checkpoint: str = ""
    history: list = field(default_factory=list)
    last_eval: Optional[dict] = None  # {"step": N, metric: value, ...} of the latest evaluation
    wandb_run_id: Optional[str] = None  # a resumed run continues this W&B run


class Trainer:
    """Distils ``teacher`` into ``student`` (or trains ``student`` alone with ``strategy: supervised``).

    Args:
        student: the model to train (any ``nn.Module`` called as ``student(**inputs)``).
        training, distillation: the two configs (validated here, before any model is touched).
        train_data: a ``Dataset`` (batched here with ``collate_fn``, shuffled with the run's seed)
            or a ready ``DataLoader``; for multi-task runs a dict ``{task: Dataset}``, batched one
            task at a time by ``training.task_sampler`` (each batch carries ``batch["task"]``).
        teacher: a frozen teacher ``nn.Module`` (None for ``supervised``); several teachers as a
            list or a ``{role: model}`` dict; multi-task: ``{task: model or [models]}``, or one
            multi-head model for every task (see :mod:`distill_toolkit.strategies.base`). A
            :class:`~distill_toolkit.data.cache.TeacherCache` stands in for a teacher: its outputs
            are read from disk through the collator and no teacher forward runs (so does
            ``training.teacher_cache: PATH``; a teacher model passed then is only checked against the cache).
        eval_data: optional evaluation ``Dataset`` or ``DataLoader``; for multi-task runs a dict
            ``{task: Dataset}``, evaluated per task (metrics ``task/name``) and averaged.
        collate_fn: turns a list of examples into a batch dict.
        metric_fn: ``(predictions, labels) -> {name: value}``; default: the task's metric
            (accuracy, entity F1, micro F1, exact match, perplexity; see :mod:`distill_toolkit.tasks`).
        test_data: optional held-out ``Dataset``/``DataLoader``, scored once at the end (``result["test"]``).
        label_names: the label names of the data, in id order (entity F1 reads the BIO tags from them).
        task: overrides ``distillation.task`` (a registered task name, or ``auto``: read from the student).
        tokenizer: saved beside the exported student.
        student_adaptor, teacher_adaptor: optional ``(inputs, outputs) -> dict`` for models
            whose outputs are not Hugging Face's (keys: logits, logits_mask, losses, labels,
            inputs_mask, hidden, attention); ``teacher_adaptor`` may be a ``{role: adaptor}`` dict.
        callbacks: :class:`Callback` objects.
        run_config: the whole run's config as plain data (the CLI passes ``ExperimentConfig.to_dict()``),
            written to ``output_dir/config.yaml`` and sent to every tracker; default: the two configs given.
        optimizer, lr_scheduler: default: AdamW and ``training.lr_scheduler``; else a ready one or a factory
            (see :func:`~distill_toolkit.engine.optim.build_optimizer` and ``build_lr_scheduler``).
        strategy: a ready :class:`~distill_toolkit.strategies.Strategy` instead of the one built from
            ``distillation.strategy`` (for strategies holding objects, e.g. ``distill_toolkit.compat``).
    """

    def __init__(self, student: nn.Module, training: TrainingConfig, distillation: DistillationConfig,
                 train_data: Union[Dataset, DataLoader, dict], teacher: Union[nn.Module, list, dict, None] = None,
                 eval_data: Union[Dataset, DataLoader, dict, None] = None, collate_fn: Optional[Callable] = None,
                 metric_fn: Optional[MetricFn] = None, tokenizer: Any = None,
                 student_adaptor: Optional[Adaptor] = None, teacher_adaptor: Optional[Adaptor] = None,
                 callbacks: Optional[list] = None, test_data: Union[Dataset, DataLoader, None] = None,
                 label_names: Optional[list] = None, task: Optional[str] = None,
                 run_config: Optional[dict] = None, optimizer: Any = None, lr_scheduler: Any = None,
                 strategy: Optional[nn.Module] = None):
        training.validate()
        check_trackers(training)
        self.strategy = strategy = build_strategy(distillation) if strategy is None else strategy  # checks it
        self._given_optimizer, self._given_lr_scheduler = optimizer, lr_scheduler
        self.training, self.distillation = training, distillation
        self.accelerator = build_accelerator(training)
        self.run_config = resolved_config(training, distillation, run_config)  # -> config.yaml, trackers
        self.run_info = run_info(self.accelerator.num_processes)  # command, processes, package versions
        set_seed(training.seed)
        self.tokenizer = tokenizer
        self.label_names = label_names
        self.callbacks = list(callbacks or [])
        self.should_stop = False
        self.state = TrainState()
        self._last_eval: tuple = (None, {})  # (step, metrics) of the latest evaluation

        if training.teacher_cache:  # outputs read from disk; a teacher model given is only checked against it
            teacher = resolve_teacher_cache(training.teacher_cache, teacher)
        given = {role: model if isinstance(model, TeacherCache) else
                 build_teacher(self.accelerator, model, training.teacher_placement)
                 for role, model in named_teachers(teacher).items()}
        if strategy.teacher_roles and not given:
            raise ValueError(f"strategy {distillation.strategy!r} needs a teacher. Fix: pass teacher=..., "
                             "or use strategy 'supervised'")
        strategy.bind(list(given), list(train_data) if isinstance(train_data, dict) else None)
        if len(given) == len(strategy.teacher_roles) == 1:  # one teacher, whatever its name
            given = {strategy.teacher_roles[0]: next(iter(given.values()))}
        if training.gradient_checkpointing:  # recompute the student's blocks in backward (non-reentrant)
            enable_gradient_checkpointing(student)
        self.module = DistillationModule(student, strategy, task or distillation.task, student_adaptor)
        self.task = self.module.task
        self.metric_fn = metric_fn or functools.partial(self.task.metric, label_names=label_names)
        adaptors = teacher_adaptor if isinstance(teacher_adaptor, dict) else {}
        caches = {role: model for role, model in given.items() if isinstance(model, TeacherCache)}
        self.teachers: dict[str, TeacherRunner] = {
            role: TeacherRunner(None if role in caches else given[role], role, strategy.feature_keys()[role],
                                task or distillation.task, adaptors.get(role, None if adaptors else teacher_adaptor),
                                strategy,
                                in_memory=training.teacher_cache_in_memory)
            for role in strategy.teacher_roles}
        train_collate = (training_collator(caches, train_data, collate_fn, strategy.feature_keys(), distillation)
                         if caches else collate_fn)  # cached teachers: their outputs ride in the batch, no forward
        self.probes = (probe_batches(train_data, training.batch_size, collate_fn)
                       if isinstance(train_data, dict) else None)  # one per task, for strategy.setup
        self.collate_fn = collate_fn
        self.train_loader = self._loader(train_data, training.batch_size, shuffle=True, collate_fn=train_collate)
        self.eval_loader = (None if eval_data is None else
                            self._loader(eval_data, training.eval_batch_size, shuffle=False, collate_fn=collate_fn))
        self.test_data = test_data

    def _loader(self, data, batch_size: int, shuffle: bool, collate_fn):
        if isinstance(data, DataLoader):
            return data
        t = self.training
        if isinstance(data, dict) and shuffle:  # multi-task training: one task per batch, drawn by the sampler
            if t.group_by_length:
                raise ValueError("training.group_by_length: not supported with multi-task data (a dict of data "
                                 "sets). Fix: set group_by_length: false")
            return task_loader(data, batch_size, collate_fn, t.task_sampler, t.task_sampling_tau, t.task_weights,
                               seed=t.seed, num_replicas=self.accelerator.num_processes)
        if isinstance(data, dict):  # multi-task evaluation: one loader per task
            return {task: DataLoader(d, batch_size=batch_size, collate_fn=TaskCollator(collate_fn, task))
                    for task, d in data.items()}
        # A loader without its own generator draws its worker seed from the global RNG at every
        # iter(); that would shift dropout masks after a resume, so every loader gets one.
        generator = torch.Generator().manual_seed(self.training.seed)
        if shuffle and self.training.group_by_length:
            sampler = LengthGroupedSampler(_lengths(data), batch_size, seed=self.training.seed)
            return DataLoader(data, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                              generator=generator)
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=generator)

    # ------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Probe one batch through every model: checks shapes, builds projections, then prepares."""
        acc = self.accelerator
        device = acc.device
        for runner in self.teachers.values():  # replicated, sharded (zero3 / fsdp) or offloaded; cached: none
            if runner.model is not None:
                runner.model = place_teacher(acc, runner.model, self.training.teacher_placement)
        self.module.student.to(device)
        prepare_student_config(acc, self.module.student)  # DeepSpeed `auto` sizes from the student
        for probe in self.probes or [next(iter(self.train_loader))]:
            probe = self._prepare_batch(send_to_device(probe, device), None)
            with torch.no_grad():
                student_view = self.module.student_view(probe)
            teacher_views = {role: self.teachers[role](probe) for role in self.strategy.teachers_for(probe)}
            self.strategy.setup(student_view, teacher_views)
        self.module.to(device)

        t = self.training
        optimizer = build_optimizer(self.module, t, self._given_optimizer)
        batches_per_epoch = len(self.train_loader)
        steps_per_epoch = math.ceil(batches_per_epoch / acc.num_processes / t.gradient_accumulation_steps)
        self.total_steps = t.max_steps or max(1, math.ceil(t.num_epochs * steps_per_epoch))
        if self.probes is not None and getattr(acc, "ddp_handler", None) is None:
            # Multi-task: each step uses one task's head and projections; DDP must not wait for the others'.
            acc.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        self.module, self.optimizer, self.train_loader = acc.prepare(self.module, optimizer, self.train_loader)
        if isinstance(self.eval_loader, dict):
            self.eval_loader = {task: acc.prepare(loader) for task, loader in self.eval_loader.items()}
        elif self.eval_loader is not None:
            self.eval_loader = acc.prepare(self.eval_loader)
        # Stepped once per optimiser step by the loop itself (not prepared), so the schedule
        # is the same whatever the number of processes.
        self.lr_scheduler = build_lr_scheduler(self.optimizer, t, self.total_steps, self._given_lr_scheduler)
        # Saved by engine/checkpoint.py as JSON; not registered with Accelerate, which would pickle it.

    def train(self) -> dict:
        """Run training to the end; returns final metrics, the export folder and the loss history."""
        acc, t = self.accelerator, self.training
        self._begin()
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, desc="distill",
                   disable=not (t.progress_bar and acc.is_local_main_process), dynamic_ncols=True)
        clip_params = [p for p in self.module.parameters() if p.requires_grad]
        sums, counts = {}, {}  # the loss terms of the current window: their sums and counts, per name
        # Strategies whose loss is a sum over items (tokens; loss_items is not None) are normalised by the
        # items of the whole accumulation window on all ranks, so uneven micro-batches equal one big batch.
        deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        window_items = 0
        start = time.perf_counter()
        while self.state.global_step < self.total_steps and not self.should_stop:
            self.train_loader.set_epoch(self.state.epoch)
            loader = self.train_loader
            if self.state.batches_in_epoch:
                loader = acc.skip_first_batches(self.train_loader, self.state.batches_in_epoch)
            self.module.train()
            for batch in loader:
                progress = self.state.global_step / self.total_steps
                with acc.accumulate(self.module):
                    with acc.autocast():
                        batch = self._prepare_batch(batch, (t.seed, self.state.epoch, self.state.batches_in_epoch))
                        teachers = {role: self.teachers[role](batch) for role in self.strategy.teachers_for(batch)}
                    loss, terms, _ = self.module(batch, teachers, progress)
                    self._check_finite(loss, terms)
                    items = self.strategy.loss_items(batch)
                    per_item = items is not None
                    # DeepSpeed steps inside backward: the loss is scaled before it (engine/normalise.py)
                    acc.backward(loss * deepspeed_scale(acc, items, self.distillation.strategy)
                                 if per_item and deepspeed else loss)
                    if per_item:
                        window_items += items
                        loss = loss.detach() / max(items, 1)  # logged as a per-item mean
                    if acc.sync_gradients and per_item and not deepspeed:
                        normalise_gradients(acc, self.module, window_items)
                        window_items = 0
                    if acc.sync_gradients and t.max_grad_norm:
                        acc.clip_grad_norm_(clip_params, t.max_grad_norm)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                self.state.batches_in_epoch += 1
                for name, value in {"loss": loss.detach(), **terms}.items():  # per-task terms: only some batches
                    sums[name] = sums.get(name, 0.0) + float(value)
                    counts[name] = counts.get(name, 0) + 1
                if not acc.sync_gradients:
                    continue
                step = self._end_step(sums, counts, bar)
                if step >= self.total_steps or self.should_stop:
                    break
            else:  # the epoch ran out
                self.state.epoch += 1
                self.state.batches_in_epoch = 0
                if (self.eval_loader is not None and t.eval_every_epochs
                        and self.state.epoch % t.eval_every_epochs == 0 and not t.eval_every_steps):
                    self._evaluate_and_track(self.state.global_step)
        bar.close()
        return self._finish(time.perf_counter() - start)

    def _end_step(self, sums: dict, counts: dict, bar) -> int:
        """After an optimiser step: LR schedule, logs (history, trackers, bar, callbacks), evaluation and
        checkpoint when due. ``sums``/``counts`` (the window's loss terms) are emptied. Returns the step."""
        acc, t = self.accelerator, self.training
        self.lr_scheduler.step()
        self.state.global_step += 1
        step = self.state.global_step
        logs = {f"train/{k}": v / counts[k] for k, v in sums.items()}
        if acc.num_processes > 1:  # the loss of the global batch, not rank 0's share
            logs["train/loss"] = acc.reduce(torch.tensor(logs["train/loss"], device=acc.device), "mean").item()
        logs["train/lr"] = self.lr_scheduler.get_last_lr()[0]
        sums.clear()
        counts.clear()
        self.state.history.append({"step": step, **logs})
        if step % t.log_every_steps == 0 or step == 1:
            self._log(logs, step)
        bar.update(1)
        bar.set_postfix(loss=f"{logs['train/loss']:.4f}")
        for cb in self.callbacks:
            cb.on_step_end(self, step, logs)
        if self.eval_loader is not None and t.eval_every_steps and step % t.eval_every_steps == 0:
            self._evaluate_and_track(step)
        if t.save_every_steps and step % t.save_every_steps == 0:
            self.save_checkpoint()
        return step

    def _begin(self) -> None:
        """Claim the output folder, record the run (config.yaml), set up, resume, start the trackers."""
        acc, t = self.accelerator, self.training
        self.run_record = claim_output_dir(acc, t, self.distillation)  # the folder is this run's, or refused
        if acc.is_main_process:
            (Path(t.output_dir) / CONFIG_FILE).write_text(config_yaml(self.run_config, self.run_info))
        self._setup()
        resume = resolve_resume(acc, t.resume_from, t.output_dir, self.run_record)
        if resume is not None:
            self.state = TrainState(**load_checkpoint(acc, resume, model=self.module, optimizer=self.optimizer,
                                                      scheduler=self.lr_scheduler))
            acc.print(f"resumed from {resume} at step {self.state.global_step}")
        self.state.wandb_run_id = start_trackers(acc, t, self.run_config, self.run_info["versions"],
                                                 self.state.wandb_run_id)
        for cb in self.callbacks:
            cb.on_train_begin(self)

    def _finish(self, elapsed: float) -> dict:
        """Evaluate the final weights (once), score the test data, export ``final/`` with its card, report."""
        acc, t = self.accelerator, self.training
        metrics = {}
        if self.eval_loader is not None:  # the final weights are evaluated, and compete for best/, once
            metrics = self._last_eval[1] if self._last_eval[0] == self.state.global_step else \
                self._evaluate_and_track(self.state.global_step)
        test = self.evaluate(self.test_data) if self.test_data is not None else None
        export_dir = export_student(acc, self.module, Path(t.output_dir) / "final", self.tokenizer,
                                    self._export_files({"eval": metrics, "test": test}, self.state.global_step))
        result = {"global_step": self.state.global_step, "eval": metrics, "export_dir": str(export_dir),
                  "best_metric": self.state.best_metric, "best_step": self.state.best_step,
                  "train_seconds": elapsed, "history": self.state.history}
        if test is not None:
            result["test"] = test
        self.module.eval()  # training is over: whoever uses the model next gets it without dropout
        if acc.is_main_process:
            (Path(t.output_dir) / "result.json").write_text(json.dumps(
                {k: v for k, v in result.items() if k != "history"}, indent=2))
        for cb in self.callbacks:
            cb.on_train_end(self, result)
        finish_trackers(acc)
        return result

    def _log(self, logs: dict, step: int) -> None:
        """Send ``logs`` to the trackers and the callbacks' ``on_log``."""
        if self.training.trackers:
            self.accelerator.log(logs, step=step)
        for cb in self.callbacks:
            cb.on_log(self, step, logs)

    def _export_files(self, metrics: dict, step: int) -> dict:
        """The files every export carries beside the student: its model card and the run's config.yaml."""
        student = self.accelerator.unwrap_model(self.module).student
        card = model_card(self.run_config, self.run_info, {k: v for k, v in metrics.items() if v}, step=step,
                          tokenizer=self.tokenizer is not None, **card_classes(student))
        return {"README.md": card, CONFIG_FILE: config_yaml(self.run_config, self.run_info)}

    # ------------------------------------------------------------------------------------
    def _prepare_batch(self, batch: dict, key) -> dict:
        """The strategy's ``prepare_batch`` hook: checks, or a new batch (e.g. on-policy samples), before any
        model runs. ``key`` names the micro-batch alike on every rank (None for the probe)."""
        student = self.accelerator.unwrap_model(self.module).student
        return self.strategy.prepare_batch(batch, student, {role: r.model for role, r in self.teachers.items()}, key)

    def _check_finite(self, loss: torch.Tensor, terms: dict) -> None:
        bad = not bool(torch.isfinite(loss.detach()))
        if self.accelerator.num_processes > 1:  # every rank must stop together, or the others hang
            flag = torch.tensor([float(bad)], device=loss.device)
            bad = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        if not bad:
            return
        culprits = [name for name, v in terms.items() if not torch.isfinite(v).all()] or ["loss"]
        last = newest_intact_checkpoint(self.training.output_dir, getattr(self, "run_record", None))
        raise NonFiniteLossError(
            f"non-finite loss at step {self.state.global_step + 1} (epoch {self.state.epoch}): term(s) "
            f"{', '.join(culprits)} = {[float(terms.get(n, loss)) for n in culprits]}. Training stopped; "
            f"newest intact checkpoint: {last or 'none saved yet'}. Fix: lower training.learning_rate, set "
            "training.max_grad_norm, lower that term's weight, or check the inputs of that step")

    def _evaluate_and_track(self, step: int) -> dict:
        """Evaluate, log, call the callbacks, and export ``best/`` when the metric improved."""
        metrics = self.evaluate()
        self._last_eval = (step, metrics)
        self.state.last_eval = {"step": step, **metrics}
        acc, t = self.accelerator, self.training
        self._log({f"eval/{k}": v for k, v in metrics.items()}, step)
        logger.info(f"step {step}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        for cb in self.callbacks:
            cb.on_evaluate(self, step, metrics)
        if t.metric_for_best:
            key, greater = t.metric_for_best, t.greater_is_better
        else:  # the task's headline metric, in its own direction (perplexity: lower is better)
            key = self.task.metric_name if self.task.metric_name in metrics else next(iter(metrics), None)
            greater = self.task.greater_is_better if key == self.task.metric_name else t.greater_is_better
        value = metrics.get(key) if key else None
        if value is not None and not math.isnan(value):
            best = self.state.best_metric
            better = best is None or (value > best if greater else value < best)
            if better:
                self.state.best_metric, self.state.best_step = value, step
                self.state.best_checkpoint = str(export_student(acc, self.module, Path(t.output_dir) / "best",
                                                                self.tokenizer, self._export_files({"eval": metrics},
                                                                                                   step)))
        return metrics

    def evaluate(self, loader: Union[Dataset, DataLoader, dict, None] = None) -> dict:
        """Metrics of the student on ``loader`` (default: the eval data), gathered across ranks.

        ``loader`` may also be a ``Dataset`` (batched with the trainer's ``collate_fn``), or for
        multi-task models ``{task: Dataset}`` (each batch tagged with its task, as ``eval_data``).
        """
        loader = loader or self.eval_loader
        if isinstance(loader, dict) and not all(isinstance(d, DataLoader) for d in loader.values()):
            loader = {task: self.accelerator.prepare(task_loader) for task, task_loader in self._loader(
                loader, self.training.eval_batch_size, shuffle=False, collate_fn=self.collate_fn).items()}
        if loader is not None and not isinstance(loader, (DataLoader, dict)):
            loader = self.accelerator.prepare(self._loader(loader, self.training.eval_batch_size, shuffle=False,
                                                           collate_fn=self.collate_fn))
        if isinstance(loader, dict):  # multi-task: each task's metrics, then their mean over tasks
            per_task = {task: self.evaluate(task_loader) for task, task_loader in loader.items()}
            names = next(iter(per_task.values()))
            means = {k: float(np.mean([m[k] for m in per_task.values()])) for k in names}
            return {**means, **{f"{task}/{k}": v for task, m in per_task.items() for k, v in m.items()}}
        acc = self.accelerator
        model = self.module
        was_training = model.training
        model.eval()
        preds, labels = [], []
        inner = acc.unwrap_model(model)
        with torch.no_grad():
            for batch in loader:
                view = inner.student_view(batch, training=False)
                pred = inner.task.predictions(view)
                gold = inner.task.gold(model_inputs(batch, "student"))
                if gold is None:
                    raise ValueError("evaluation data has no `labels`; add them or pass eval_data=None")
                if pred.dim() > 1:
                    pred = acc.pad_across_processes(pred, dim=1, pad_index=-100)
                    gold = acc.pad_across_processes(gold, dim=1, pad_index=-100)
                pred, gold = acc.gather_for_metrics((pred, gold))
                preds.append(pred.cpu().numpy())
                labels.append(gold.cpu().numpy())
        model.train(was_training)
        return self.metric_fn(_concat_padded(preds), _concat_padded(labels))

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` (see :mod:`distill_toolkit.engine.checkpoint`), with the student's
        config and tokenizer files and the run's config.yaml, so :func:`~distill_toolkit.engine.export.
        export_checkpoint` can export it; then call the callbacks' ``on_save``. Collective."""
        acc = self.accelerator
        extras = checkpoint_extras(acc, self.module, self.tokenizer, {CONFIG_FILE: config_yaml(self.run_config,
                                                                                               self.run_info)})
        path = save_checkpoint(acc, self.training.output_dir, self.state.global_step, self.state.__dict__.copy(),
                               self.training.save_total_limit, model=self.module, optimizer=self.optimizer,
                               scheduler=self.lr_scheduler, run=getattr(self, "run_record", None), extras=extras)
        for cb in self.callbacks:
            cb.on_save(self, self.state.global_step, path)
        return path


def _lengths(data) -> list[int]:
    """Token counts of a data set's examples, for length grouping."""
    column = getattr(data, "column_names", None)
    if column is not None and "input_ids" in column:
        return [len(ids) for ids in data["input_ids"]]
    try:
        return [len(data[i]["input_ids"]) for i in range(len(data))]
    except (KeyError, TypeError) as err:
        raise ValueError("training.group_by_length needs examples with an `input_ids` list. Fix: tokenize the data "
                         "first, or set group_by_length: false") from err


def _concat_padded(arrays: list) -> np.ndarray:
    if arrays[0].ndim == 1:
        return np.concatenate(arrays)
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=-100)
              for a in arrays]
    return np.concatenate(padded)

