"""``distill-toolkit``: run a whole distillation from a YAML file, or inspect a model.

    distill-toolkit train CONFIG.yaml [--set training.max_steps=50 ...]
    distill-toolkit cache-teacher CONFIG.yaml [--overwrite]   (writes training.teacher_cache)
    distill-toolkit params MODEL_DIR [--max-level 3]

Under ``accelerate launch`` use ``-m distill_toolkit.cli train CONFIG.yaml``. Every task of the
registry (:mod:`distill_toolkit.tasks`) runs through the same route: the task loads the models
(sized by the data's labels), encodes the data, batches it and scores the predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import torch.distributed as dist
import yaml
from accelerate.utils import set_seed
from transformers import AutoModel

from distill_toolkit import tasks
from distill_toolkit.config import ConfigError, ExperimentConfig, read_config_file
from distill_toolkit.data import load_splits, with_ids
from distill_toolkit.data.cache import resolve_teacher_cache
from distill_toolkit.engine import Trainer
from distill_toolkit.engine.accelerator import check_launch
from distill_toolkit.models import load_tokenizer, resolve_model_path, student_from_teacher
from distill_toolkit.strategies import check_distillation
from distill_toolkit.teachers import build_teacher_cache
from distill_toolkit.utils import display_parameters


def _apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` pairs (values parsed as YAML scalars) applied on top of the file."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like section.key=value", "e.g. --set training.max_steps=50")
        dotted, raw = item.split("=", 1)
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(dotted, f"{key!r} is not a section", "override a field inside a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def load_experiment(path: str, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Read, override and check an experiment config (values, registry names, the launch), before
    any model or data is loaded."""
    config = ExperimentConfig.from_dict(_apply_overrides(read_config_file(path), overrides or []))
    config.validate()
    check_distillation(config.distillation)
    check_launch(config.training)
    return config


def task_of(config: ExperimentConfig) -> tasks.Task:
    """The run's task: ``distillation.task``, or for ``auto`` the one its data implies."""
    name = config.distillation.task
    if name == "auto":
        name = {"text": "causal_lm", "twitter_ner": "token_classification"}.get(config.data.name,
                                                                                "sequence_classification")
    return tasks.get(name)


def build_models(config: ExperimentConfig, task: tasks.Task, labels, need_student: bool = True):
    """``(teacher or None, student or None, tokenizer)`` for ``task``, heads sized for ``labels``."""
    dist, teacher_spec, student_spec = config.distillation, config.teacher, config.student

    def load(spec, where):
        return task.load_model(spec.path, labels=labels, attn_implementation=spec.attn_implementation,
                               config_overrides=spec.config, where=where)

    teacher = load(teacher_spec, "teacher") if teacher_spec is not None and dist.strategy != "supervised" else None
    student = None
    if need_student and student_spec.init_from == "teacher":
        base = teacher if teacher is not None else load(teacher_spec, "teacher")
        student = student_from_teacher(base, student_spec.layers or [], student_spec.config)
    elif need_student and student_spec.init_from == "random":
        student = task.build_model(student_spec.path, labels=labels, attn_implementation=student_spec.attn_implementation,
                                   config_overrides=student_spec.config, where="student")
    elif need_student:
        student = load(student_spec, "student")
    tokenizer_path = teacher_spec.path if student_spec.init_from == "teacher" else student_spec.path
    return teacher, student, load_tokenizer(tokenizer_path)


def prepare(config: ExperimentConfig, need_student: bool = True):
    """Seed, read the data, build the models, encode the data: everything a run needs but the loop."""
    set_seed(config.training.seed)  # before any model or head is built: same config, same weights
    task = task_of(config)
    splits = load_splits(config.data)
    labels = task.label_names(splits, config.data)
    teacher, student, tokenizer = build_models(config, task, labels, need_student)
    return task, labels, teacher, student, tokenizer, _encode(config, task, splits, labels, tokenizer)


def tokenized_data(config: ExperimentConfig, tokenizer):
    """The splits of ``config.data`` encoded by its task for ``tokenizer`` (e.g. for a custom student)."""
    task = task_of(config)
    splits = load_splits(config.data)
    return _encode(config, task, splits, task.label_names(splits, config.data), tokenizer)


def _encode(config: ExperimentConfig, task: tasks.Task, splits, labels, tokenizer):
    encoded = task.encode(splits, tokenizer, config.data, labels)
    if config.training.teacher_cache:  # cached outputs are looked up by example id
        encoded["train"] = with_ids(encoded["train"])
    return encoded


def run_experiment(config: ExperimentConfig) -> dict:
    """Build data, teacher and student from ``config`` and train; returns the trainer's result."""
    task, labels, teacher, student, tokenizer, encoded = prepare(config)
    collate = task.collator(tokenizer, config.data)
    if config.training.teacher_cache:  # written by `cache-teacher`; the teacher is checked against it, never run
        teacher = resolve_teacher_cache(config.training.teacher_cache, teacher).check(tokenizer=tokenizer)
    trainer = Trainer(student, config.training, config.distillation, encoded["train"], teacher=teacher,
                      eval_data=encoded.get("dev"), test_data=encoded.get("test"), collate_fn=collate,
                      tokenizer=tokenizer, label_names=labels, task=task.name)
    return trainer.train()


def cache_teacher(config: ExperimentConfig, overwrite: bool = False):
    """Run the teacher of ``config`` once over its training data and write ``training.teacher_cache``."""
    t = config.training
    if not t.teacher_cache:
        raise ConfigError("training.teacher_cache", "is not set, so there is nowhere to write the cache",
                          "set e.g. `teacher_cache: outputs/teacher_cache` in the training section")
    if config.teacher is None or config.distillation.strategy == "supervised":
        raise ConfigError("teacher", "there is no teacher to cache", "add a `teacher:` section with a `path`")
    task, _, teacher, _, tokenizer, encoded = prepare(config, need_student=False)
    return build_teacher_cache(teacher, encoded["train"], t.teacher_cache,
                               collate_fn=task.collator(tokenizer, config.data), distillation=config.distillation,
                               tokenizer=tokenizer, top_k=t.teacher_cache_top_k, dtype=t.teacher_cache_dtype,
                               batch_size=t.eval_batch_size, overwrite=overwrite)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill-toolkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a distillation (or supervised training) from a YAML/JSON file")
    cache = sub.add_parser("cache-teacher", help="run the teacher once over the training data and write "
                                                 "training.teacher_cache (resumable; `accelerate launch` splits it)")
    for command in (train, cache):
        command.add_argument("config")
        command.add_argument("--debug", action="store_true", help="show the traceback of a config or data error")
        command.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                             help="override a config field (repeatable)")
    cache.add_argument("--overwrite", action="store_true", help="replace a cache built for another teacher or data")
    train.add_argument("--overwrite", action="store_true",
                       help="replace another (or a finished) run found in training.output_dir")
    params = sub.add_parser("params", help="print a model's parameter table")
    params.add_argument("model_dir")
    params.add_argument("--max-level", type=int, default=2)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """The command line; returns the exit code (2 for a config or data error)."""
    args = _parser().parse_args(argv)
    if args.command == "params":
        print(display_parameters(AutoModel.from_pretrained(resolve_model_path(args.model_dir)),
                                 max_level=args.max_level))
        return 0
    try:
        overrides = args.set + (["training.overwrite=true"] if args.command == "train" and args.overwrite else [])
        config = load_experiment(args.config, overrides)
        if args.command == "cache-teacher":
            cache = cache_teacher(config, overwrite=args.overwrite)
            summary = {"teacher_cache": str(cache.path), "examples": len(cache), **cache.build_stats,
                       "bytes_per_token": cache.bytes_per_token, "top_k": cache.top_k}
        else:
            summary = {k: v for k, v in run_experiment(config).items() if k != "history"}
    except (ConfigError, tasks.DataError) as err:
        if args.debug:
            raise
        kind = "config" if isinstance(err, ConfigError) else "data"
        print(f"{kind} error: {err}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(json.dumps(summary, indent=2, default=str))
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """Under a launch, wait for every rank, then tear the process group down before the interpreter exits:
    a rank that leaves first can otherwise abort the others' gloo threads mid-shutdown."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_main_process() -> bool:
    """Rank 0 of the whole job (every node), or a plain `python` run."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    sys.exit(main())
