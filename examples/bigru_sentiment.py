"""A BiGRU student distilled from the MiniLM teacher on movie-review sentiment (TextBrewer's BiGRU row).

    python examples/bigru_sentiment.py examples/configs/results/bigru_kd.yaml
    python examples/bigru_sentiment.py examples/configs/results/bigru_base.yaml --set training.max_steps=20

The YAML file has the CLI's format (``distill-toolkit train``), read and validated by the same
code; only the student differs, because a GRU is not a Hugging Face model:

- ``student.path`` names the tokenizer. It is the teacher's, so the GRU reads the same tokens
  as the teacher (a hidden-state match needs the positions to line up).
- ``student.config`` holds the :class:`~bigru.BiGRUClassifier` sizes (``embed_dim``,
  ``hidden_size``, ``num_layers``, ``dropout``) and ``init_embeddings``: ``teacher`` copies
  the teacher's word embeddings (``embed_dim`` must then equal the teacher's width),
  ``random`` leaves them random. Other weights are random, seeded by ``training.seed``, so the
  distilled run and its no-teacher baseline start from the same point.

``data.augment`` grows the training split as in the CLI (``docs/task_agnostic.md``): the copies
are labelled by the teacher alone (labels ``-100``, so ``hard_label_weight: 0``), and
``replace_with: embedding`` finds the replacement words in the teacher's input embeddings.

The student is trained by the toolkit's :class:`~distill_toolkit.Trainer` through the custom
adaptor :func:`bigru.bigru_adaptor`; the exported folder holds ``model.safetensors``, the
tokenizer and ``bigru.json`` (the sizes), read back by :func:`load_student`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bigru import BiGRUClassifier, bigru_adaptor  # noqa: E402

from distill_toolkit.cli import load_experiment, tokenized_data  # noqa: E402
from distill_toolkit.config import ConfigError, ExperimentConfig  # noqa: E402

SIZE_KEYS = ("embed_dim", "hidden_size", "num_layers", "dropout")


def student_sizes(config: ExperimentConfig) -> tuple[dict, str]:
    """The BiGRU's constructor arguments and the embedding initialisation, checked."""
    options = dict(config.student.config)
    init = options.pop("init_embeddings", "random")
    unknown = sorted(set(options) - set(SIZE_KEYS))
    if unknown:
        raise ConfigError(f"student.config.{unknown[0]}", "is not a BiGRU setting",
                          f"use {', '.join(SIZE_KEYS)} or init_embeddings")
    if init not in ("teacher", "random"):
        raise ConfigError("student.config.init_embeddings", f"unknown value {init!r}", "use `teacher` or `random`")
    if init == "teacher" and config.teacher is None:
        raise ConfigError("student.config.init_embeddings", "is `teacher` but there is no `teacher:` section",
                          "add the teacher's path, or use `init_embeddings: random`")
    return options, init


def build_student(config: ExperimentConfig, tokenizer) -> BiGRUClassifier:
    """A seeded BiGRU over ``tokenizer``'s vocabulary, its embeddings optionally copied from the teacher."""
    from distill_toolkit.models import load_classifier

    sizes, init = student_sizes(config)
    torch.manual_seed(config.training.seed)
    student = BiGRUClassifier(vocab_size=len(tokenizer), padding_idx=tokenizer.pad_token_id, **sizes)
    if init == "teacher":
        source = load_classifier(config.teacher.path).get_input_embeddings().weight
        if tuple(source.shape) != tuple(student.embedding.weight.shape):
            raise ConfigError("student.config.embed_dim", f"teacher embeddings are {tuple(source.shape)}, the "
                              f"BiGRU's {tuple(student.embedding.weight.shape)}",
                              f"set embed_dim: {source.shape[1]}, or init_embeddings: random")
        with torch.no_grad():
            student.embedding.weight.copy_(source)
    return student


def load_student(model_dir) -> BiGRUClassifier:
    """A trained BiGRU back from its exported folder (safetensors, no pickle)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "bigru.json").read_text())
    model = BiGRUClassifier(**meta)
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model.eval()


def run(config: ExperimentConfig) -> dict:
    """Train the BiGRU of ``config`` (distilled or not) and evaluate it on dev and test, like the CLI."""
    from distill_toolkit.data import PaddingCollator
    from distill_toolkit.engine import Trainer
    from distill_toolkit.models import load_classifier, load_tokenizer

    tokenizer = load_tokenizer(config.student.path)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids: the GRU takes none
    student = build_student(config, tokenizer)
    teacher = None
    if config.distillation.strategy != "supervised":
        teacher = load_classifier(config.teacher.path, config_overrides=config.teacher.config)
    data = tokenized_data(config, tokenizer, teacher)  # teacher: embedding neighbours for data.augment
    trainer = Trainer(student, config.training, config.distillation, data["train"], teacher=teacher,
                      eval_data=data["dev"], test_data=data["test"], collate_fn=PaddingCollator(tokenizer),
                      tokenizer=tokenizer, student_adaptor=bigru_adaptor)  # result["test"]: the test split's scores
    result = trainer.train()
    meta = {"vocab_size": len(tokenizer), "padding_idx": tokenizer.pad_token_id, "num_labels": student.num_labels,
            **student_sizes(config)[0]}
    (Path(result["export_dir"]) / "bigru.json").write_text(json.dumps(meta, indent=2))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config field (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        config = load_experiment(args.config, args.set)
        student_sizes(config)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    result = run(config)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
