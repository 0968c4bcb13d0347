"""The model card (``README.md``) that every export of a student carries.

It says where the student came from and how: the teacher(s), the student's starting point, the data,
the recipe (strategy, temperature, losses, matches, schedule), the metrics at export, the commands that
trained and exported it, the package versions, and how to load it. Everything is read from the run's
``config.yaml`` (see :mod:`distill_toolkit.engine.run_info`) and the metrics the loop knows.
"""

from __future__ import annotations

import json
from typing import Optional

from distill_toolkit.engine.run_info import CONFIG_FILE

_RECIPE = ("strategy", "task", "temperature", "temperature_scheduler", "kd_loss", "kd_loss_weight",
           "hard_label_weight", "kd_loss_weight_schedule", "teacher_combination")
_TRAINING = ("num_epochs", "max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate",
             "lr_scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "mixed_precision", "seed",
             "teacher_placement", "teacher_cache")
_AUTO_CLASS = {"sequence_classification": "AutoModelForSequenceClassification",
               "multilabel_classification": "AutoModelForSequenceClassification",
               "token_classification": "AutoModelForTokenClassification",
               "question_answering": "AutoModelForQuestionAnswering", "masked_lm": "AutoModelForMaskedLM",
               "causal_lm": "AutoModelForCausalLM"}


def _value(value) -> str:
    return f"`{json.dumps(value, default=str)}`" if isinstance(value, (list, dict)) else f"`{value}`"


def _spec(spec) -> str:
    """One line for a teacher or student section of the config."""
    if spec is None:
        return "none (trained on labels alone)"
    if not isinstance(spec, dict):
        return str(spec)
    parts = [f"`{spec['path']}`" if spec.get("path") else ""]
    if spec.get("init_from"):
        parts.append(f"initialised from {spec['init_from']}" + (f", layers {spec['layers']}" if spec.get("layers")
                                                                else ""))
    if spec.get("config"):
        parts.append(f"config changes {_value(spec['config'])}")
    return ", ".join(p for p in parts if p) or "given in Python"


def _data(data) -> str:
    if not isinstance(data, dict):
        return "given in Python (not recorded)"
    shown = {k: v for k, v in data.items() if v not in (None, [], {}) and k in (
        "name", "domain", "train_file", "dev_file", "test_file", "text_column", "label_column", "max_length",
        "max_examples", "max_train_examples")}
    return ", ".join(f"{k} {_value(v)}" for k, v in shown.items())


def _metrics(metrics: dict) -> list[str]:
    rows = []
    for split, values in metrics.items():
        if isinstance(values, dict):
            rows += [f"| {split} | {name} | {value:.4f} |" if isinstance(value, float) else
                     f"| {split} | {name} | {value} |" for name, value in values.items()]
        elif values is not None:
            rows.append(f"| {split} | | {values} |")
    return (["| split | metric | value |", "|---|---|---|"] + rows) if rows else ["No evaluation was run."]


def _recipe(config: dict) -> list[str]:
    dist, train = config.get("distillation") or {}, config.get("training") or {}
    lines = [f"- {k}: {_value(dist[k])}" for k in _RECIPE if dist.get(k) not in (None, [], {})]
    for match in dist.get("matches") or []:
        shown = {k: v for k, v in match.items() if v is not None} if isinstance(match, dict) else match
        lines.append(f"- match: {_value(shown)}")
    lines += [f"- training.{k}: {_value(train[k])}" for k in _TRAINING if train.get(k) not in (None, [], {})]
    return lines


def model_card(config: dict, info: dict, metrics: dict, step: Optional[int] = None,
               export_command: Optional[str] = None, model_class: Optional[str] = None,
               tokenizer: bool = True, custom_class: Optional[str] = None) -> str:
    """The ``README.md`` of an export: front matter for the Hub, then teacher, data, recipe, metrics, commands.

    Args:
        config: the run's resolved config (the body of ``config.yaml``).
        info: the header of ``config.yaml`` (``command``, ``processes``, ``versions``).
        metrics: ``{split: {name: value}}`` at export (e.g. ``{"eval": {...}, "test": {...}}``).
        step: the optimiser step of the weights.
        export_command: the command that exported them, when it was not the training run itself.
        model_class: the ``transformers`` class to load it with (default: the task's Auto class).
        tokenizer: whether the export holds a tokenizer (shown in the loading example).
        custom_class: for a student that is not a ``transformers`` model, its class (``module.Name``): the
            loading example then reads ``model.safetensors`` into it.
    """
    task = (config.get("distillation") or {}).get("task", "auto")
    auto = model_class or _AUTO_CLASS.get(task, "AutoModel")
    teachers = config.get("teacher") if "teacher" in config else "given in Python (not recorded)"
    versions = ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items())
    lines = ["---", "library_name: transformers", "tags:", "- distill_toolkit", "- knowledge-distillation", "---",
             "", "# Distilled student", "",
             f"Trained with distill_toolkit{f' to step {step}' if step is not None else ''}: strategy "
             f"`{(config.get('distillation') or {}).get('strategy', '?')}`.", "",
             f"- teacher: {_spec(teachers)}",
             f"- student: {_spec(config.get('student', 'given in Python (not recorded)'))}",
             f"- data: {_data(config.get('data'))}", "", "## Recipe", "", *_recipe(config), "",
             "## Metrics", "", *_metrics(metrics), "", "## How it was made", "", "```bash",
             info.get("command") or "(command not recorded)"]
    if export_command:
        lines.append(export_command)
    lines += ["```", "", f"Processes: {info.get('processes', '?')}. Versions: {versions or 'not recorded'}. "
              f"The full config is `{CONFIG_FILE}` beside this file "
              f"(`distill-toolkit train {CONFIG_FILE}` runs it again).", "",
              "## Use", "", "```python"]
    lines += _use(auto, tokenizer, custom_class)
    return "\n".join(lines + ["```", ""])


def _use(auto: str, tokenizer: bool, custom_class: Optional[str]) -> list[str]:
    """The loading example of the card."""
    if custom_class:
        module, _, name = custom_class.rpartition(".")
        return ["from safetensors.torch import load_file", f"from {module} import {name}", "",
                f"model = {name}(...)  # built as for training", 'model.load_state_dict(load_file('
                '"PATH/TO/THIS/FOLDER/model.safetensors"))']
    lines = [f"from transformers import {auto}" + (", AutoTokenizer" if tokenizer else ""), "",
             f'model = {auto}.from_pretrained("PATH/TO/THIS/FOLDER")']
    return lines + (['tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")'] if tokenizer else
                    ["# no tokenizer was given to the run: load the one the student was trained with"])
