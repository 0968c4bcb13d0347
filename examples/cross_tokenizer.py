"""Cross-tokenizer distillation: an MPNet teacher into a MiniLM student, each with its own tokenizer.

    python examples/cross_tokenizer.py      # about 15 minutes on 2 CPU cores; reruns reuse teacher and cache
    python examples/cross_tokenizer.py --teacher-steps 20 --steps 20 --train-examples 320   # a smoke run

Teacher: all-mpnet-base-v2 (MPNet, 12 blocks, hidden 768, 109M parameters, vocabulary 30,527, ``<s>``/``</s>``
special tokens), fetched once by ``distill_toolkit.data.sources.mpnet_dir``, fine-tuned as a sentiment
classifier on the VADER movie-review sentences (its word embeddings and lower 8 blocks frozen so the run stays
short on CPUs; cached under ``<output-dir>/teachers``, so a rerun skips it).

Student: all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384, 22.7M parameters, its own WordPiece vocabulary of
30,522, ``[CLS]``/``[SEP]``), a fresh classification head.

``DualTokenizerCollator`` tokenises every sentence twice (MiniLM's and MPNet's tokenizers) and aligns the two
tokenisations through character offsets (``align="mean"``). The teacher runs ONCE over the training sentences
and its sentence logits and last hidden states (fp16, real positions only) go into a disk teacher cache; the
distillation runs read them from there, with no teacher forward. Three students, same data, same steps:

  (a) no teacher          MiniLM fine-tuned on the labels alone;
  (b) logits KD           KD on the teacher's sentence logits (T = 4) + hard labels;
  (c) logits KD + hidden  (b) + an MSE match of the student's last hidden states (through a learnt linear map
                          384 -> 768) to the teacher's last hidden states mapped onto the student's positions
                          by the alignment.

Prints a table (test accuracy on the movie test split, parameters, inference examples per second, training
seconds) and, as its last line, a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from distill_toolkit import DistillationConfig, Match, Trainer  # noqa: E402
from distill_toolkit.data import (DualTokenizerCollator, PaddingCollator, load_sentiment, subsample,  # noqa: E402
                                  tokenize_classification)
from distill_toolkit.data.sources import mpnet_dir  # noqa: E402
from distill_toolkit.models import load_classifier, load_tokenizer  # noqa: E402
from distill_toolkit.teachers import build_teacher_cache  # noqa: E402
from distill_toolkit.utils import count_parameters  # noqa: E402

MAX_LENGTH = 32
TEACHER_TRAINABLE_BLOCKS = 4  # the top blocks of MPNet's 12 that fine-tuning updates


def fine_tuned_mpnet(root: Path, steps: int, seed: int = 0) -> Path:
    """MPNet fine-tuned on the movie sentences (top blocks and head); cached in ``root``."""
    out = Path(root) / f"mpnet_movies_top{TEACHER_TRAINABLE_BLOCKS}_steps{steps}_len{MAX_LENGTH}_seed{seed}"
    if (out / "final" / "config.json").is_file():
        return out / "final"
    tokenizer = load_tokenizer(str(mpnet_dir()))
    data = tokenize_classification(load_sentiment("movies"), tokenizer, max_length=MAX_LENGTH)
    model = load_classifier(str(mpnet_dir()))
    frozen = list(model.mpnet.embeddings.parameters())
    for block in model.mpnet.encoder.layer[:-TEACHER_TRAINABLE_BLOCKS]:
        frozen += list(block.parameters())
    for p in frozen:
        p.requires_grad_(False)
    print(f"fine-tuning the MPNet teacher ({steps} steps, top {TEACHER_TRAINABLE_BLOCKS} blocks + head)", flush=True)
    Trainer(model, common.training(out, steps, seed=seed, learning_rate=5e-5),
            DistillationConfig(strategy="supervised"), data["train"], collate_fn=PaddingCollator(tokenizer),
            tokenizer=tokenizer).train()
    return out / "final"


@torch.no_grad()
def examples_per_second(model, texts, tokenizer, batch_size: int = 128) -> float:
    """Inference examples/s (tokenisation included, max 32 tokens, batch 128)."""
    model.eval()
    device = next(model.parameters()).device
    start = time.perf_counter()
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i:i + batch_size], truncation=True, max_length=MAX_LENGTH, padding=True,
                          return_tensors="pt")
        model(**batch.to(device)).logits.cpu()
    return len(texts) / (time.perf_counter() - start)


def table_row(model, test: dict, texts, tokenizer) -> dict:
    """Test accuracy (``test``: a ``trainer.evaluate`` result), inference speed and size of one model."""
    return {"test_acc": round(test["accuracy"], 4),
            "examples_per_s": round(examples_per_second(model, texts, tokenizer), 1),
            "params_M": round(count_parameters(model) / 1e6, 1)}


def minilm_student():
    return common.freeze_word_embeddings(load_classifier("builtin:minilm"))


def train_student(name: str, dist: DistillationConfig, train, collate, cache, root: Path, steps: int,
                  test, tokenizer) -> dict:
    """One MiniLM student trained from the cache (or alone); scored by ``trainer.evaluate`` on the raw test
    split (the student's tokens, batched by the dual collator), outside the timed training."""
    student = minilm_student()
    start = time.perf_counter()
    trainer = Trainer(student, common.training(root / name, steps), dist, train,
                      teacher=None if dist.strategy == "supervised" else cache, collate_fn=collate)
    history = trainer.train()["history"]
    train_s = time.perf_counter() - start
    return {**table_row(student, trainer.evaluate(test), test["text"], tokenizer), "train_s": round(train_s, 1),
            "last_losses": {k[6:]: round(v, 4) for k, v in history[-1].items() if k.startswith("train/")
                            and k != "train/lr"}}


def print_table(results: dict, labels: dict) -> None:
    teacher_acc = results["teacher"]["test_acc"]
    header = f"{'model':55} {'params':>7} {'test acc':>8} {'% teacher':>9} {'ex/s':>7} {'train s':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        share = 100 * r["test_acc"] / teacher_acc
        print(f"{labels[name]:55} {r['params_M']:>6.1f}M {r['test_acc']:>8.4f} {share:>8.1f}% "
              f"{r['examples_per_s']:>7.1f} {r.get('train_s', ''):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/cross_tokenizer")
    parser.add_argument("--teacher-steps", type=int, default=120)
    parser.add_argument("--steps", type=int, default=300, help="training steps of every student (batch 16)")
    parser.add_argument("--train-examples", type=int, default=4800,
                        help="training sentences the students see (and the teacher cache holds)")
    args = parser.parse_args()
    root = Path(args.output_dir)
    timings = {}

    start = time.perf_counter()
    teacher_path = fine_tuned_mpnet(root / "teachers", args.teacher_steps)
    timings["teacher_s"] = time.perf_counter() - start
    teacher_tok, student_tok = load_tokenizer(str(teacher_path)), load_tokenizer("builtin:minilm")
    data = load_sentiment("movies")
    train = subsample(data["train"], args.train_examples, seed=0)  # a random slice: the file lists positives first

    collate = DualTokenizerCollator(student_tok, teacher_tok, text_column="text", label_column="label",
                                    max_length=MAX_LENGTH, align="mean")
    logits_kd = DistillationConfig(temperature=4.0, hard_label_weight=0.5)
    hidden_kd = DistillationConfig(temperature=4.0, hard_label_weight=0.5, matches=[
        Match(teacher_layer=12, student_layer=6, loss="hidden_mse", projection="linear")])
    start = time.perf_counter()
    cache = build_teacher_cache(load_classifier(str(teacher_path)), train, root / "teacher_cache",
                                collate_fn=collate, distillation=hidden_kd, tokenizer=teacher_tok,
                                dtype="float16", batch_size=64)
    timings["cache_s"] = time.perf_counter() - start
    print(f"teacher cache: {len(cache)} sentences, features {cache.feature_keys}, {cache.build_stats}, "
          f"{timings['cache_s']:.0f} s", flush=True)

    teacher = load_classifier(str(teacher_path))
    teacher_test = tokenize_classification(data["test"], teacher_tok, max_length=MAX_LENGTH)
    teacher_scores = common.evaluator(teacher, teacher_test, teacher_tok).evaluate(teacher_test)
    results = {"teacher": table_row(teacher, teacher_scores, data["test"]["text"], teacher_tok)}
    runs = [("no_teacher", "(a) MiniLM-L6, no teacher (labels only)", DistillationConfig(strategy="supervised")),
            ("logits_kd", "(b) MiniLM-L6, logits KD from cached MPNet", logits_kd),
            ("logits_hidden_kd", "(c) (b) + last hidden states through the alignment", hidden_kd)]
    for name, _, dist in runs:
        results[name] = train_student(name, dist, train, collate, cache, root, args.steps, data["test"], student_tok)

    print_table(results, {"teacher": f"MPNet teacher (top {TEACHER_TRAINABLE_BLOCKS} blocks, {args.teacher_steps} "
                                     "steps)", **{name: label for name, label, _ in runs}})
    print(json.dumps({**results, "steps": args.steps, "train_examples": len(train),
                      "teacher_steps": args.teacher_steps, "cache_build": cache.build_stats,
                      **{k: round(v, 1) for k, v in timings.items()}}))


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
