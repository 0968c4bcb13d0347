"""``DistillationTrainer``: the toolkit's distillation inside a ``transformers.Trainer``.

For users whose runs already live in the Hugging Face ``Trainer`` (its ``TrainingArguments``,
callbacks, ``report_to`` integrations, Hub pushes): the loss is computed by the toolkit's strategies
(:func:`~distill_toolkit.strategies.build_strategy`: KD, hard labels, hook-captured intermediate
matches with learnable projections, several teachers, causal-LM KD), everything else about training
(optimiser, schedule, accumulation, clipping, mixed precision, DDP/DeepSpeed/FSDP, checkpoints,
logging) is the ``Trainer``'s own. See ``docs/hf_trainer.md``.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from accelerate.utils import DistributedType, gather_object
from torch import nn
from transformers import Trainer
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_pt_utils import nested_detach
from transformers.trainer_utils import has_length
from transformers.utils import find_labels

from distill_toolkit.batch import BOOKKEEPING_KEYS, model_inputs
from distill_toolkit.config import DistillationConfig
from distill_toolkit.data.cache import TeacherCache
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.features import Adaptor, unwrap
from distill_toolkit.hf.checkpoint import load_strategy, load_student, save_folder
from distill_toolkit.hf.teachers import gathered, partitioned_parameters, place_teacher
from distill_toolkit.strategies import Strategy, build_strategy
from distill_toolkit.teachers import TeacherRunner, named_teachers
from distill_toolkit.teachers.placement import fill_deepspeed_auto


class StudentWithStrategy(DistillationModule):
    """The model the ``Trainer`` trains: the student and the strategy's parameters (projections) in one
    ``nn.Module``, so DDP/DeepSpeed/FSDP, the optimiser and the checkpoints see both. State dict keys
    are ``student.*`` and ``strategy.*``; ``forward(batch, teachers, progress) -> (loss, terms, view)``."""

    def activation_checkpointing_enable(self, **kwargs) -> None:
        """``TrainingArguments(activation_checkpointing=True)``: checkpoint the student's activations."""
        enable = getattr(self.student, "activation_checkpointing_enable", None)
        if enable is None:
            enable = self.student.gradient_checkpointing_enable
        enable(**kwargs)


class DistillationTrainer(Trainer):
    """A ``transformers.Trainer`` that distils ``teacher_model`` into ``model`` with a toolkit strategy.

    Args:
        model: the student (a Hugging Face model or any ``nn.Module`` called as ``model(**inputs)``).
            ``model_init`` is not supported.
        teacher_model: the frozen teacher (``nn.Module`` or a function building it); several as a list
            or ``{role: model}`` dict (``strategy: multi_teacher``); ``None`` for ``strategy: supervised``.
            It is frozen, kept in eval mode, placed on ``args.device`` (or, under DeepSpeed ZeRO-3, in a
            ZeRO-3 inference engine), and never wrapped in DDP.
        args: the ``TrainingArguments``: optimiser (``optim``, ``learning_rate``, ``adam_epsilon``,
            ``weight_decay``), schedule, accumulation, clipping, precision, checkpoints, ``report_to``.
        distillation: a :class:`~distill_toolkit.config.DistillationConfig` (strategy, temperature,
            weights, matches, projections), validated here before any model is touched.
        projection_learning_rate: the learning rate of the strategy's parameters (projections); default:
            ``args.projection_learning_rate`` if your ``TrainingArguments`` subclass has one, else
            ``args.learning_rate``. They follow the same schedule and weight-decay rule as the student.
        task: a registered task name (default ``distillation.task``; ``auto`` reads it from the student).
        student_adaptor, teacher_adaptor: optional ``(inputs, outputs) -> dict`` for models whose outputs
            are not Hugging Face's (see :class:`distill_toolkit.Trainer`).
        **kwargs: the other ``Trainer`` arguments (``train_dataset``, ``eval_dataset``, ``data_collator``,
            ``processing_class``, ``compute_metrics``, ``callbacks``, ``optimizers`` ...).

    ``trainer.model`` is a :class:`StudentWithStrategy`; ``trainer.student`` the student itself.
    ``save_model`` writes the student alone (loadable with ``from_pretrained``); checkpoints also hold
    the projections (``distillation_strategy.safetensors``), so ``train(resume_from_checkpoint=...)``
    continues exactly. Each named loss term (``kd``, ``hard_label``, ``hidden_mse/S2-T4`` ...) is
    logged with ``loss`` through ``report_to`` (and ``eval_<term>`` at evaluation).
    """

    def __init__(self, model: Optional[nn.Module] = None, teacher_model: Union[nn.Module, list, dict, None] = None,
                 args=None, distillation: Optional[DistillationConfig] = None, *,
                 projection_learning_rate: Optional[float] = None, task: Optional[str] = None,
                 student_adaptor: Optional[Adaptor] = None, teacher_adaptor: Union[Adaptor, dict, None] = None,
                 **kwargs):
        strategy = _check_arguments(model, distillation, kwargs)
        given = _teachers(teacher_model, strategy, distillation)
        task = task or distillation.task
        super().__init__(model=StudentWithStrategy(model, strategy, task, student_adaptor), args=args, **kwargs)
        if self.args.n_gpu > 1:
            raise ValueError("DistillationTrainer does not run under torch.nn.DataParallel (several GPUs in one "
                             "process). Fix: launch one process per GPU (accelerate launch / torchrun): DDP")
        if self.args.label_smoothing_factor:
            raise ValueError("TrainingArguments.label_smoothing_factor: the hard-label term is the student's own "
                             "loss, which the Trainer's label smoother does not reach. Fix: set it to 0")
        self.distillation, self.strategy = distillation, strategy
        self.projection_learning_rate = (projection_learning_rate or getattr(self.args, "projection_learning_rate",
                                                                             None) or self.args.learning_rate)
        adaptors = teacher_adaptor if isinstance(teacher_adaptor, dict) else {}
        self.teachers: dict[str, TeacherRunner] = {
            role: TeacherRunner(given[role], role, strategy.feature_keys()[role], task,
                                adaptors.get(role, None if adaptors else teacher_adaptor), strategy)
            for role in strategy.teacher_roles}
        if self.args.label_names is None:  # the student's label arguments, not the wrapper's
            self.label_names = find_labels(type(unwrap(model)))
        self.loss_is_scaled_for_ga = False  # a mean per micro-batch; sums over items are rescaled below
        self._ready = False
        self._terms: dict[str, dict] = {"train": {}, "eval": {}}
        self._pending_terms: dict = {}
        self._window_items = 0
        self._item_mean: Optional[torch.Tensor] = None
        self._key = (-1, 0)
        self._in_checkpoint = False

    # ---- the models --------------------------------------------------------------------------
    @property
    def student(self) -> nn.Module:
        """The student being trained (what ``save_model`` writes)."""
        return self._module.student

    @property
    def _module(self) -> StudentWithStrategy:
        return unwrap(self.accelerator.unwrap_model(self.model))

    def _teacher_models(self) -> dict:
        return {role: runner.model for role, runner in self.teachers.items()}

    def _setup_distillation(self) -> None:
        """Place the teachers, then run one probe batch through every model: shape checks and the
        strategy's projections (``strategy.setup``), built before the optimiser so it holds them.

        The projections are initialised from ``args.seed`` inside a forked RNG, so the run's random
        streams (data order, dropout) are the same with or without them."""
        if self._ready:
            return
        for runner in self.teachers.values():
            if runner.model is not None:
                runner.model = place_teacher(self.accelerator, runner.model, self.args.device)
        module = self._module
        if self.is_deepspeed_enabled:
            self._check_deepspeed_config(module.student)
        partitioned = partitioned_parameters(module.student)  # a student loaded straight into ZeRO-3 partitions
        if not partitioned and getattr(module.student, "hf_device_map", None) is None:
            module.to(self.args.device)
        probe = self.strategy.prepare_batch(self._probe_batch(), module.student, self._teacher_models(), None)
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
            torch.manual_seed(self.args.seed)
            with torch.no_grad(), gathered(partitioned):
                student_view = module.student_view(probe)
            with self.accelerator.autocast():
                teacher_views = {role: self.teachers[role](probe) for role in self.strategy.teachers_for(probe)}
            self.strategy.setup(student_view, teacher_views)
        module.strategy.to(self.args.device)
        self._ready = True

    def _check_deepspeed_config(self, student: nn.Module) -> None:
        """Fill the student's ``auto`` bucket sizes (the wrapper has no ``config.hidden_size``); refuse a
        DeepSpeed ``optimizer`` section that would give the projections the student's learning rate."""
        plugin = self.accelerator.state.deepspeed_plugin
        fill_deepspeed_auto(plugin, student)
        if "optimizer" in plugin.deepspeed_config and self.projection_learning_rate != self.args.learning_rate:
            raise ValueError("the DeepSpeed config has an `optimizer` section: DeepSpeed would build the optimiser "
                             "with one learning rate, and the projections would not get projection_learning_rate "
                             f"({self.projection_learning_rate}). Fix: remove the `optimizer` section (the Trainer "
                             "then builds it from TrainingArguments), or drop projection_learning_rate")

    def _probe_batch(self) -> dict:
        """The first per-device batch of the training (else evaluation) data, collated as the Trainer
        collates, without drawing from any random generator."""
        data = self.train_dataset if self.train_dataset is not None else self.eval_dataset
        if isinstance(data, dict):
            data = next(iter(data.values()))
        if data is None:
            raise ValueError("DistillationTrainer needs a train_dataset (or an eval_dataset) to probe the models "
                             "before the first step (shape checks, projection sizes). Fix: pass train_dataset=...")
        collate = self.data_collator
        if hasattr(data, "column_names") and hasattr(data, "remove_columns"):  # a datasets.Dataset
            data = self._remove_unused_columns(data, description="training")
        else:
            collate = self._get_collator_with_removed_columns(collate, description="training")
        size = self._train_batch_size
        if has_length(data) and hasattr(data, "__getitem__"):
            examples = [data[i] for i in range(min(size, len(data)))]
        else:
            examples = list(itertools.islice(iter(data), size))
        return self._prepare_inputs(dict(collate(examples)))

    def _set_signature_columns_if_needed(self) -> None:
        """Columns the data may keep: the student's and teachers' inputs, labels, the batch contract's keys."""
        if self._signature_columns is not None:
            return
        models = [self._module.student] + [r.model for r in self.teachers.values() if r.model is not None]
        columns = [name for m in models for name in _forward_parameters(unwrap(m))]
        columns += ["label", "label_ids", *self.label_names, *BOOKKEEPING_KEYS]
        self._signature_columns = list(dict.fromkeys(columns))

    # ---- optimiser ---------------------------------------------------------------------------
    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The optimiser of ``args.optim`` over the student and the strategy's parameters.

        The student's parameters get ``args.learning_rate``; the strategy's groups
        (``strategy.param_groups(projection_learning_rate)``) their own. Both follow the Trainer's
        weight-decay rule (no decay on biases and norms, see ``get_decay_parameter_names``).
        """
        self._setup_distillation()
        if self.optimizer is not None:
            self._check_given_optimizer()
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
            raise ValueError(f"TrainingArguments.optim={self.args.optim!r} builds its own parameter groups, so the "
                             "projections could not get their learning rate. Fix: use an optimiser that takes "
                             "parameter groups (e.g. optim='adamw_torch'), or pass optimizers=(optimizer, None)")
        self.optimizer = optimizer_cls(self._param_groups(opt_model), **kwargs)
        return super().create_optimizer(model)  # the optimiser is set: only Trainer's wrapping is left

    def _param_groups(self, opt_model: nn.Module) -> list[dict]:
        decay = set(self.get_decay_parameter_names(opt_model))
        names = {id(p): n for n, p in opt_model.named_parameters()}
        wd = self.args.weight_decay

        def split(params, extra: dict) -> list[dict]:
            on = [p for p in params if p.requires_grad and names.get(id(p)) in decay]
            off = [p for p in params if p.requires_grad and names.get(id(p)) not in decay]
            return [{**extra, "params": ps, "weight_decay": w} for ps, w in ((on, wd), (off, 0.0)) if ps]

        strategy_groups = self._module.strategy.param_groups(self.projection_learning_rate)
        own = {id(p) for g in strategy_groups for p in g["params"]}
        if own - set(names):
            raise ValueError("the strategy's parameters (projections) are not among the model's parameters here "
                             "(FSDP v1 flattens them). Fix: use FSDP2 (fsdp_version: 2), DeepSpeed or DDP")
        groups = split([p for p in opt_model.parameters() if id(p) not in own], {})
        for group in strategy_groups:
            groups += split(group["params"], {k: v for k, v in group.items() if k != "params"})
        return groups

    def _check_given_optimizer(self) -> None:
        held = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        left = [n for n, p in self._module.strategy.named_parameters() if p.requires_grad and id(p) not in held]
        if left:
            raise ValueError(f"the optimizer passed in optimizers=(...) does not hold the strategy's projections "
                             f"({', '.join(left[:3])}{' ...' if len(left) > 3 else ''}), built on a probe batch "
                             "when training starts; they would never train. Fix: let the Trainer build the "
                             "optimizer (optim=..., projection_learning_rate=...), or subclass create_optimizer")

    # ---- training --------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: Union[str, bool, None] = None, trial=None,
              ignore_keys_for_eval: Optional[list] = None, **kwargs):
        """``Trainer.train``, after the probe batch has built the projections (so a checkpoint can
        restore them and the optimiser can hold them)."""
        self._setup_distillation()
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict, return_outputs: bool = False,
                     num_items_in_batch: Any = None):
        """The strategy's loss on one micro-batch: teachers under ``inference_mode`` (and autocast), then
        the student and the strategy inside the prepared model's forward. Returns ``(loss, student view)``
        with ``return_outputs``. A per-item sum (``strategy.loss_items``) is normalised over the items
        of the whole accumulation window on every rank, as the toolkit's loop does."""
        batch = dict(inputs)
        training = model.training
        module = self._module
        with self.accelerator.autocast():
            batch = self.strategy.prepare_batch(batch, module.student, self._teacher_models(),
                                                self._micro_key() if training else None)
            teachers = {role: self.teachers[role](batch) for role in self.strategy.teachers_for(batch)}
        progress = self.state.global_step / max(self.state.max_steps or 1, 1)
        loss, terms, view = model(batch, teachers, progress)
        items = self.strategy.loss_items(batch)
        mean = loss.detach() if items is None else loss.detach() / max(items, 1)
        if items is not None and training:
            self._window_items += items
            self._item_mean = mean
            if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
                loss = loss * self._deepspeed_scale(items)
        elif items is not None:
            loss = loss / max(items, 1)  # evaluation reports the per-item mean
        self._record_terms("train" if training else "eval", terms)
        return (loss, view) if return_outputs else loss

    def training_step(self, model: nn.Module, inputs: dict, num_items_in_batch: Any = None) -> torch.Tensor:
        """``Trainer.training_step``; for per-item losses, gradients are rescaled once the window is complete."""
        self._item_mean = None
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._item_mean is None:
            return loss
        if self.accelerator.sync_gradients and self.accelerator.distributed_type != DistributedType.DEEPSPEED:
            self._normalise_gradients(model)
        return self._item_mean / self.current_gradient_accumulation_steps  # logged as a per-item mean

    def _micro_key(self) -> tuple:
        """Names the micro-batch alike on every rank and after a resume: ``(seed, step, index in window)``."""
        step = self.state.global_step
        index = self._key[1] + 1 if self._key[0] == step else 0
        self._key = (step, index)
        return self.args.seed, step, index

    def _normalise_gradients(self, model: nn.Module) -> None:
        """Summed-loss gradients -> the mean over every item of the window on every rank (the Trainer
        divided each micro-batch by the window's length and DDP averaged over ranks)."""
        total = torch.tensor(float(self._window_items), device=self.args.device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, "sum")
        self._window_items = 0
        factor = self.current_gradient_accumulation_steps * self.accelerator.num_processes / max(float(total), 1.0)
        for param in model.parameters():
            if param.grad is not None:
                param.grad.mul_(factor)

    def _deepspeed_scale(self, items: int) -> float:
        """Under DeepSpeed (which steps inside backward), the factor making a summed loss the mean over the
        items of all ranks; known before backward only with one micro-batch per step."""
        if self.args.gradient_accumulation_steps > 1:
            raise NotImplementedError(
                f"gradient_accumulation_steps > 1: the per-token loss of strategy {self.distillation.strategy!r} "
                "cannot be normalised over an accumulation window under DeepSpeed, whose engine steps inside "
                "backward. Fix: gradient_accumulation_steps=1 with a larger per_device_train_batch_size, or DDP")
        total = torch.tensor(float(items), device=self.args.device)
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, "sum")
        self._window_items = 0
        return self.accelerator.num_processes / max(float(total), 1.0)

    # ---- logging ---------------------------------------------------------------------------
    def _record_terms(self, kind: str, terms: dict) -> None:
        sums = self._terms[kind]
        for name, value in terms.items():
            total, count = sums.get(name, (0.0, 0))
            sums[name] = (total + value.detach().float(), count + 1)

    def _pop_terms(self, kind: str, prefix: str = "") -> dict:
        """The mean of each recorded term since the last call, over every micro-batch of every rank."""
        local = {name: (float(total), count) for name, (total, count) in self._terms[kind].items()}
        self._terms[kind] = {}
        if self.accelerator.num_processes > 1:  # all ranks call this together (logging and eval are collective)
            merged: dict = {}
            for part in gather_object([local]):
                for name, (total, count) in part.items():
                    old = merged.get(name, (0.0, 0))
                    merged[name] = (old[0] + total, old[1] + count)
            local = merged
        return {f"{prefix}{name}": total / count for name, (total, count) in local.items() if count}

    def _maybe_log_save_evaluate(self, *args, **kwargs) -> None:
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            # reduced over ranks here, where the Trainer gathers its own loss (every rank comes here)
            self._pending_terms = self._pop_terms("train")
        super()._maybe_log_save_evaluate(*args, **kwargs)

    def log(self, logs: dict, start_time: Optional[float] = None) -> None:
        """``Trainer.log``, with the mean of each loss term since the last log beside a training ``loss``."""
        if "loss" in logs and self._pending_terms:
            logs, self._pending_terms = {**logs, **self._pending_terms}, {}
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------------
    def evaluation_loop(self, dataloader, description: str, prediction_loss_only: Optional[bool] = None,
                        ignore_keys: Optional[list] = None, metric_key_prefix: str = "eval"):
        """``Trainer.evaluation_loop``; adds ``<prefix>_<term>`` metrics (each loss term's mean)."""
        self._setup_distillation()
        self._terms["eval"] = {}
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        output.metrics.update(self._pop_terms("eval", prefix=f"{metric_key_prefix}_"))
        return output

    def prediction_step(self, model: nn.Module, inputs: dict, prediction_loss_only: bool,
                        ignore_keys: Optional[list] = None):
        """``(loss, logits, labels)``: the distillation loss when the batch has labels (or no term needs
        them), and the student's outputs as the Trainer reads them for ``compute_metrics``."""
        inputs = self._prepare_inputs(inputs)
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None for k in self.label_names)
        labels = nested_detach(tuple(inputs.get(k) for k in self.label_names)) if has_labels else None
        if labels is not None and len(labels) == 1:
            labels = labels[0]
        student = self._module.student
        if ignore_keys is None:
            ignore_keys = getattr(student.config, "keys_to_ignore_at_inference", ["cache"]) \
                if hasattr(student, "config") else []
        with torch.no_grad(), self.compute_loss_context_manager():
            if has_labels or self.distillation.hard_label_weight == 0:
                loss, view = self.compute_loss(model, inputs, return_outputs=True)
                loss, outputs, logits = loss.detach().mean(), view.raw, tuple(view.logits)
            else:
                loss, outputs = None, student(**model_inputs(dict(inputs), "student"))
                logits = ()
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, Mapping):
            logits = tuple(v for k, v in outputs.items() if k not in [*ignore_keys, "loss"])
        logits = nested_detach(logits)
        return loss, (logits[0] if len(logits) == 1 else logits), labels

    # ---- checkpoints -----------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        self._in_checkpoint = True  # checkpoints also hold the projections; save_model() writes the student alone
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._in_checkpoint = False

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """Write the student with ``save_pretrained`` (plain Transformers loads it), the processing class and
        the arguments as JSON; a checkpoint holds the student by its ``state_dict`` names and the strategy's
        parameters (``STRATEGY_WEIGHTS_NAME``), see :mod:`distill_toolkit.hf.checkpoint`."""
        if not self.args.should_save:
            return
        module = self._module
        save_folder(module.student, module.state_dict() if state_dict is None else state_dict,
                    output_dir if output_dir is not None else self.args.output_dir, checkpoint=self._in_checkpoint,
                    args=self.args, processing_class=self.processing_class)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Optional[nn.Module] = None) -> None:
        """Restore the student and the strategy's parameters from a checkpoint of this trainer."""
        if self.is_fsdp_enabled:  # FSDP checkpoints hold the whole wrapped model in FSDP's own format
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        module = self._module if model is None else unwrap(self.accelerator.unwrap_model(model))
        load_student(module.student, resume_from_checkpoint)
        load_strategy(module.strategy, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)


# ---- helpers --------------------------------------------------------------------------------
def _check_arguments(model, distillation, kwargs: dict) -> Strategy:
    if model is None or kwargs.get("model_init") is not None:
        raise ValueError("DistillationTrainer needs the student as model=...; model_init is not supported "
                         "(the projections are built for one student)")
    if not isinstance(distillation, DistillationConfig):
        raise TypeError("DistillationTrainer needs distillation=DistillationConfig(...) (what the student learns "
                        f"from), got {type(distillation).__name__}")
    if kwargs.get("compute_loss_func") is not None:
        raise ValueError("compute_loss_func: the loss is the distillation strategy's. Fix: remove it, or register "
                         "a custom strategy (distill_toolkit.strategies.register_strategy)")
    strategy = build_strategy(distillation)  # checks the distillation config first
    if distillation.strategy == "multi_task":
        raise NotImplementedError("strategy 'multi_task' needs the toolkit's task sampler (one task per batch, one "
                                  "probe per task). Fix: use distill_toolkit.Trainer with train_data={task: dataset}")
    return strategy


def _teachers(teacher_model, strategy: Strategy, distillation: DistillationConfig) -> dict:
    """The teachers by role, built when given as functions, renamed to the strategy's role when one."""
    given = named_teachers(teacher_model)
    for role, teacher in given.items():
        if isinstance(teacher, TeacherCache):
            raise TypeError(f"teacher {role!r}: a TeacherCache is read by the toolkit's collator, which "
                            "DistillationTrainer does not use. Fix: pass the teacher model, or use distill_toolkit."
                            "Trainer with teacher=TeacherCache(...)")
    if strategy.teacher_roles and not given:
        raise ValueError(f"strategy {distillation.strategy!r} needs a teacher. Fix: pass teacher_model=..., or use "
                         "strategy 'supervised'")
    strategy.bind(list(given), None)
    given = {role: t if isinstance(t, nn.Module) else t() for role, t in given.items()}
    if len(given) == len(strategy.teacher_roles) == 1:  # one teacher, whatever its name
        given = {strategy.teacher_roles[0]: next(iter(given.values()))}
    return given


def _forward_parameters(model: nn.Module) -> list[str]:
    return list(inspect.signature(model.forward).parameters)
