"""What the student learns from: :class:`DistillationConfig` and its intermediate :class:`Match` es.

Values are checked here (types, ranges, required pairs); names that live in registries
(strategies, losses, schedules, projections, tasks) are checked when the strategy is built,
by :func:`distill_toolkit.strategies.check_distillation`, since users may register their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from distill_toolkit.config.base import ConfigError, Serializable, check, check_types, is_finite_number, is_int

LayerRef = Union[int, list]

FEATURES = ("hidden", "attention", "query", "key", "value", "module")
#: features taken per head, ``(batch, heads, length, head_dim)``: compared by relations, never projected
HEAD_FEATURES = ("query", "key", "value")
PAIR_LOSSES = ("fsp", "gram", "mmd", "nst")
#: losses that compare per-head relations (any width, any head count) and the one that compares attention maps
RELATION_LOSSES = ("minilmv2_relation", "minilm_value_relation")
ATTENTION_ONLY_LOSSES = ("minilm_attention",)
TEACHER_COMBINATIONS = ("mean", "weights", "confidence")


@dataclass
class Match(Serializable):
    """One intermediate match: a teacher feature, a student feature, a loss and a weight.

    ``feature`` is ``"hidden"`` (hidden states; layer 0 is the embedding output, layer
    ``i`` the output of block ``i``, as in Hugging Face's ``hidden_states``),
    ``"attention"`` (attention probabilities of block ``i``, 0-based), ``"query"`` / ``"key"`` /
    ``"value"`` (block ``i``'s self-attention queries, keys or values per head, for the MiniLM
    relation losses) or ``"module"`` (the output of any named module: set
    ``teacher_module``/``student_module``). ``fsp``/``mmd`` take a pair of layers on each side, e.g.
    ``teacher_layer: [0, 2]``.

    ``loss_kwargs`` are passed to the loss as keywords, e.g. MiniLMv2's query-query relation over
    12 relation heads: ``{feature: query, loss: minilmv2_relation, loss_kwargs: {relation_heads: 12}}``.

    ``projection`` (``"linear"``, ``"relu"``, ``"tanh"``) maps the student feature to the
    teacher's width; its sizes are read from the models. TextBrewer's
    ``["linear", dim_S, dim_T]`` form is accepted too.

    With several teachers, ``teacher`` names the teacher role the match reads (default: every
    teacher); with several tasks, ``task`` names the task it applies to (default: every task).
    """

    #: the teacher layer (hidden: 0 is the embedding output), or a pair `[i, j]` for `fsp`/`mmd`
    teacher_layer: Optional[LayerRef] = None
    #: the student layer compared with it, as `teacher_layer`
    student_layer: Optional[LayerRef] = None
    #: `hidden`, `attention`, `query`, `key`, `value` or `module` (a named module's output)
    feature: str = "hidden"
    #: the feature loss by name: `hidden_mse`, `cos`, `attention_mse`, `attention_ce`, `fsp`, `mmd`,
    #: `minilm_value_relation`, ...
    loss: str = "hidden_mse"
    #: weight of this match in the total loss
    weight: float = 1.0
    #: how the weight changes over training: `constant`, `linear_growth`, `linear_decay`
    weight_schedule: str = "constant"
    #: map the student feature to the teacher's width: `linear`, `relu` or `tanh` (or TextBrewer's `[kind, dim_S,
    #: dim_T]`)
    projection: Optional[Union[str, list]] = None
    #: `feature: module`: the teacher module's name in `named_modules()`
    teacher_module: Optional[str] = None
    #: `feature: module`: the student module's name in `named_modules()`
    student_module: Optional[str] = None
    #: several teachers: the teacher role this match reads; unset: every teacher
    teacher: Optional[str] = None
    #: several tasks: the task this match applies to; unset: every task
    task: Optional[str] = None
    #: keywords of the loss, e.g. `{relation_heads: 12}` for the MiniLMv2 relations
    loss_kwargs: dict = field(default_factory=dict)

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

        loss = f"{self.loss}.{self.feature}" if self.feature in HEAD_FEATURES else self.loss  # qq, kk, vv apart
        return f"{loss}/S{tag(self.student_layer)}-T{tag(self.teacher_layer)}"

    def validate(self, where: str = "match") -> None:
        check(self.feature in FEATURES, f"{where}.feature", f"unknown feature {self.feature!r}",
              f"use one of {', '.join(FEATURES)}")
        for name in ("teacher", "task"):
            value = getattr(self, name)
            check(value is None or (isinstance(value, str) and value != ""), f"{where}.{name}",
                  f"must be a {name} name or null, got {value!r}",
                  f"remove it (the match then applies to every {name}) or name one, e.g. `{name}: "
                  + ("teacher0`" if name == "teacher" else "movies`"))
        check(is_finite_number(self.weight) and self.weight >= 0, f"{where}.weight",
              f"must be a finite number >= 0, got {self.weight!r}", "set e.g. `weight: 1.0`")
        check(isinstance(self.weight_schedule, str), f"{where}.weight_schedule",
             f"must be a schedule name, got {self.weight_schedule!r}", "e.g. `weight_schedule: linear_decay`")
        if self.projection is not None:
            ok = isinstance(self.projection, str) or (
                isinstance(self.projection, list) and len(self.projection) in (3, 4)
                and isinstance(self.projection[0], str) and all(is_int(d) for d in self.projection[1:3]))
            check(ok, f"{where}.projection", f"bad value {self.projection!r}",
                  "use a kind (`linear`, `relu`, `tanh`) or TextBrewer's [kind, dim_student, dim_teacher]")
        self._validate_relation(where)
        check_types(self, where)
        if self.feature == "module":
            for side in ("teacher_module", "student_module"):
                value = getattr(self, side)
                check(isinstance(value, str) and value != "", f"{where}.{side}",
                      "feature 'module' needs a module name on both sides",
                      "set it to a name from model.named_modules(), e.g. `bert.encoder.layer.2.output`")
            return
        pair = self.loss in PAIR_LOSSES
        for side in ("teacher_layer", "student_layer"):
            value = getattr(self, side)
            if pair:
                check(isinstance(value, list) and len(value) == 2 and all(is_int(v) and v >= 0 for v in value),
                      f"{where}.{side}", f"loss {self.loss!r} compares a pair of layers, got {value!r}",
                      "give two layer indices, e.g. `[0, 2]`")
            else:
                check(is_int(value) and value >= 0, f"{where}.{side}",
                      f"must be a layer index >= 0, got {value!r}",
                      f"set it (feature {self.feature!r} indexes layers; layer 0 is the embedding output for 'hidden')")


    def _validate_relation(self, where: str) -> None:
        """``loss_kwargs`` is a mapping; per-head features and relation/attention losses go together."""
        check(isinstance(self.loss_kwargs, dict) and all(isinstance(k, str) for k in self.loss_kwargs),
              f"{where}.loss_kwargs", f"must be a mapping of keyword names to values, got {self.loss_kwargs!r}",
              "e.g. `loss_kwargs: {relation_heads: 12}`, or remove it")
        if self.feature in HEAD_FEATURES:
            check(self.projection is None, f"{where}.projection",
                  f"feature {self.feature!r} is compared through relations (any width), so it is never projected",
                  "remove `projection`")
        if self.loss in RELATION_LOSSES:
            check(self.feature != "attention", f"{where}.feature",
                  f"loss {self.loss!r} compares relations of query/key/value vectors, not attention maps",
                  "set `feature: query`, `key` or `value` (MiniLMv2: one match each), or use loss minilm_attention")
        if self.loss in ATTENTION_ONLY_LOSSES:
            check(self.feature == "attention", f"{where}.feature",
                  f"loss {self.loss!r} compares attention distributions, but the match reads {self.feature!r}",
                  "set `feature: attention` (MiniLM: the last layer of both models)")


@dataclass
class DistillationConfig(Serializable):
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

    #: what is learnt, by registry name: `single`, `supervised`, `multi_teacher`, `multi_task`, `causal_lm` or your
    #: own
    strategy: str = "single"
    #: the task by registry name (`sequence_classification`, `token_classification`, ...); `auto`: the one the data
    #: implies
    task: str = "auto"
    #: the KD temperature T (logits are divided by it)
    temperature: float = 1.0
    #: `constant`, or TextBrewer's dynamic ones: `[flsw, beta, gamma]`, `[cwsm, beta]`
    temperature_scheduler: Any = "constant"
    #: the logits loss by name: `kd_ce`, `kd_mse`, `forward_kl`, `reverse_kl`, `jsd`, `skew_kl`, `total_variation`,
    #: `multilabel_kd`
    kd_loss: str = "kd_ce"
    #: keywords of the KD loss, e.g. `{beta: 0.5}` for `jsd` or `{top_k: 50}`
    kd_loss_kwargs: dict = field(default_factory=dict)
    #: weight of the KD term
    kd_loss_weight: float = 1.0
    #: how the KD weight changes over training: `constant`, `linear_growth`, `linear_decay`
    kd_loss_weight_schedule: str = "constant"
    #: weight of the student's own loss on the gold labels (0: KD only)
    hard_label_weight: float = 0.0
    #: how the hard-label weight changes over training: `constant`, `linear_growth`, `linear_decay`
    hard_label_weight_schedule: str = "constant"
    #: swap the teacher's top logit with the gold label's when the teacher is wrong (TextBrewer's option)
    probability_shift: bool = False
    #: intermediate matches between teacher and student features (the `matches:` items below)
    matches: list = field(default_factory=list)
    #: several teachers: `mean`, `weights` or `confidence` (per example, by top-class probability)
    teacher_combination: str = "mean"
    #: `teacher_combination: weights`: one weight per teacher (a list in teacher order or a `{role: weight}`
    #: mapping)
    teacher_weights: Optional[Union[list, dict]] = None
    #: free-form settings read by the strategy (custom strategies)
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
        for name in ("strategy", "task", "kd_loss"):
            value = getattr(self, name)
            check(isinstance(value, str) and value != "", f"{where}.{name}", f"must be a name, got {value!r}",
                 f"e.g. `{name}: {DistillationConfig.__dataclass_fields__[name].default}`")
        check(is_finite_number(self.temperature) and self.temperature > 0, f"{where}.temperature",
              f"must be a number > 0, got {self.temperature!r}", "set e.g. `temperature: 4`")
        check(isinstance(self.kd_loss_kwargs, dict), f"{where}.kd_loss_kwargs", "must be a mapping",
              "e.g. `kd_loss_kwargs: {beta: 0.5}`")
        for name in ("kd_loss_weight", "hard_label_weight"):
            value = getattr(self, name)
            check(is_finite_number(value) and value >= 0, f"{where}.{name}", f"must be a number >= 0, got {value!r}",
                  f"set e.g. `{name}: 1.0`")
        check(isinstance(self.probability_shift, bool), f"{where}.probability_shift", "must be true or false",
              "set `probability_shift: true` to swap the teacher's top logit with the true label's")
        for i, match in enumerate(self.matches):
            match.validate(f"{where}.matches[{i}]")
        if self.task == "general":
            self.validate_general(where)
        check(self.teacher_combination in TEACHER_COMBINATIONS, f"{where}.teacher_combination",
              f"unknown combination {self.teacher_combination!r}", f"use one of {', '.join(TEACHER_COMBINATIONS)}")
        weights = self.teacher_weights
        if weights is not None:
            values = list(weights.values()) if isinstance(weights, dict) else weights
            check(isinstance(weights, (list, dict)) and all(is_finite_number(w) and w >= 0 for w in values)
                  and sum(values) > 0, f"{where}.teacher_weights",
                  f"must be a list (or role -> weight mapping) of numbers >= 0 with a positive sum, got {weights!r}",
                  "e.g. `teacher_weights: [0.5, 0.3, 0.2]`, one per teacher")
            check(self.teacher_combination == "weights", f"{where}.teacher_weights",
                  f"is set but teacher_combination is {self.teacher_combination!r}, which ignores it",
                  "set `teacher_combination: weights`, or remove teacher_weights")
        check(self.teacher_combination != "weights" or weights is not None, f"{where}.teacher_weights",
              "teacher_combination is 'weights' but no teacher_weights are given",
              "give one weight per teacher, e.g. `teacher_weights: [2, 1]`")
        check(isinstance(self.strategy_options, dict), f"{where}.strategy_options", "must be a mapping",
              "e.g. `strategy_options: {tau: 1.0}`")

    def validate_general(self, where: str = "distillation") -> None:
        """Task-agnostic distillation (``task: general``): encoders on unlabelled text, features only."""
        for name in ("kd_loss_weight", "hard_label_weight"):
            check(getattr(self, name) == 0, f"{where}.{name}",
                  "task 'general' distils encoders on unlabelled text: there are no logits and no labels",
                  f"set `{name}: 0` and learn from intermediate matches (hidden, attention or relation losses)")
        check(not self.probability_shift, f"{where}.probability_shift", "task 'general' has no labels to shift to",
              "set `probability_shift: false`")
        check(bool(self.matches), f"{where}.matches", "task 'general' learns from intermediate matches only, "
              "and none is given", "add e.g. `{feature: value, teacher_layer: 5, student_layer: 3, "
              "loss: minilmv2_relation}` or a hidden_mse match")
        check_types(self, where)
