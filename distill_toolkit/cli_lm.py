"""The CLI's causal-LM route (``data.name: text``): models as ``AutoModelForCausalLM``, text batches,
perplexity instead of accuracy. :mod:`distill_toolkit.cli` dispatches here."""

from __future__ import annotations

import json
from pathlib import Path

from distill_toolkit.config import ConfigError, DataSpec, ExperimentConfig


def load_text_data(spec: DataSpec) -> dict:
    """``{split: datasets.Dataset}`` of the text files named by ``spec`` (``.txt``: one example per line)."""
    import datasets

    splits = {}
    for split, path in (("train", spec.train_file), ("dev", spec.dev_file), ("test", spec.test_file)):
        if not path:
            continue
        if path.endswith(".txt"):
            lines = [line.rstrip("\n") for line in Path(path).read_text().splitlines() if line.strip()]
            part = datasets.Dataset.from_dict({spec.text_column: lines})
        else:
            part = datasets.load_dataset("csv" if path.endswith(".csv") else "json", data_files=path)["train"]
        needed = {spec.text_column} | ({spec.prompt_column} if spec.prompt_column else set())
        missing = needed - set(part.column_names)
        if missing:
            raise ConfigError(f"data.{split}_file", f"columns {sorted(missing)} missing (found {part.column_names})",
                              "set data.text_column (and data.prompt_column) to the file's column names")
        if len(part) == 0:
            raise ConfigError(f"data.{split}_file", f"{path} holds no examples", "give it at least one line of text")
        splits[split] = part
    if spec.max_train_examples:
        from distill_toolkit.data import subsample

        splits["train"] = subsample(splits["train"], spec.max_train_examples, seed=spec.seed)
    return splits


def lm_collator(config: ExperimentConfig, tokenizer):
    from distill_toolkit.data.lm import CausalLMCollator

    spec = config.data
    return CausalLMCollator(tokenizer, max_length=spec.max_length, text_column=spec.text_column,
                            prompt_column=spec.prompt_column, completion_column=spec.text_column)


def lm_models(config: ExperimentConfig, need_student: bool = True):
    """``(teacher or None, student or None, tokenizer)`` as causal LMs."""
    from distill_toolkit.models import load_causal_lm, load_tokenizer, student_from_teacher

    dist = config.distillation
    attn = "eager" if any(m.feature == "attention" for m in dist.matches) else None
    teacher = None
    if config.teacher is not None and dist.strategy != "supervised":
        teacher = load_causal_lm(config.teacher.path, config.teacher.attn_implementation or attn,
                                 config.teacher.config)
    student = None
    if config.student.init_from == "teacher":
        tokenizer_path = config.teacher.path
        if need_student:
            base = teacher if teacher is not None else load_causal_lm(config.teacher.path, attn)
            student = student_from_teacher(base, config.student.layers or [], config.student.config)
    else:
        tokenizer_path = config.student.path
        if need_student:
            student = load_causal_lm(config.student.path, config.student.attn_implementation or attn,
                                     config.student.config)
    return teacher, student, load_tokenizer(tokenizer_path)


def run_lm_experiment(config: ExperimentConfig) -> dict:
    """Train a causal-LM student from ``config``; ``eval``/``test`` hold held-out perplexity."""
    from distill_toolkit.data.lm import perplexity
    from distill_toolkit.engine import Trainer

    teacher, student, tokenizer = lm_models(config)
    splits = load_text_data(config.data)
    collate = lm_collator(config, tokenizer)
    train = splits["train"]
    if config.training.teacher_cache:  # written by `cache-teacher`; the teacher is checked against it, never run
        from distill_toolkit.data.teacher_cache import resolve_teacher_cache, with_ids

        train = with_ids(train)
        teacher = resolve_teacher_cache(config.training.teacher_cache, teacher).check(tokenizer=tokenizer)
    trainer = Trainer(student, config.training, config.distillation, train, teacher=teacher, collate_fn=collate,
                      tokenizer=tokenizer)
    result = trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.module).student
    for split, key in (("dev", "eval"), ("test", "test")):
        if split in splits:
            result[key] = perplexity(trained, splits[split], collate, config.training.eval_batch_size)
    if trainer.accelerator.is_main_process:
        (Path(config.training.output_dir) / "result.json").write_text(json.dumps(
            {k: v for k, v in result.items() if k != "history"}, indent=2, default=str))
    return result


def cache_lm_teacher(config: ExperimentConfig, overwrite: bool = False):
    """``cache-teacher`` for causal LMs: the teacher's (top-k) next-token log-probabilities per example."""
    from distill_toolkit.data.teacher_cache import build_teacher_cache, with_ids

    t = config.training
    teacher, _, tokenizer = lm_models(config, need_student=False)
    train = with_ids(load_text_data(config.data)["train"])
    return build_teacher_cache(teacher, train, t.teacher_cache, collate_fn=lm_collator(config, tokenizer),
                               distillation=config.distillation, tokenizer=tokenizer, top_k=t.teacher_cache_top_k,
                               dtype=t.teacher_cache_dtype, batch_size=t.eval_batch_size, overwrite=overwrite)
