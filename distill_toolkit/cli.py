"""``distill-toolkit``: run a whole distillation from a YAML file, or inspect a model.

    distill-toolkit train CONFIG.yaml [--set training.max_steps=50 ...]
    distill-toolkit params MODEL_DIR [--max-level 3]

Under ``accelerate launch`` use ``-m distill_toolkit.cli train CONFIG.yaml``.
"""

from __future__ import annotations

import argparse
import json
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
    from distill_toolkit.data import PaddingCollator, tokenize_classification
    from distill_toolkit.engine import Trainer
    from distill_toolkit.models import load_classifier, load_tokenizer, student_from_teacher

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
    else:
        student = load_classifier(config.student.path, attn_implementation=config.student.attn_implementation or attn,
                                  config_overrides=config.student.config)
        tokenizer_path = config.student.path
    tokenizer = load_tokenizer(tokenizer_path)

    data = load_data(config.data)
    if config.data.max_train_examples:
        data["train"] = data["train"].select(range(min(config.data.max_train_examples, len(data["train"]))))
    tokenized = tokenize_classification(data, tokenizer, max_length=config.data.max_length,
                                        text_column=config.data.text_column, label_column=config.data.label_column)
    trainer = Trainer(student, config.training, dist, tokenized["train"], teacher=teacher,
                      eval_data=tokenized["dev"], collate_fn=PaddingCollator(tokenizer), tokenizer=tokenizer)
    result = trainer.train()
    if "test" in tokenized:
        result["test"] = trainer.evaluate(tokenized["test"])
    return result


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
    result = run_experiment(config)
    summary = {k: v for k, v in result.items() if k != "history"}
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
