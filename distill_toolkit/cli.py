"""``distill-toolkit``: run a whole distillation from a YAML file, or inspect a model.

    distill-toolkit train CONFIG.yaml [--set training.max_steps=50 ...]
    distill-toolkit cache-teacher CONFIG.yaml [--overwrite]   (writes training.teacher_cache)
    distill-toolkit params MODEL_DIR [--max-level 3]

Under ``accelerate launch`` use ``-m distill_toolkit.cli train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import yaml

from distill_toolkit.config import ConfigError, DataSpec, ExperimentConfig


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
    """Read, override and validate an experiment config (before any model or data is loaded)."""
    with open(path) as handle:
        data = yaml.safe_load(handle) or {}
    config = ExperimentConfig.from_dict(_apply_overrides(data, overrides or []))
    config.validate()
    return config


def run_experiment(config: ExperimentConfig) -> dict:
    """Build data, teacher and student from ``config`` and train; returns the trainer's result."""
    if config.data.name == "text":  # causal LMs (distill_toolkit/cli_lm.py)
        from distill_toolkit.cli_lm import run_lm_experiment

        return run_lm_experiment(config)
    from distill_toolkit.data import PaddingCollator
    from distill_toolkit.engine import Trainer
    from distill_toolkit.models import load_classifier, load_tokenizer, random_student, student_from_teacher

    dist = config.distillation
    needs_attention = any(m.feature == "attention" for m in dist.matches)
    attn = "eager" if needs_attention else None
    teacher = None
    if config.teacher is not None and dist.strategy != "supervised":
        teacher = load_classifier(config.teacher.path, attn_implementation=config.teacher.attn_implementation or attn,
                                  config_overrides=config.teacher.config)
    if config.student.init_from == "teacher":
        base = teacher if teacher is not None else load_classifier(config.teacher.path, attn_implementation=attn)
        student = student_from_teacher(base, config.student.layers or [], config.student.config)
        tokenizer_path = config.teacher.path
    elif config.student.init_from == "random":  # same seed, same initial weights: KD run and baseline compare
        student = random_student(config.student.path, config.student.config, seed=config.training.seed,
                                 attn_implementation=config.student.attn_implementation or attn)
        tokenizer_path = config.student.path
    else:
        student = load_classifier(config.student.path, attn_implementation=config.student.attn_implementation or attn,
                                  config_overrides=config.student.config)
        tokenizer_path = config.student.path
    tokenizer = load_tokenizer(tokenizer_path)

    tokenized = tokenized_data(config, tokenizer)
    if config.training.teacher_cache:  # written by `cache-teacher`; the teacher is checked against it, never run
        from distill_toolkit.data.teacher_cache import resolve_teacher_cache

        teacher = resolve_teacher_cache(config.training.teacher_cache, teacher).check(tokenizer=tokenizer)
    trainer = Trainer(student, config.training, dist, tokenized["train"], teacher=teacher,
                      eval_data=tokenized["dev"], collate_fn=PaddingCollator(tokenizer), tokenizer=tokenizer)
    result = trainer.train()
    if "test" in tokenized:
        result["test"] = trainer.evaluate(tokenized["test"])
    return result


def tokenized_data(config: ExperimentConfig, tokenizer):
    """The tokenized splits a run trains on; the training examples carry an ``id`` when a teacher cache is used."""
    from distill_toolkit.data import subsample, tokenize_classification

    data = load_data(config.data)
    if config.data.max_train_examples:
        data["train"] = subsample(data["train"], config.data.max_train_examples, seed=config.data.seed)
    tokenized = tokenize_classification(data, tokenizer, max_length=config.data.max_length,
                                        text_column=config.data.text_column, label_column=config.data.label_column)
    if config.training.teacher_cache:
        from distill_toolkit.data.teacher_cache import with_ids

        tokenized["train"] = with_ids(tokenized["train"])
    return tokenized


def cache_teacher(config: ExperimentConfig, overwrite: bool = False):
    """Run the teacher of ``config`` once over its training data and write ``training.teacher_cache``."""
    from distill_toolkit.data import PaddingCollator
    from distill_toolkit.data.teacher_cache import build_teacher_cache
    from distill_toolkit.models import load_classifier, load_tokenizer

    t = config.training
    if not t.teacher_cache:
        raise ConfigError("training.teacher_cache", "is not set, so there is nowhere to write the cache",
                          "set e.g. `teacher_cache: outputs/teacher_cache` in the training section")
    dist = config.distillation
    if config.teacher is None or dist.strategy == "supervised":
        raise ConfigError("teacher", "there is no teacher to cache", "add a `teacher:` section with a `path`")
    if config.data.name == "text":  # causal LMs (distill_toolkit/cli_lm.py)
        from distill_toolkit.cli_lm import cache_lm_teacher

        return cache_lm_teacher(config, overwrite)
    attn = "eager" if any(m.feature == "attention" for m in dist.matches) else None
    teacher = load_classifier(config.teacher.path, attn_implementation=config.teacher.attn_implementation or attn,
                              config_overrides=config.teacher.config)
    tokenizer = load_tokenizer(config.teacher.path if config.student.init_from == "teacher" else config.student.path)
    train = tokenized_data(config, tokenizer)["train"]
    return build_teacher_cache(teacher, train, t.teacher_cache, collate_fn=PaddingCollator(tokenizer),
                               distillation=dist, tokenizer=tokenizer, top_k=t.teacher_cache_top_k,
                               dtype=t.teacher_cache_dtype, batch_size=t.eval_batch_size, overwrite=overwrite)


def load_data(spec: DataSpec):
    """The train/dev(/test) DatasetDict named by a :class:`DataSpec`."""
    if spec.name == "sentiment":
        from distill_toolkit.data import load_sentiment

        return load_sentiment(spec.domain, seed=spec.seed, max_examples=spec.max_examples)
    import datasets

    files = {k: v for k, v in (("train", spec.train_file), ("dev", spec.dev_file), ("test", spec.test_file)) if v}
    kind = "csv" if spec.train_file.endswith(".csv") else "json"
    data = datasets.load_dataset(kind, data_files=files)
    for split, part in data.items():
        missing = {spec.text_column, spec.label_column} - set(part.column_names)
        if missing:
            raise ConfigError(f"data.{split}_file", f"columns {sorted(missing)} missing (found {part.column_names})",
                              "set data.text_column / data.label_column to the file's column names")
    return data


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-toolkit", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a distillation (or supervised training) from a YAML/JSON file")
    train.add_argument("config")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config field (repeatable)")
    cache = sub.add_parser("cache-teacher", help="run the teacher once over the training data and write "
                                                 "training.teacher_cache (resumable; `accelerate launch` splits it)")
    cache.add_argument("config")
    cache.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config field (repeatable)")
    cache.add_argument("--overwrite", action="store_true", help="replace a cache built for another teacher or data")
    params = sub.add_parser("params", help="print a model's parameter table")
    params.add_argument("model_dir")
    params.add_argument("--max-level", type=int, default=2)
    args = parser.parse_args(argv)

    if args.command == "params":
        from transformers import AutoModel

        from distill_toolkit.models import resolve_model_path
        from distill_toolkit.utils import display_parameters

        model = AutoModel.from_pretrained(resolve_model_path(args.model_dir))
        print(display_parameters(model, max_level=args.max_level))
        return 0

    try:
        config = load_experiment(args.config, args.set)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    if args.command == "cache-teacher":
        try:
            cache = cache_teacher(config, overwrite=args.overwrite)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
        if _is_main_process():
            print(json.dumps({"teacher_cache": str(cache.path), "examples": len(cache), **cache.build_stats,
                              "bytes_per_token": cache.bytes_per_token, "top_k": cache.top_k}, indent=2))
        _close_process_group()
        return 0
    result = run_experiment(config)
    if _is_main_process():
        summary = {k: v for k, v in result.items() if k != "history"}
        print(json.dumps(summary, indent=2, default=str))
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """Under a launch, wait for every rank, then tear the process group down before the interpreter exits:
    a rank that leaves first can otherwise abort the others' gloo threads mid-shutdown."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _is_main_process() -> bool:
    """Rank 0 of a launch (torchrun and `accelerate launch` set RANK), or a plain `python` run."""
    return int(os.environ.get("RANK", "0")) == 0


if __name__ == "__main__":
    sys.exit(main())
