"""Configuration dataclasses: what to train, how, and what the student learns from.

Configs are plain data. They load from and save to YAML or JSON (YAML through
``yaml.safe_load`` only), and :meth:`validate` runs before any model is touched:
every error names the field that is wrong and how to fix it.

- :class:`TrainingConfig`   -- the loop: batch size, steps, optimiser, checkpoints, trackers.
- :class:`DistillationConfig` -- the strategy: temperature, KD loss, weights, matches.
- :class:`Match`            -- one intermediate match between a teacher and a student feature.
- :class:`ExperimentConfig` -- a whole run as the CLI reads it (models, data and the two above).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

import yaml

LayerRef = Union[int, list]

FEATURES = ("hidden", "attention", "module")
TASKS = (
    "auto",
    "sequence_classification",
    "multilabel_classification",
    "token_classification",
    "question_answering",
    "masked_lm",
    "causal_lm",
)
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
    "cosine_with_restarts",
    "polynomial",
)
TRACKERS = ("tensorboard", "wandb")
WANDB_MODES = ("offline", "online", "disabled")
PAIR_LOSSES = ("fsp", "gram", "mmd", "nst")
TEACHER_COMBINATIONS = ("mean", "weights", "confidence")
TASK_SAMPLERS = ("proportional", "round_robin", "weights")


class ConfigError(ValueError):
    """A configuration value is wrong. The message names the field and the fix."""

    def __init__(self, field_name: str, problem: str, fix: str):
        self.field = field_name
        super().__init__(f"{field_name}: {problem}. Fix: {fix}")


def _check(cond: bool, field_name: str, problem: str, fix: str) -> None:
    if not cond:
        raise ConfigError(field_name, problem, fix)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Serializable:
    """Dict/YAML/JSON round-tripping shared by the config dataclasses."""

    @classmethod
    def from_dict(cls, data: dict, prefix: str = ""):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(prefix or cls.__name__, f"expected a mapping, got {type(data).__name__}",
                              "write this section as `key: value` pairs")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{prefix}{unknown[0]}" if prefix else unknown[0],
                f"unknown field in {cls.__name__}",
                f"remove it or use one of: {', '.join(sorted(known))}",
            )
        return cls(**cls._convert_nested(dict(data), prefix))

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        return data

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Union[str, Path]) -> None:
        """Write this config to ``path`` as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = (yaml.safe_dump(self.to_dict(), sort_keys=False)
                if path.suffix in (".yaml", ".yml") else json.dumps(self.to_dict(), indent=2))
        path.write_text(text)

    @classmethod
    def load(cls, path: Union[str, Path]):
        """Read a config from a YAML or JSON file (safe loader only) and validate it."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(str(path), "config file not found", "pass the path of an existing .yaml or .json file")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as err:
            raise ConfigError(str(path), f"cannot parse: {err}", "fix the syntax of the file") from err
        config = cls.from_dict(data or {})
        config.validate()
        return config


@dataclass
class Match(_Serializable):
    """One intermediate match: a teacher feature, a student feature, a loss and a weight.

    ``feature`` is ``"hidden"`` (hidden states; layer 0 is the embedding output, layer
    ``i`` the output of block ``i``, as in Hugging Face's ``hidden_states``),
    ``"attention"`` (attention probabilities of block ``i``, 0-based) or ``"module"``
    (the output of any named module: set ``teacher_module``/``student_module``).
    ``fsp``/``mmd`` take a pair of layers on each side, e.g. ``teacher_layer: [0, 2]``.

    ``projection`` (``"linear"``, ``"relu"``, ``"tanh"``) maps the student feature to the
    teacher's width; its sizes are read from the models. TextBrewer's
    ``["linear", dim_S, dim_T]`` form is accepted too.

    With several teachers, ``teacher`` names the teacher role the match reads (default: every
    teacher); with several tasks, ``task`` names the task it applies to (default: every task).
    """

    teacher_layer: Optional[LayerRef] = None
    student_layer: Optional[LayerRef] = None
    feature: str = "hidden"
    loss: str = "hidden_mse"
    weight: float = 1.0
    weight_schedule: str = "constant"
    projection: Optional[Union[str, list]] = None
    teacher_module: Optional[str] = None
    student_module: Optional[str] = None
    teacher: Optional[str] = None
    task: Optional[str] = None

    @property
    def projection_kind(self) -> Optional[str]:
        if self.projection is None:
            return None
        return self.projection if isinstance(self.projection, str) else self.projection[0]

    def name(self) -> str:
        """A readable, unique-enough tag for logging, e.g. ``hidden_mse/S2-T4``."""
        if self.feature == "module":
            return f"{self.loss}/{self.student_module}-{self.teacher_module}"

        def tag(layer):
            return "_".join(map(str, layer)) if isinstance(layer, list) else str(layer)

        return f"{self.loss}/S{tag(self.student_layer)}-T{tag(self.teacher_layer)}"

    def validate(self, where: str = "match") -> None:
        from distill_toolkit import losses, projections, schedulers

        _check(self.feature in FEATURES, f"{where}.feature", f"unknown feature {self.feature!r}",
               f"use one of {', '.join(FEATURES)}")
        for name in ("teacher", "task"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value != ""), f"{where}.{name}",
                   f"must be a {name} name or null, got {value!r}",
                   f"remove it (the match then applies to every {name}) or name one, e.g. `{name}: "
                   + ("teacher0`" if name == "teacher" else "movies`"))
        _check(self.loss in losses.available_losses(), f"{where}.loss", f"unknown loss {self.loss!r}",
               f"use one of {', '.join(losses.available_losses('feature'))}")
        _check(losses.loss_kind(self.loss) == "feature", f"{where}.loss",
               f"{self.loss!r} is a logits loss, not a feature loss",
               f"use one of {', '.join(losses.available_losses('feature'))}")
        _check(_is_number(self.weight) and self.weight >= 0, f"{where}.weight",
               f"must be a finite number >= 0, got {self.weight!r}", "set e.g. `weight: 1.0`")
        _check(self.weight_schedule in schedulers.WEIGHT_SCHEDULES, f"{where}.weight_schedule",
               f"unknown schedule {self.weight_schedule!r}", f"use one of {', '.join(schedulers.WEIGHT_SCHEDULES)}")
        if self.projection is not None:
            ok = isinstance(self.projection, str) or (
                isinstance(self.projection, list) and len(self.projection) in (3, 4)
                and isinstance(self.projection[0], str) and all(_is_int(d) for d in self.projection[1:3]))
            _check(ok, f"{where}.projection", f"bad value {self.projection!r}",
                   "use a kind (`linear`, `relu`, `tanh`) or TextBrewer's [kind, dim_student, dim_teacher]")
            _check(self.projection_kind in projections.PROJECTIONS, f"{where}.projection",
                   f"unknown projection {self.projection_kind!r}", f"use one of {', '.join(projections.PROJECTIONS)}")
        if self.feature == "module":
            for side in ("teacher_module", "student_module"):
                value = getattr(self, side)
                _check(isinstance(value, str) and value != "", f"{where}.{side}",
                       "feature 'module' needs a module name on both sides",
                       "set it to a name from model.named_modules(), e.g. `bert.encoder.layer.2.output`")
            return
        pair = self.loss in PAIR_LOSSES
        for side in ("teacher_layer", "student_layer"):
            value = getattr(self, side)
            if pair:
                _check(isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value),
                       f"{where}.{side}", f"loss {self.loss!r} compares a pair of layers, got {value!r}",
                       "give two layer indices, e.g. `[0, 2]`")
            else:
                _check(_is_int(value) and value >= 0, f"{where}.{side}",
                       f"must be a layer index >= 0, got {value!r}",
                       f"set it (feature {self.feature!r} indexes layers; layer 0 is the embedding output for 'hidden')")


@dataclass
class DistillationConfig(_Serializable):
    """What the student learns from (TextBrewer's ``DistillationConfig``, extended).

    The total loss of the ``single`` strategy is::

        kd_loss_weight(t) * KD(student logits, teacher logits; T)
        + hard_label_weight(t) * (the student's own loss on the labels)
        + sum over matches of weight(t) * match_loss(projection(student feature), teacher feature)

    where ``t`` is training progress in [0, 1] and each weight follows its schedule.

    Several teachers (``multi_teacher``, ``multi_task``): KD reads one combination of their
    logits, ``teacher_combination``: ``mean``, ``weights`` (fixed ``teacher_weights``, a list in
    the order the teachers are given or a ``{role: weight}`` mapping; normalised to sum to 1) or
    ``confidence`` (per example, each teacher weighted by its top-class probability).
    ``strategy_options`` holds free-form settings read by custom strategies.
    """

    strategy: str = "single"
    task: str = "auto"
    temperature: float = 1.0
    temperature_scheduler: Any = "constant"
    kd_loss: str = "kd_ce"
    kd_loss_kwargs: dict = field(default_factory=dict)
    kd_loss_weight: float = 1.0
    kd_loss_weight_schedule: str = "constant"
    hard_label_weight: float = 0.0
    hard_label_weight_schedule: str = "constant"
    probability_shift: bool = False
    matches: list = field(default_factory=list)
    teacher_combination: str = "mean"
    teacher_weights: Optional[Union[list, dict]] = None
    strategy_options: dict = field(default_factory=dict)

    _KD_ALIASES = {"ce": "kd_ce", "mse": "kd_mse"}

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        raw = data.get("matches") or []
        if not isinstance(raw, list):
            raise ConfigError(f"{prefix}matches", "must be a list of matches", "write `matches: [ {...}, ... ]`")
        data["matches"] = [m if isinstance(m, Match) else Match.from_dict(m, f"{prefix}matches[{i}].")
                           for i, m in enumerate(raw)]
        return data

    def __post_init__(self):
        self.kd_loss = self._KD_ALIASES.get(self.kd_loss, self.kd_loss)
        self.matches = [m if isinstance(m, Match) else Match.from_dict(m, f"matches[{i}].")
                        for i, m in enumerate(self.matches)]

    def validate(self, where: str = "distillation") -> None:
        from distill_toolkit import losses, schedulers

        from distill_toolkit.strategies import available_strategies

        known = ", ".join(available_strategies())
        _check(isinstance(self.strategy, str) and self.strategy in available_strategies(), f"{where}.strategy",
               f"unknown strategy {self.strategy!r}; known strategies: {known}",
               "use one of them, or register yours with distill_toolkit.strategies.register_strategy()")
        _check(self.task in TASKS, f"{where}.task", f"unknown task {self.task!r}", f"use one of {', '.join(TASKS)}")
        _check(_is_number(self.temperature) and self.temperature > 0, f"{where}.temperature",
               f"must be a number > 0, got {self.temperature!r}", "set e.g. `temperature: 4`")
        try:
            schedulers.build_temperature_scheduler(self.temperature_scheduler)
        except ValueError as err:
            raise ConfigError(f"{where}.temperature_scheduler", str(err),
                              "use `constant`, [flsw, beta, gamma] or [cwsm, beta]") from err
        _check(self.kd_loss in losses.available_losses(), f"{where}.kd_loss", f"unknown loss {self.kd_loss!r}",
               f"use one of {', '.join(losses.available_losses('logits'))}")
        _check(losses.loss_kind(self.kd_loss) == "logits", f"{where}.kd_loss",
               f"{self.kd_loss!r} is a feature loss, not a logits loss",
               f"use one of {', '.join(losses.available_losses('logits'))}")
        _check(isinstance(self.kd_loss_kwargs, dict), f"{where}.kd_loss_kwargs", "must be a mapping",
               "e.g. `kd_loss_kwargs: {beta: 0.5}`")
        for name in ("kd_loss_weight", "hard_label_weight"):
            value = getattr(self, name)
            _check(_is_number(value) and value >= 0, f"{where}.{name}", f"must be a number >= 0, got {value!r}",
                   f"set e.g. `{name}: 1.0`")
        for name in ("kd_loss_weight_schedule", "hard_label_weight_schedule"):
            value = getattr(self, name)
            _check(value in schedulers.WEIGHT_SCHEDULES, f"{where}.{name}", f"unknown schedule {value!r}",
                   f"use one of {', '.join(schedulers.WEIGHT_SCHEDULES)}")
        _check(isinstance(self.probability_shift, bool), f"{where}.probability_shift", "must be true or false",
               "set `probability_shift: true` to swap the teacher's top logit with the true label's")
        for i, match in enumerate(self.matches):
            match.validate(f"{where}.matches[{i}]")
        _check(self.teacher_combination in TEACHER_COMBINATIONS, f"{where}.teacher_combination",
               f"unknown combination {self.teacher_combination!r}", f"use one of {', '.join(TEACHER_COMBINATIONS)}")
        weights = self.teacher_weights
        if weights is not None:
            values = list(weights.values()) if isinstance(weights, dict) else weights
            _check(isinstance(weights, (list, dict)) and all(_is_number(w) and w >= 0 for w in values)
                   and sum(values) > 0, f"{where}.teacher_weights",
                   f"must be a list (or role -> weight mapping) of numbers >= 0 with a positive sum, got {weights!r}",
                   "e.g. `teacher_weights: [0.5, 0.3, 0.2]`, one per teacher")
            _check(self.teacher_combination == "weights", f"{where}.teacher_weights",
                   f"is set but teacher_combination is {self.teacher_combination!r}, which ignores it",
                   "set `teacher_combination: weights`, or remove teacher_weights")
        _check(self.teacher_combination != "weights" or weights is not None, f"{where}.teacher_weights",
               "teacher_combination is 'weights' but no teacher_weights are given",
               "give one weight per teacher, e.g. `teacher_weights: [2, 1]`")
        _check(isinstance(self.strategy_options, dict), f"{where}.strategy_options", "must be a mapping",
               "e.g. `strategy_options: {tau: 1.0}`")
        from distill_toolkit.strategies.base import get as get_strategy

        check_options = getattr(get_strategy(self.strategy), "check_options", None)
        if check_options is not None:  # a strategy that declares its options checks them up front
            check_options(self.strategy_options, f"{where}.strategy_options")


@dataclass
class TrainingConfig(_Serializable):
    """How the one loop trains: batches, optimiser, schedule, checkpoints, trackers."""

    output_dir: str = "outputs/run"
    num_epochs: float = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 32
    eval_batch_size: int = 64
    group_by_length: bool = False
    task_sampler: str = "proportional"
    task_sampling_tau: float = 1.0
    task_weights: Optional[dict] = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    projection_learning_rate: Optional[float] = None
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = "no"
    seed: int = 42
    eval_every_steps: Optional[int] = None
    eval_every_epochs: Optional[int] = 1
    save_every_steps: Optional[int] = None
    save_total_limit: int = 2
    metric_for_best: Optional[str] = None
    greater_is_better: bool = True
    resume_from: Optional[str] = None
    log_every_steps: int = 1
    trackers: list = field(default_factory=lambda: ["tensorboard"])
    project_name: str = "distill_toolkit"
    run_name: Optional[str] = None
    wandb_mode: str = "offline"
    progress_bar: bool = True
    cpu: bool = False
    teacher_placement: str = "replicated"  # replicated | zero3 | fsdp | cpu_offload (engine/placement.py)
    deepspeed_config: Optional[str] = None  # a ds_configs/*.json for the student, e.g. under torchrun
    # Teacher cache (data/teacher_cache.py): `distill-toolkit cache-teacher` writes it, training reads it
    # and runs no teacher forward. In-memory: the first epoch computes, later epochs reuse.
    teacher_cache: Optional[str] = None
    teacher_cache_top_k: Optional[int] = None
    teacher_cache_dtype: str = "float32"
    teacher_cache_in_memory: bool = False

    def validate(self, where: str = "training") -> None:
        _check(isinstance(self.output_dir, str) and self.output_dir != "", f"{where}.output_dir",
               "must be a folder path", "set e.g. `output_dir: outputs/my_run`")
        _check(_is_number(self.num_epochs) and self.num_epochs > 0, f"{where}.num_epochs",
               f"must be > 0, got {self.num_epochs!r}", "set e.g. `num_epochs: 3`")
        _check(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps > 0), f"{where}.max_steps",
               f"must be a positive integer or null, got {self.max_steps!r}", "remove it or set e.g. `max_steps: 1000`")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "log_every_steps",
                     "save_total_limit"):
            value = getattr(self, name)
            _check(_is_int(value) and value > 0, f"{where}.{name}", f"must be a positive integer, got {value!r}",
                   f"set e.g. `{name}: 1`")
        for name in ("eval_every_steps", "eval_every_epochs", "save_every_steps"):
            value = getattr(self, name)
            _check(value is None or (_is_int(value) and value > 0), f"{where}.{name}",
                   f"must be a positive integer or null, got {value!r}", f"remove it or set e.g. `{name}: 100`")
        _check(_is_number(self.learning_rate) and self.learning_rate > 0, f"{where}.learning_rate",
               f"must be > 0, got {self.learning_rate!r}", "set e.g. `learning_rate: 5.0e-5`")
        _check(self.projection_learning_rate is None
               or (_is_number(self.projection_learning_rate) and self.projection_learning_rate > 0),
               f"{where}.projection_learning_rate", f"must be > 0 or null, got {self.projection_learning_rate!r}",
               "remove it (projections then use learning_rate) or set e.g. `projection_learning_rate: 1.0e-3`")
        _check(_is_number(self.weight_decay) and self.weight_decay >= 0, f"{where}.weight_decay",
               "must be >= 0", "set e.g. `weight_decay: 0.01`")
        _check(self.lr_scheduler in LR_SCHEDULERS, f"{where}.lr_scheduler", f"unknown {self.lr_scheduler!r}",
               f"use one of {', '.join(LR_SCHEDULERS)}")
        _check(_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio",
               f"must be in [0, 1), got {self.warmup_ratio!r}", "set e.g. `warmup_ratio: 0.1`")
        _check(self.max_grad_norm is None or (_is_number(self.max_grad_norm) and self.max_grad_norm > 0),
               f"{where}.max_grad_norm", f"must be > 0 or null, got {self.max_grad_norm!r}",
               "set e.g. `max_grad_norm: 1.0`, or null to disable clipping")
        _check(self.mixed_precision in MIXED_PRECISION, f"{where}.mixed_precision",
               f"unknown {self.mixed_precision!r}", f"use one of {', '.join(MIXED_PRECISION)}")
        _check(isinstance(self.trackers, list) and all(t in TRACKERS for t in self.trackers), f"{where}.trackers",
               f"bad value {self.trackers!r}", f"use a list drawn from {', '.join(TRACKERS)} (or [])")
        _check(self.wandb_mode in WANDB_MODES, f"{where}.wandb_mode", f"unknown {self.wandb_mode!r}",
               f"use one of {', '.join(WANDB_MODES)}")
        _check(_is_int(self.seed), f"{where}.seed", "must be an integer", "set e.g. `seed: 42`")
        _check(isinstance(self.group_by_length, bool), f"{where}.group_by_length", "must be true or false",
               "set `group_by_length: true` to batch examples of similar length (less padding)")
        # Placement name, and whether this launch (DDP / DeepSpeed / FSDP, CPU or GPU) can serve it.
        from distill_toolkit.engine.accelerator import check_launch

        check_launch(self, where)
        self._validate_teacher_cache(where)
        _check(self.task_sampler in TASK_SAMPLERS, f"{where}.task_sampler", f"unknown sampler {self.task_sampler!r}",
               f"use one of {', '.join(TASK_SAMPLERS)} (multi-task data only)")
        _check(_is_number(self.task_sampling_tau) and self.task_sampling_tau >= 0, f"{where}.task_sampling_tau",
               f"must be a number >= 0, got {self.task_sampling_tau!r}",
               "set e.g. `task_sampling_tau: 1.0` (tasks drawn in proportion to |D|^tau; 0 = uniform)")
        if self.task_weights is not None:
            ok = isinstance(self.task_weights, dict) and all(
                isinstance(k, str) and _is_number(v) and v >= 0 for k, v in self.task_weights.items())
            _check(ok and sum(self.task_weights.values()) > 0, f"{where}.task_weights",
                   f"must map task names to numbers >= 0 with a positive sum, got {self.task_weights!r}",
                   "e.g. `task_weights: {movies: 2, tweets: 1}`")
            _check(self.task_sampler == "weights", f"{where}.task_weights",
                   f"is set but task_sampler is {self.task_sampler!r}, which ignores it",
                   "set `task_sampler: weights`, or remove task_weights")
        _check(self.task_sampler != "weights" or self.task_weights is not None, f"{where}.task_weights",
               "task_sampler is 'weights' but no task_weights are given", "e.g. `task_weights: {movies: 2, tweets: 1}`")


    def _validate_teacher_cache(self, where: str) -> None:
        _check(self.teacher_cache is None or (isinstance(self.teacher_cache, str) and self.teacher_cache != ""),
               f"{where}.teacher_cache", f"must be a folder path or null, got {self.teacher_cache!r}",
               "set e.g. `teacher_cache: outputs/teacher_cache` (built by `distill-toolkit cache-teacher`)")
        _check(self.teacher_cache_top_k is None or (_is_int(self.teacher_cache_top_k) and self.teacher_cache_top_k > 0),
               f"{where}.teacher_cache_top_k", f"must be a positive integer or null, got {self.teacher_cache_top_k!r}",
               "set e.g. `teacher_cache_top_k: 32` (large vocabularies), or null to store dense logits")
        _check(self.teacher_cache_dtype in ("float32", "float16", "bfloat16"), f"{where}.teacher_cache_dtype",
               f"unknown {self.teacher_cache_dtype!r}", "use one of float32, float16, bfloat16")
        _check(isinstance(self.teacher_cache_in_memory, bool), f"{where}.teacher_cache_in_memory",
               "must be true or false", "set `teacher_cache_in_memory: true` to reuse the first epoch's outputs")
        _check(not (self.teacher_cache_in_memory and self.teacher_cache), f"{where}.teacher_cache_in_memory",
               "is set together with teacher_cache (an on-disk cache already skips every teacher forward)",
               "keep one of them")
        _check(self.teacher_cache_top_k is None or self.teacher_cache, f"{where}.teacher_cache_top_k",
               "is set but there is no teacher_cache to store top-k logits in",
               "set `teacher_cache: PATH`, or remove teacher_cache_top_k")


@dataclass
class ModelSpec(_Serializable):
    """Where a model comes from, for the CLI.

    - ``path``: a folder with a saved Hugging Face model (``save_pretrained``), or
      ``builtin:minilm`` for the all-MiniLM-L6-v2 weights the data module fetches.
    - ``init_from``: ``teacher`` builds the student from the teacher's config and copies
      the teacher's embeddings, head and the blocks listed in ``layers``.
    - ``init_from: random`` builds the student from the config at ``path`` changed by
      ``config`` (e.g. a narrower student), with random weights seeded by ``training.seed``.
    - ``config``: overrides applied to the base config (e.g. a narrower random student).
    """

    path: Optional[str] = None
    init_from: Optional[str] = None
    layers: Optional[list] = None
    config: dict = field(default_factory=dict)
    attn_implementation: Optional[str] = None

    def validate(self, where: str) -> None:
        _check(self.path is not None or self.init_from == "teacher", where,
               "needs `path` or `init_from: teacher`", "point `path` at a saved model folder or `builtin:minilm`")
        _check(self.init_from in (None, "teacher", "random"), f"{where}.init_from",
               f"unknown value {self.init_from!r}", "use `teacher`, `random` or remove it")
        _check(isinstance(self.config, dict), f"{where}.config", f"must be a mapping, got {self.config!r}",
               "e.g. `config: {num_hidden_layers: 4, hidden_size: 312}`")
        if self.layers is not None:
            _check(isinstance(self.layers, list) and self.layers and all(_is_int(x) and x >= 0 for x in self.layers),
                   f"{where}.layers", f"must be a non-empty list of layer indices, got {self.layers!r}",
                   "e.g. `layers: [1, 3, 5]`")


@dataclass
class DataSpec(_Serializable):
    """Which data to train on, for the CLI.

    - ``name: sentiment``: the VADER corpora (``domain``: movies, tweets, amazon, nyt), fetched once.
    - ``name: files``: your own JSON-lines or CSV files (``train_file``, ``dev_file``, optional
      ``test_file``) with a text column and an integer label column.
    - ``name: text``: text for causal LMs (models load as ``AutoModelForCausalLM``): ``.txt`` files
      (one example per line) or JSON-lines/CSV with ``text_column``; with ``prompt_column`` too,
      each example is a prompt + completion (``text_column``) and only the completion is learnt.
      ``dev_file``/``test_file`` are optional and scored by perplexity.

    ``max_examples`` keeps a seeded random subset of the corpus before it is split;
    ``max_train_examples`` a seeded random subset of the training split (``seed`` for both).
    """

    name: str = "sentiment"
    domain: str = "movies"
    train_file: Optional[str] = None
    dev_file: Optional[str] = None
    test_file: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: Optional[str] = None
    max_length: int = 64
    max_examples: Optional[int] = None
    max_train_examples: Optional[int] = None
    seed: int = 0

    def validate(self, where: str = "data") -> None:
        _check(self.name in ("sentiment", "files", "text"), f"{where}.name", f"unknown data set {self.name!r}",
               "use `sentiment` (the VADER corpora), `files` (your own train_file/dev_file) or `text` (causal LMs)")
        if self.name == "text":
            _check(isinstance(self.train_file, str) and Path(self.train_file).is_file(), f"{where}.train_file",
                   f"file {self.train_file!r} not found", "point it at a .txt (one example per line), .jsonl or .csv")
            for key in ("dev_file", "test_file"):
                path = getattr(self, key)
                _check(path is None or Path(path).is_file(), f"{where}.{key}", f"file {path!r} not found",
                       "point it at a file or remove it")
        if self.name == "files":
            for key in ("train_file", "dev_file"):
                path = getattr(self, key)
                _check(isinstance(path, str) and Path(path).is_file(), f"{where}.{key}",
                       f"file {path!r} not found", "point it at a .jsonl/.json or .csv file")
            _check(self.test_file is None or Path(self.test_file).is_file(), f"{where}.test_file",
                   f"file {self.test_file!r} not found", "point it at a file or remove it")
        _check(_is_int(self.max_length) and self.max_length > 1, f"{where}.max_length", "must be an integer > 1",
               "set e.g. `max_length: 64`")


@dataclass
class ExperimentConfig(_Serializable):
    """A whole run as ``distill-toolkit train CONFIG.yaml`` reads it."""

    teacher: Optional[ModelSpec] = None
    student: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    distillation: DistillationConfig = field(default_factory=DistillationConfig)

    @classmethod
    def _convert_nested(cls, data: dict, prefix: str) -> dict:
        parts = {"teacher": ModelSpec, "student": ModelSpec, "data": DataSpec,
                 "training": TrainingConfig, "distillation": DistillationConfig}
        for key, kind in parts.items():
            if key in data and data[key] is not None and not isinstance(data[key], kind):
                data[key] = kind.from_dict(data[key], f"{prefix}{key}.")
        return data

    def validate(self) -> None:
        self.training.validate("training")
        self.distillation.validate("distillation")
        self.data.validate("data")
        self.student.validate("student")
        _check(self.distillation.strategy != "causal_lm" or self.data.name == "text", "data.name",
               f"strategy 'causal_lm' trains causal LMs on text, but data.name is {self.data.name!r}",
               "set `name: text` with a train_file of text (.txt, one example per line, or .jsonl/.csv)")
        if self.distillation.strategy != "supervised":
            _check(self.teacher is not None, "teacher", f"strategy {self.distillation.strategy!r} needs a teacher",
                   "add a `teacher:` section with a `path`, or use `strategy: supervised`")
            self.teacher.validate("teacher")
        if self.student.init_from == "teacher":
            _check(self.teacher is not None, "student.init_from", "there is no teacher to copy from",
                   "add a `teacher:` section or give the student a `path`")
