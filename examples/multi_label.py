"""Multi-label classification with sigmoid KD: MiniLM teacher, 3-block student, micro/macro F1.

    python examples/multi_label.py            # the default recipe: about 10 minutes on 2 CPU cores
    python examples/multi_label.py --quick    # 50 sentences per domain and a few steps (a smoke run)

Label construction (a real multi-label target from the VADER corpora, ``load_sentiment``): the
first ``--per-domain`` sentences (default 2,000, split 80/10/10 by the loader's seeded permutation)
of each domain -- movie reviews, tweets, Amazon reviews, NYT editorials -- are pooled, and each
sentence gets six independent 0/1 targets:

    is_movie, is_tweet, is_amazon, is_nyt   where the sentence comes from (one of the four is 1)
    positive                                mean human rating > 0 (ratings of exactly 0 are dropped)
    strong                                  |mean rating| >= 2 (on VADER's -4..4 scale)

so a sentence carries one to three labels at once (e.g. a strongly negative tweet: is_tweet,
strong). The model has one sigmoid per label (``problem_type="multi_label_classification"``);
a label is predicted when its sigmoid exceeds 0.5. Metrics: micro F1 (headline) and macro F1
over the six labels (the ``multilabel_classification`` task's metric,
``distill_toolkit.metrics.multi_label_f1``, computed by ``Trainer.evaluate``).

1. Teacher: all-MiniLM-L6-v2, fine-tuned with ``supervised`` (binary cross-entropy); cached.
2. Student: the teacher's blocks 1, 3, 5 (embeddings and head copied), distilled with ``single``
   and ``kd_loss: multilabel_kd`` (each label's sigmoid against the teacher's, at temperature T),
   the hard labels and hidden-state MSE (student layer i vs teacher layer 2i).
3. Baseline: the same initialisation trained on the labels alone, for the same steps.

``run()`` returns the table rows; ``benchmarks/results.py`` imports it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from datasets import DatasetDict, concatenate_datasets

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402
from ner import hidden_matches  # noqa: E402

from distill_toolkit import DistillationConfig, Trainer  # noqa: E402
from distill_toolkit.data import load_sentiment, tokenize_classification  # noqa: E402
from distill_toolkit.models import load_classifier, load_tokenizer  # noqa: E402

DOMAINS = {"movies": "is_movie", "tweets": "is_tweet", "amazon": "is_amazon", "nyt": "is_nyt"}
LABELS = [*DOMAINS.values(), "positive", "strong"]
METRIC = "micro_f1"


def multi_label_data(per_domain: int | None, seed: int = 0) -> DatasetDict:
    """The four VADER domains pooled, with a ``targets`` column of 0/1 floats in ``LABELS`` order."""
    def targets(domain):
        onehot = [float(d == domain) for d in DOMAINS]
        return lambda ex: {"targets": onehot + [float(ex["rating"] > 0), float(abs(ex["rating"]) >= 2)]}

    parts = [load_sentiment(d, seed=seed, max_examples=per_domain).map(targets(d)) for d in DOMAINS]
    return DatasetDict({split: concatenate_datasets([p[split] for p in parts]) for split in parts[0]})


def run(output_dir: str = "outputs/examples", epochs: float = 2.0, teacher_epochs: float = 3.0,
        steps: int | None = None, teacher_steps: int | None = None, learning_rate: float = 1e-4,
        teacher_learning_rate: float = 1e-4, temperature: float = 1.0, hard_label_weight: float = 0.5,
        hidden_weight: float = 1.0, batch_size: int = 32, max_length: int = 48, per_domain: int | None = 2000,
        quick: bool = False, seed: int = 0) -> list[dict]:
    """Teacher, distilled student and no-teacher student on the 6-label target; returns their table rows.

    ``steps``/``teacher_steps`` cap the optimiser steps (else ``epochs``/``teacher_epochs`` decide);
    ``quick`` takes 50 sentences per domain and 20/30 steps.
    """
    command = common.command_line("multi_label.py", run, locals())
    if quick:
        per_domain, steps, teacher_steps = 50, steps or 20, teacher_steps or 30
    out = Path(output_dir) / "multi_label"
    tokenizer = load_tokenizer("builtin:minilm")
    data = tokenize_classification(multi_label_data(per_domain), tokenizer, max_length=max_length,
                                   label_column="targets")

    def train(model, name, distill, teacher=None, n_steps=steps, n_epochs=epochs, lr=learning_rate):
        config = common.training(out / name, n_steps, seed=seed, learning_rate=lr, batch_size=batch_size,
                                 num_epochs=n_epochs)
        trainer = Trainer(model, config, distill, data["train"], teacher=teacher,
                          collate_fn=common.collator(tokenizer), tokenizer=tokenizer, label_names=LABELS)
        return trainer, trainer.train()

    def row(label, model, distilled, trainer=None, **extra):
        trainer = trainer or common.evaluator(model, data["test"], tokenizer, label_names=LABELS)
        dev, test = trainer.evaluate(data["dev"]), trainer.evaluate(data["test"])
        rate = common.examples_per_second(model, data["test"], tokenizer)
        return common.result_row(label, model, METRIC, dev, test, rate, distilled, command, also=("macro_f1",),
                                 **extra)

    tag = (f"n{per_domain or 'all'}_len{max_length}_bs{batch_size}_lr{teacher_learning_rate:g}"
           f"_{teacher_steps or ''}s{teacher_epochs:g}e_seed{seed}")
    final = out / "teachers" / tag / "final"
    head = {"problem_type": "multi_label_classification", "id2label": dict(enumerate(LABELS)),
            "label2id": {n: i for i, n in enumerate(LABELS)}}
    if not (final / "config.json").is_file():
        torch.manual_seed(seed)
        teacher = load_classifier("builtin:minilm", len(LABELS), attn_implementation="eager", config_overrides=head)
        common.freeze_word_embeddings(teacher)
        print(f"fine-tuning the teacher {tag}", flush=True)
        train(teacher, f"teachers/{tag}", DistillationConfig(strategy="supervised"), n_steps=teacher_steps,
              n_epochs=teacher_epochs, lr=teacher_learning_rate)
    teacher = load_classifier(str(final), len(LABELS), attn_implementation="eager").eval()
    rows = [row("teacher: MiniLM-L6", teacher, False)]

    layers = [1, 3, 5]
    kd = DistillationConfig(strategy="single", kd_loss="multilabel_kd", temperature=temperature,
                            hard_label_weight=hard_label_weight, matches=hidden_matches(layers, hidden_weight))
    return rows + common.student_pair_rows(teacher, layers, kd, train, row)


def main() -> None:
    parser = common.task_parser(__doc__, run)
    parser.add_argument("--per-domain", type=int, help="sentences per domain before the split")
    parser.add_argument("--quick", action="store_true", help="50 sentences per domain, 20 student / 30 teacher steps")
    rows = run(**vars(parser.parse_args()))
    common.print_rows(rows)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
