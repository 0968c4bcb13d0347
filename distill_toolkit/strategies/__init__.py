"""Distillation strategies, found by name: ``distill_toolkit.strategies.get("single")``.

:func:`build_strategy` checks a :class:`~distill_toolkit.config.DistillationConfig` (values, then the
registry names it holds: :func:`check_distillation`) and builds its strategy. The KD objective the
logits strategies share is :class:`KDObjective`.
"""

from distill_toolkit.strategies.base import (
    Strategy,
    StrategyError,
    UnknownStrategyError,
    available_strategies,
    get,
    register_strategy,
)
from distill_toolkit.strategies.checks import build_strategy, check_distillation
from distill_toolkit.strategies.objective import KDObjective, match_feature_keys, select_rows
from distill_toolkit.strategies import single as _single  # noqa: F401  (registers "single")
from distill_toolkit.strategies import supervised as _supervised  # noqa: F401  (registers "supervised")
from distill_toolkit.strategies import multi_teacher as _multi_teacher  # noqa: F401  (registers "multi_teacher")
from distill_toolkit.strategies import multi_task as _multi_task  # noqa: F401  (registers "multi_task")
from distill_toolkit.strategies import causal_lm as _causal_lm  # noqa: F401  (registers "causal_lm")
from distill_toolkit.strategies.causal_lm import CausalLMDistillation
from distill_toolkit.strategies.multi_task import MultiTask
from distill_toolkit.strategies.multi_teacher import MultiTeacher, combine_logits
from distill_toolkit.strategies.single import SingleTeacher
from distill_toolkit.strategies.supervised import Supervised

__all__ = [
    "Strategy", "StrategyError", "UnknownStrategyError", "available_strategies", "build_strategy",
    "check_distillation", "get", "register_strategy", "KDObjective", "match_feature_keys", "select_rows",
    "SingleTeacher", "Supervised", "MultiTeacher", "MultiTask", "combine_logits", "CausalLMDistillation",
]
