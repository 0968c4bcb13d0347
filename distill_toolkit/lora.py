"""LoRA students through ``peft``: adapters placed on a loaded student, and the merged model an export writes.

``peft`` is an optional dependency (``pip install distill_toolkit[lora]``), imported only where a
LoRA student is built or exported. A LoRA student is a ``peft.PeftModel``: its frozen base weights
and its adapters live in one module, so the loop, checkpoints and resume treat it as any student
(the optimiser gets only the parameters that require a gradient: the adapters and
``modules_to_save``). Exports write the base model with the adapters merged in (loadable by plain
``transformers``), and the adapter itself in ``adapter/``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from distill_toolkit.config import ConfigError
from distill_toolkit.config.lora import ALL_LINEAR, LoraSpec

ADAPTER_DIR = "adapter"
# peft's task types: a classification or QA task type makes peft train the task's head in full.
PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS",
                   "multilabel_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
                   "question_answering": "QUESTION_ANS"}


def _peft():
    try:
        import peft
    except ImportError as err:
        raise ConfigError("student.lora", "needs the `peft` package, which is not installed",
                          "pip install 'distill_toolkit[lora]' (or `pip install peft`), or remove student.lora") \
            from err
    return peft


def is_lora(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft`` model (checked without importing ``peft``)."""
    return type(model).__module__.startswith("peft.") and hasattr(model, "peft_config")


def base_model(model: nn.Module) -> nn.Module:
    """The model under a ``peft`` wrapper (with its adapter layers in place), else ``model`` itself."""
    return model.get_base_model() if is_lora(model) else model


def module_names(model: nn.Module, limit: int = 12) -> list[str]:
    """Distinct last parts of the names of ``model``'s leaf modules with weights, linear layers (what adapters
    are placed on) first."""
    def rank(module: nn.Module) -> int:
        weight = getattr(module, "weight", None)
        linear = isinstance(weight, torch.Tensor) and weight.dim() == 2 and not isinstance(module, nn.Embedding)
        return 0 if linear else 1

    leaves = sorted(((rank(module), name.rsplit(".", 1)[-1]) for name, module in model.named_modules()
                     if name and not any(True for _ in module.children())
                     and any(True for _ in module.parameters(recurse=False))), key=lambda item: item[0])
    return list(dict.fromkeys(n for _, n in leaves if not n.isdigit()))[:limit]


def _check_names(model: nn.Module, names: Optional[list], field: str) -> None:
    """A :class:`ConfigError` naming ``field`` when a name matches no module (peft matches name suffixes)."""
    full = [name for name, _ in model.named_modules() if name]
    missing = [n for n in names or [] if not any(m == n or m.endswith("." + n) for m in full)]
    if missing:
        raise ConfigError(field, f"the student ({type(model).__name__}) has no module named "
                          f"{', '.join(map(repr, missing))}", f"use names of its modules, e.g. "
                          f"{', '.join(module_names(model))}")


def lora_config(spec: LoraSpec, task: Optional[str] = None):
    """The ``peft.LoraConfig`` of ``spec`` for a student of ``task`` (a task name; it picks peft's task type)."""
    peft = _peft()
    return peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                           target_modules=spec.target_modules, modules_to_save=spec.modules_to_save,
                           bias=spec.bias, task_type=PEFT_TASK_TYPES.get(task or ""))


def apply_lora(model: nn.Module, spec: LoraSpec, task: Optional[str] = None, where: str = "student.lora") -> nn.Module:
    """``model`` wrapped by ``peft`` with the adapters of ``spec``: every other weight is frozen.

    Names in ``target_modules`` / ``modules_to_save`` that match no module of ``model``, or an
    architecture ``peft`` has no default targets for, are a :class:`ConfigError` naming the field
    and listing module names the model has.
    """
    if is_lora(model):
        raise ConfigError(where, "the student already carries peft adapters", "remove student.lora, or load the "
                          "student without its adapters")
    if spec.target_modules != ALL_LINEAR:
        _check_names(model, spec.target_modules, f"{where}.target_modules")
    _check_names(model, spec.modules_to_save, f"{where}.modules_to_save")
    try:
        wrapped = _peft().get_peft_model(model, lora_config(spec, task))
    except ValueError as err:  # e.g. no default target modules for this architecture
        raise ConfigError(f"{where}.target_modules", f"peft cannot place the adapters: {err}",
                          f"name the modules, e.g. `target_modules: [{', '.join(module_names(model, 4))}]`") from err
    wrapped.export_adapter = spec.save_adapter  # read by the exports (see exports_adapter)
    return wrapped


def exports_adapter(model: nn.Module) -> bool:
    """Whether exports of LoRA student ``model`` write ``adapter/`` (``student.lora.save_adapter``; default yes)."""
    return bool(getattr(model, "export_adapter", True))


def adapter_config(model: nn.Module):
    """A copy of the (single, ``default``) adapter's ``peft`` config of a LoRA student."""
    configs = model.peft_config
    if len(configs) != 1:
        raise ValueError(f"a LoRA student with {len(configs)} adapters ({', '.join(configs)}) cannot be exported as "
                         "one merged model. Fix: keep one adapter")
    return copy.deepcopy(next(iter(configs.values())))


def save_adapter_config(model: nn.Module, folder: Path) -> Path:
    """Write the adapter's ``adapter_config.json`` into ``folder/adapter`` (a checkpoint's ``student/``)."""
    target = Path(folder) / ADAPTER_DIR
    adapter_config(model).save_pretrained(str(target))
    return target


def read_adapter_config(folder: Path):
    """The ``peft`` config saved by :func:`save_adapter_config` in ``folder/adapter``, or None if there is none."""
    target = Path(folder) / ADAPTER_DIR
    if not (target / "adapter_config.json").is_file():
        return None
    return _peft().PeftConfig.from_pretrained(str(target))


def save_merged(folder: Path, empty_base: nn.Module, config, state: dict, save_adapter: bool = True) -> list[str]:
    """Write the base model with the adapters merged in (``save_pretrained``) to ``folder``, and the adapter
    (``peft``'s safetensors and config) to ``folder/adapter`` when ``save_adapter``.

    ``empty_base`` is the base architecture (weights not needed: build it on the ``meta`` device),
    ``config`` the adapter's ``peft`` config and ``state`` the LoRA student's ``state_dict``. The
    student being trained is never touched: the merge runs on copies of ``state``'s tensors.
    Returns the names of the base's parameters ``state`` lacked (empty when all is well).
    """
    model = _peft().get_peft_model(empty_base, copy.deepcopy(config))
    model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False, assign=True)
    missing = [name for name, param in model.named_parameters() if param.is_meta]
    if missing:
        return missing
    if save_adapter:
        model.save_pretrained(str(Path(folder) / ADAPTER_DIR), safe_serialization=True)
    merged = model.merge_and_unload()
    merged.tie_weights()
    merged.save_pretrained(str(folder), safe_serialization=True)
    return []


def empty_like(model: nn.Module) -> nn.Module:
    """A weightless (``meta`` device) model of ``model``'s class and config: the base a merge is written from."""
    with torch.device("meta"):
        return type(model)(copy.deepcopy(model.config))
