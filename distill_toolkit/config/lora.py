"""A LoRA student (``student.lora``): which modules get low-rank adapters, of what rank, and what else trains.

Only values are checked here; whether the named modules exist is checked when the student is
loaded (:func:`distill_toolkit.lora.apply_lora`), and that ``peft`` is installed when it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from distill_toolkit.config.base import Serializable, check, check_types, is_finite_number, is_int

LORA_BIASES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"


@dataclass
class LoraSpec(Serializable):
    """Low-rank adapters on the student (through ``peft``); only they (and ``modules_to_save``) train.

    - ``r``: the rank of each adapter (default 8); ``alpha``: its scale is ``alpha / r`` (default 16).
    - ``dropout``: dropout on the adapter's input while training (default 0).
    - ``target_modules``: the modules that get adapters, by name (``[q_proj, v_proj]``: every module
      whose name ends with one of them), ``all-linear`` (every linear layer but the output head), or
      null for ``peft``'s default of the architecture (e.g. ``q_proj``/``v_proj`` for Llama).
    - ``modules_to_save``: modules trained in full beside the adapters (e.g. a new head). A
      classification task's head (``classifier`` / ``score``; ``qa_outputs`` for QA) is added by
      ``peft`` itself, so a new head always trains.
    - ``bias``: ``none`` (default), ``all`` or ``lora_only``: which biases train too.
    - ``save_adapter``: write the adapter (``peft``'s safetensors) into ``adapter/`` of every export,
      beside the merged model (default true).
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Union[list, str, None] = None
    modules_to_save: Optional[list] = None
    bias: str = "none"
    save_adapter: bool = True

    def validate(self, where: str = "student.lora") -> None:
        check(is_int(self.r) and self.r > 0, f"{where}.r", f"must be a positive integer, got {self.r!r}",
              "set e.g. `r: 8`")
        check(is_finite_number(self.alpha) and self.alpha > 0, f"{where}.alpha", f"must be a number > 0, got "
              f"{self.alpha!r}", "set e.g. `alpha: 16` (the adapter's scale is alpha / r)")
        check(is_finite_number(self.dropout) and 0 <= self.dropout < 1, f"{where}.dropout",
              f"must be in [0, 1), got {self.dropout!r}", "set e.g. `dropout: 0.05`, or 0")
        names = self.target_modules
        check(names is None or names == ALL_LINEAR or _names(names), f"{where}.target_modules",
              f"must be a list of module names, `{ALL_LINEAR}` or null, got {names!r}",
              "e.g. `target_modules: [q_proj, v_proj]` (Llama) or `[query, value]` (BERT)")
        check(self.modules_to_save is None or _names(self.modules_to_save), f"{where}.modules_to_save",
              f"must be a list of module names or null, got {self.modules_to_save!r}", "e.g. `modules_to_save: "
              "[classifier]`, or remove it (a classification head is trained anyway)")
        check(self.bias in LORA_BIASES, f"{where}.bias", f"unknown value {self.bias!r}",
              f"use one of {', '.join(LORA_BIASES)}")
        check_types(self, where)


def _names(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(n, str) and n.strip() for n in value)
