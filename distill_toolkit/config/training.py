"""How the one loop trains: :class:`TrainingConfig` (batches, optimiser, schedule, checkpoints, trackers).

Only values are checked here. Whether the current launch (DDP, DeepSpeed, FSDP; CPU or GPU)
can serve them is checked by the engine (:func:`distill_toolkit.engine.accelerator.check_launch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int

MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts", "polynomial")
# The tracker names Accelerate knows (accelerate.utils.LoggerType, less "all"); whether the package behind
# one is installed is checked by the engine (distill_toolkit.engine.trackers.check_trackers).
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")
WANDB_MODES = ("offline", "online", "disabled")
TASK_SAMPLERS = ("proportional", "round_robin", "weights")
TEACHER_PLACEMENTS = ("replicated", "zero3", "fsdp", "cpu_offload")
TEACHER_CACHE_DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class TrainingConfig(Serializable):
    """How the one loop trains: batches, optimiser, schedule, checkpoints, trackers."""

    #: where checkpoints, `final/`, `best/`, `config.yaml`, `result.json` and tracker logs are written
    output_dir: str = "outputs/run"
    #: passes over the training data (fractions allowed); ignored when `max_steps` is set
    num_epochs: float = 1.0
    #: stop after this many optimiser steps (overrides `num_epochs`)
    max_steps: Optional[int] = None
    #: examples per micro-batch and process
    batch_size: int = 32
    #: examples per batch when evaluating (and when building a teacher cache)
    eval_batch_size: int = 64
    #: batch examples of similar length together (less padding); single-task data only
    group_by_length: bool = False
    #: multi-task: how the next batch's task is drawn: `proportional`, `round_robin` or `weights`
    task_sampler: str = "proportional"
    #: multi-task, `proportional`: task t is drawn with probability |D_t|^tau / sum |D_u|^tau (1: by size, 0:
    #: uniform)
    task_sampling_tau: float = 1.0
    #: multi-task, `weights`: a `{task: weight}` mapping
    task_weights: Optional[dict] = None
    #: micro-batches per optimiser step (the loss is scaled so this equals one big batch)
    gradient_accumulation_steps: int = 1
    #: peak learning rate of AdamW for the student
    learning_rate: float = 5e-5
    #: learning rate of the match projections; unset: `learning_rate`
    projection_learning_rate: Optional[float] = None
    #: AdamW weight decay (not applied to biases and LayerNorm weights)
    weight_decay: float = 0.0
    #: AdamW epsilon
    adam_epsilon: float = 1e-8
    #: the learning-rate schedule: `linear`, `cosine`, `constant`, `constant_with_warmup`, `cosine_with_restarts` or
    #: `polynomial`
    lr_scheduler: str = "linear"
    #: share of the steps spent warming the learning rate up from 0
    warmup_ratio: float = 0.0
    #: clip the gradient norm to this; `null`: no clipping
    max_grad_norm: Optional[float] = 1.0
    #: `no`, `bf16` or `fp16` (Accelerate's autocast)
    mixed_precision: str = "no"
    # Recompute the student's blocks in the backward pass instead of keeping their activations (less memory,
    # about one more forward of time): transformers' gradient_checkpointing_enable, non-reentrant.
    #: recompute the student's blocks in the backward pass instead of keeping their activations (less memory, about
    #: one more forward of time)
    gradient_checkpointing: bool = False
    #: seeds every model, head and data order before anything is built (same config, same weights)
    seed: int = 42
    #: evaluate on the dev split every this many steps; unset: by epochs
    eval_every_steps: Optional[int] = None
    #: evaluate every this many epochs (when `eval_every_steps` is unset); `null`: only at the end
    eval_every_epochs: Optional[int] = 1
    #: write a checkpoint every this many steps; unset: none during training
    save_every_steps: Optional[int] = None
    #: checkpoints kept in `output_dir/checkpoints` (the oldest are removed)
    save_total_limit: int = 2
    #: the dev metric that picks `best/`; unset: the task's own (e.g. accuracy)
    metric_for_best: Optional[str] = None
    #: whether a larger `metric_for_best` is better
    greater_is_better: bool = True
    #: a checkpoint folder to resume from exactly, or `latest` (the newest intact one in `output_dir`)
    resume_from: Optional[str] = None
    #: send the loss terms to the trackers every this many steps
    log_every_steps: int = 1
    #: trackers Accelerate knows, by name: `tensorboard`, `wandb`, `mlflow`, ...; `[]`: none
    trackers: list = field(default_factory=lambda: ["tensorboard"])
    # Run naming for the trackers. Left unset (null / []), W&B reads its own WANDB_PROJECT, WANDB_NAME,
    # WANDB_TAGS, WANDB_RUN_GROUP and WANDB_MODE; without those: project distill_toolkit, mode offline.
    #: the trackers' project; unset: `WANDB_PROJECT`, else `distill_toolkit`
    project_name: Optional[str] = None
    #: the tracker run's name; unset: `WANDB_NAME` or the tracker's own
    run_name: Optional[str] = None
    #: tags of the W&B run; empty: `WANDB_TAGS`
    tags: list = field(default_factory=list)
    #: the W&B run group; unset: `WANDB_RUN_GROUP`
    group: Optional[str] = None
    #: `offline`, `online` or `disabled`; unset: `WANDB_MODE`, else `offline`
    wandb_mode: Optional[str] = None
    #: show a progress bar of the steps (main process only)
    progress_bar: bool = True
    #: train on CPU even where a GPU is present (a CPU multi-process launch needs it, with gloo)
    cpu: bool = False
    #: where the teachers live: `replicated`, `zero3`, `fsdp` (sharded) or `cpu_offload`
    teacher_placement: str = "replicated"  # one of TEACHER_PLACEMENTS (teachers/placement.py)
    #: a DeepSpeed JSON (e.g. `ds_configs/zero2.json`) for the student, e.g. under torchrun
    deepspeed_config: Optional[str] = None  # a ds_configs/*.json for the student, e.g. under torchrun
    # Teacher cache (data/cache/): `distill-toolkit cache-teacher` writes it, training reads it
    # and runs no teacher forward. In-memory: the first epoch computes, later epochs reuse.
    #: a teacher-cache folder: `distill-toolkit cache-teacher` writes it; training reads it and runs no teacher
    #: forward
    teacher_cache: Optional[str] = None
    #: keep only the teacher's top-k logits per position in the cache; unset: all
    teacher_cache_top_k: Optional[int] = None
    #: a sampled sparse teacher: per position, this many tokens drawn from the teacher's distribution beyond its
    #: `teacher_cache_top_k` (kept exactly; none when unset), seeded by `seed`; unbiased for `kd_loss: forward_kl`
    teacher_cache_samples: Optional[int] = None
    #: how a sampled cache chooses its entries: `multinomial` (independent draws), `systematic` (one draw per equal
    #: stratum of the tail's CDF: unbiased too, less variance) or `threshold` (exactly `top_k + samples` distinct
    #: entries: every token above a threshold exactly, the rest drawn systematically; unbiased, the most compact)
    teacher_cache_sampler: str = "multinomial"
    #: dtype of the cached outputs: `float32`, `float16` or `bfloat16`
    teacher_cache_dtype: str = "float32"
    #: without a cache folder: compute the teacher's outputs in the first epoch and reuse them in the later ones
    teacher_cache_in_memory: bool = False
    #: replace a different or finished run found in `output_dir`
    overwrite: bool = False  # replace a different or finished run found in output_dir

    def validate(self, where: str = "training") -> None:
        check(isinstance(self.output_dir, str) and self.output_dir != "", f"{where}.output_dir",
              "must be a folder path", "set e.g. `output_dir: outputs/my_run`")
        check(is_finite_number(self.num_epochs) and self.num_epochs > 0, f"{where}.num_epochs",
              f"must be > 0, got {self.num_epochs!r}", "set e.g. `num_epochs: 3`")
        check(self.max_steps is None or (is_int(self.max_steps) and self.max_steps > 0), f"{where}.max_steps",
              f"must be a positive integer or null, got {self.max_steps!r}", "remove it or set e.g. `max_steps: 1000`")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every_steps",
                     "save_total_limit"):
            value = getattr(self, name)
            check(is_int(value) and value > 0, f"{where}.{name}", f"must be a positive integer, got {value!r}",
                  f"set e.g. `{name}: 1`")
        for name in ("eval_every_steps", "eval_every_epochs", "save_every_steps"):
            value = getattr(self, name)
            check(value is None or (is_int(value) and value > 0), f"{where}.{name}",
                  f"must be a positive integer or null, got {value!r}", f"remove it or set e.g. `{name}: 100`")
        check(is_finite_number(self.learning_rate) and self.learning_rate > 0, f"{where}.learning_rate",
              f"must be > 0, got {self.learning_rate!r}", "set e.g. `learning_rate: 5.0e-5`")
        check(self.projection_learning_rate is None
              or (is_finite_number(self.projection_learning_rate) and self.projection_learning_rate > 0),
              f"{where}.projection_learning_rate", f"must be > 0 or null, got {self.projection_learning_rate!r}",
              "remove it (projections then use learning_rate) or set e.g. `projection_learning_rate: 1.0e-3`")
        check(is_finite_number(self.weight_decay) and self.weight_decay >= 0, f"{where}.weight_decay",
              "must be >= 0", "set e.g. `weight_decay: 0.01`")
        check(self.lr_scheduler in LR_SCHEDULERS, f"{where}.lr_scheduler", f"unknown {self.lr_scheduler!r}",
              f"use one of {', '.join(LR_SCHEDULERS)}")
        check(is_finite_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio",
              f"must be in [0, 1), got {self.warmup_ratio!r}", "set e.g. `warmup_ratio: 0.1`")
        check(self.max_grad_norm is None or (is_finite_number(self.max_grad_norm) and self.max_grad_norm > 0),
              f"{where}.max_grad_norm", f"must be > 0 or null, got {self.max_grad_norm!r}",
              "set e.g. `max_grad_norm: 1.0`, or null to disable clipping")
        check(self.mixed_precision in MIXED_PRECISION, f"{where}.mixed_precision",
              f"unknown {self.mixed_precision!r}", f"use one of {', '.join(MIXED_PRECISION)}")
        self._validate_trackers(where)
        check(is_int(self.seed), f"{where}.seed", "must be an integer", "set e.g. `seed: 42`")
        check(isinstance(self.group_by_length, bool), f"{where}.group_by_length", "must be true or false",
              "set `group_by_length: true` to batch examples of similar length (less padding)")
        check(self.teacher_placement in TEACHER_PLACEMENTS, f"{where}.teacher_placement",
              f"unknown placement {self.teacher_placement!r}", f"use one of {', '.join(TEACHER_PLACEMENTS)}")
        check(self.deepspeed_config is None or (isinstance(self.deepspeed_config, str) and self.deepspeed_config),
              f"{where}.deepspeed_config", f"must be a file path or null, got {self.deepspeed_config!r}",
              "point it at a DeepSpeed JSON config, e.g. ds_configs/zero2.json")
        check(isinstance(self.overwrite, bool), f"{where}.overwrite", "must be true or false",
              "set `overwrite: true` to replace a run already in output_dir")
        self._validate_teacher_cache(where)
        check(self.task_sampler in TASK_SAMPLERS, f"{where}.task_sampler", f"unknown sampler {self.task_sampler!r}",
              f"use one of {', '.join(TASK_SAMPLERS)} (multi-task data only)")
        check(is_finite_number(self.task_sampling_tau) and self.task_sampling_tau >= 0, f"{where}.task_sampling_tau",
              f"must be a number >= 0, got {self.task_sampling_tau!r}",
              "set e.g. `task_sampling_tau: 1.0` (tasks drawn in proportion to |D|^tau; 0 = uniform)")
        if self.task_weights is not None:
            ok = isinstance(self.task_weights, dict) and all(
                isinstance(k, str) and is_finite_number(v) and v >= 0 for k, v in self.task_weights.items())
            check(ok and sum(self.task_weights.values()) > 0, f"{where}.task_weights",
                  f"must map task names to numbers >= 0 with a positive sum, got {self.task_weights!r}",
                  "e.g. `task_weights: {movies: 2, tweets: 1}`")
            check(self.task_sampler == "weights", f"{where}.task_weights",
                  f"is set but task_sampler is {self.task_sampler!r}, which ignores it",
                  "set `task_sampler: weights`, or remove task_weights")
        check(self.task_sampler != "weights" or self.task_weights is not None, f"{where}.task_weights",
              "task_sampler is 'weights' but no task_weights are given", "e.g. `task_weights: {movies: 2, tweets: 1}`")
        check_types(self, where)  # what the checks above leave: e.g. `progress_bar: "yes"`, `adam_epsilon: "1e-8"`

    def _validate_trackers(self, where: str) -> None:
        check(isinstance(self.trackers, list) and all(t in TRACKERS for t in self.trackers), f"{where}.trackers",
              f"bad value {self.trackers!r}", f"use a list drawn from {', '.join(TRACKERS)} (or [])")
        check(self.wandb_mode is None or self.wandb_mode in WANDB_MODES, f"{where}.wandb_mode",
              f"unknown {self.wandb_mode!r}", f"use one of {', '.join(WANDB_MODES)}, or null (WANDB_MODE, else offline)")
        bad_project = set("/\\#?%:")
        check(self.project_name is None or (isinstance(self.project_name, str) and self.project_name.strip() != ""
                                            and len(self.project_name) <= 128
                                            and not bad_project & set(self.project_name)),
              f"{where}.project_name", f"must be a name of 1-128 characters without / \\ # ? % :, got "
              f"{self.project_name!r}", "set e.g. `project_name: sst2-distill`, or null (WANDB_PROJECT, else "
              "distill_toolkit)")
        for name in ("run_name", "group"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and value.strip() != "" and len(value) <= 128),
                  f"{where}.{name}", f"must be a non-empty name of at most 128 characters or null, got {value!r}",
                  f"set e.g. `{name}: tinybert-T4`, or remove it")
        check(isinstance(self.tags, list) and all(isinstance(t, str) and 0 < len(t.strip()) and len(t) <= 64
                                                  for t in self.tags),
              f"{where}.tags", f"must be a list of non-empty names of at most 64 characters, got {self.tags!r}",
              "e.g. `tags: [kd, tinybert]`, or [] (W&B then reads WANDB_TAGS)")
        check(isinstance(self.tags, list) and len(set(self.tags)) == len(self.tags), f"{where}.tags",
              f"lists a tag twice: {self.tags!r}", "keep each tag once")

    def _validate_teacher_cache(self, where: str) -> None:
        check(self.teacher_cache is None or (isinstance(self.teacher_cache, str) and self.teacher_cache != ""),
              f"{where}.teacher_cache", f"must be a folder path or null, got {self.teacher_cache!r}",
              "set e.g. `teacher_cache: outputs/teacher_cache` (built by `distill-toolkit cache-teacher`)")
        check(self.teacher_cache_top_k is None or (is_int(self.teacher_cache_top_k) and self.teacher_cache_top_k > 0),
              f"{where}.teacher_cache_top_k", f"must be a positive integer or null, got {self.teacher_cache_top_k!r}",
              "set e.g. `teacher_cache_top_k: 32` (large vocabularies), or null to store dense logits")
        check(self.teacher_cache_dtype in TEACHER_CACHE_DTYPES, f"{where}.teacher_cache_dtype",
              f"unknown {self.teacher_cache_dtype!r}", "use one of float32, float16, bfloat16")
        check(isinstance(self.teacher_cache_in_memory, bool), f"{where}.teacher_cache_in_memory",
              "must be true or false", "set `teacher_cache_in_memory: true` to reuse the first epoch's outputs")
        check(not (self.teacher_cache_in_memory and self.teacher_cache), f"{where}.teacher_cache_in_memory",
              "is set together with teacher_cache (an on-disk cache already skips every teacher forward)",
              "keep one of them")
        check(self.teacher_cache_samples is None
              or (is_int(self.teacher_cache_samples) and 0 < self.teacher_cache_samples <= 4096),
              f"{where}.teacher_cache_samples",
              f"must be a positive integer (at most 4096) or null, got {self.teacher_cache_samples!r}",
              "set e.g. `teacher_cache_samples: 24` (with `teacher_cache_top_k: 8`), or null for top-k / dense logits")
        check(self.teacher_cache_sampler in ("multinomial", "systematic", "threshold"),
              f"{where}.teacher_cache_sampler", f"unknown {self.teacher_cache_sampler!r}",
              "set `multinomial`, `systematic` or `threshold`")
        check(self.teacher_cache_samples is None or self.teacher_cache, f"{where}.teacher_cache_samples",
              "is set but there is no teacher_cache to store sampled logits in",
              "set `teacher_cache: PATH`, or remove teacher_cache_samples")
        check(self.teacher_cache_top_k is None or self.teacher_cache, f"{where}.teacher_cache_top_k",
              "is set but there is no teacher_cache to store top-k logits in",
              "set `teacher_cache: PATH`, or remove teacher_cache_top_k")
