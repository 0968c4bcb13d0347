"""Cached teacher: seconds per epoch online vs cached vs plain fine-tuning; top-k cache size and KD error.

    python benchmarks/cached_teacher.py [--examples 256] [--epochs 3] [--rounds 2] [--topk-sentences 64]

Part 1, speed (one run, same data, same student, interleaved rounds, median):

  (a) online   ``single`` strategy, the teacher runs on every batch (KD on logits + hard labels);
  (b) cached   the same, the teacher's logits read from a disk cache (``build_teacher_cache``) through
               the collator: no teacher forward at all;
  (c) plain    ``supervised`` fine-tuning of the student alone (hard labels only).

  Teacher: all-MiniLM-L6-v2 (BERT, 6 blocks, hidden 384; a fresh classification head), fetched once
  by the data module; student: its blocks 1 and 4 (2 blocks). Data: VADER movie-review sentences
  tokenised with MiniLM's tokenizer (max 64 tokens), batch 32. Seconds per epoch are measured from
  the end of the first epoch to the end of the last (the first epoch is warm-up). Goal: b <= 1.05 x c.

Part 2, top-k compression (k in 8, 32, 128) of a real vocabulary distribution: all-MiniLM-L6-v2 has no
masked-LM head, so its output embeddings (tied to the input embeddings, as BERT's MLM decoder is) are
put on top of its last hidden state with an identity transform: ``logits = LayerNorm(h) @ E^T`` over
the 30,522-token vocabulary. That is a trained encoder and a trained vocabulary matrix, not a trained
MLM; the figures say how much of such a distribution top-k keeps. The student is the same model cut
to its first 3 blocks. For each k: the bytes per token the cache stores (fp16 log-probs, uint16
indices, fp32 tail) and the relative error of forward KL (T = 1 and T = 2) against dense logits, over
every real token of ``--topk-sentences`` sentences. The last line is JSON.
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
from distill_toolkit.data.teacher_cache import TeacherCacheCollator, build_teacher_cache, cached_view, with_ids


class EpochClock(Callback):
    def __init__(self, steps_per_epoch: int):
        self.steps_per_epoch, self.marks = steps_per_epoch, []

    def on_step_end(self, trainer, step, logs):
        if step % self.steps_per_epoch == 0:
            self.marks.append(time.perf_counter())


def _models():
    from distill_toolkit.models import load_classifier, student_from_teacher

    teacher = load_classifier(str(minilm_dir()))
    student = student_from_teacher(teacher, [1, 4])
    return teacher, student


def seconds_per_epoch(mode: str, data, collate, cache, epochs: int, batch_size: int, out: Path) -> float:
    teacher, student = _models()
    steps = -(-len(data) // batch_size)
    clock = EpochClock(steps)
    training = TrainingConfig(output_dir=str(out / mode), num_epochs=epochs, batch_size=batch_size,
                              learning_rate=5e-5, trackers=[], progress_bar=False, eval_every_epochs=None,
                              seed=0, max_grad_norm=None)
    if mode == "plain":
        dist, given = DistillationConfig(strategy="supervised"), None
    else:
        dist = DistillationConfig(temperature=2.0, hard_label_weight=0.5)
        given = cache if mode == "cached" else teacher
    Trainer(student, training, dist, data, teacher=given, collate_fn=collate, callbacks=[clock]).train()
    return (clock.marks[-1] - clock.marks[0]) / (len(clock.marks) - 1)


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
    times = {"online": [], "cached": [], "plain": []}
    for _ in range(args.rounds):
        for mode in times:
            times[mode].append(seconds_per_epoch(mode, data, collate, cache, args.epochs, args.batch_size, out))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"examples": len(data), "batch_size": args.batch_size, "epochs": args.epochs, "rounds": args.rounds,
            "cache_build_s": build_seconds, "online_s_per_epoch": median["online"],
            "cached_s_per_epoch": median["cached"], "plain_s_per_epoch": median["plain"],
            "cached_vs_plain_ratio": median["cached"] / median["plain"],
            "online_vs_plain_ratio": median["online"] / median["plain"],
            "cached_vs_online_ratio": median["cached"] / median["online"]}


def _mlm(layers=None):
    """MiniLM with its tied embeddings as an MLM decoder (identity transform); see the module docstring."""
    from transformers import BertForMaskedLM

    model = BertForMaskedLM.from_pretrained(str(minilm_dir()))
    transform = model.cls.predictions.transform
    with torch.no_grad():
        transform.dense.weight.copy_(torch.eye(transform.dense.weight.shape[0]))
        transform.dense.bias.zero_()
        transform.transform_act_fn = torch.nn.Identity()
        transform.LayerNorm.weight.fill_(1.0)
        transform.LayerNorm.bias.zero_()
        model.cls.predictions.bias.zero_()
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    if layers is not None:
        model.bert.encoder.layer = model.bert.encoder.layer[:layers]
        model.config.num_hidden_layers = layers
    return model.eval()


def topk(args, out: Path) -> dict:
    from distill_toolkit.engine.teachers import TeacherRunner
    from distill_toolkit.models import load_tokenizer

    tokenizer = load_tokenizer(str(minilm_dir()))
    raw = load_sentiment("movies", max_examples=args.topk_sentences * 2)["train"]
    raw = raw.select(range(min(args.topk_sentences, len(raw))))
    data = with_ids(tokenize_classification(raw, tokenizer, max_length=64)).remove_columns("labels")
    collate = PaddingCollator(tokenizer)
    teacher, student = _mlm(), _mlm(layers=3)
    batch = collate([data[i] for i in range(len(data))])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        dense = TeacherRunner(teacher, "teacher", [], "masked_lm").forward(batch).logits[0]
        logits_S = student(**inputs).logits
    vocab = dense.shape[-1]
    figures = {"vocab": vocab, "sentences": len(data), "tokens": int(mask.sum()), "dense_fp32_bytes_per_token": 4 * vocab}
    for temperature in (1.0, 2.0):
        figures[f"kd_dense_T{temperature:g}"] = float(losses.forward_kl(logits_S, dense, temperature, mask=mask))
    for k in (8, 32, 128):
        for temperature in (1.0, 2.0):
            dist = DistillationConfig(task="masked_lm", kd_loss="forward_kl", temperature=temperature)
            cache = build_teacher_cache(teacher, data, out / f"k{k}_T{temperature:g}", collate_fn=collate,
                                        distillation=dist, top_k=k, dtype="float16", batch_size=16)
            sparse = cached_view(TeacherCacheCollator(collate, cache)([data[i] for i in range(len(data))]),
                                 "teacher").logits[0]
            value = float(losses.forward_kl(logits_S, sparse, temperature, mask=mask))
            dense_value = figures[f"kd_dense_T{temperature:g}"]
            figures[f"k{k}_bytes_per_token"] = cache.bytes_per_token
            figures[f"k{k}_T{temperature:g}_kd_rel_error"] = abs(value - dense_value) / dense_value
            tail = sparse.tail_logprob[mask].exp()
            figures[f"k{k}_T{temperature:g}_mean_tail_mass"] = float(tail.mean())
        figures[f"k{k}_compression_ratio"] = figures["dense_fp32_bytes_per_token"] / figures[f"k{k}_bytes_per_token"]
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--topk-sentences", type=int, default=64)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        figures = {"torch_threads": torch.get_num_threads()}
        if not args.skip_speed:
            figures.update(speed(args, out))
        figures.update(topk(args, out))

    if not args.skip_speed:
        print(f"\nseconds per epoch, {figures['examples']} examples, batch {args.batch_size}, "
              f"median of {args.rounds} rounds, {figures['torch_threads']} threads")
        print(f"{'mode':48} {'s/epoch':>8} {'x plain':>8}")
        for mode, label in (("online", "(a) online teacher (KD + hard labels)"),
                            ("cached", "(b) cached teacher (disk cache, no teacher fwd)"),
                            ("plain", "(c) plain fine-tuning of the student")):
            value = figures[f"{mode}_s_per_epoch"]
            print(f"{label:48} {value:>8.2f} {value / figures['plain_s_per_epoch']:>8.3f}")
        print(f"cache build (one teacher pass over the data): {figures['cache_build_s']:.2f} s; "
              f"goal b/c <= 1.05: {figures['cached_vs_plain_ratio']:.3f}")
    print(f"\ntop-k cache of a {figures['vocab']}-token vocabulary over {figures['tokens']} tokens "
          f"(dense fp32: {figures['dense_fp32_bytes_per_token']} bytes/token)")
    print(f"{'k':>5} {'bytes/token':>12} {'x smaller':>10} {'KD rel err T=1':>15} {'KD rel err T=2':>15} "
          f"{'tail mass T=1':>14}")
    for k in (8, 32, 128):
        print(f"{k:>5} {figures[f'k{k}_bytes_per_token']:>12.1f} {figures[f'k{k}_compression_ratio']:>10.0f} "
              f"{figures[f'k{k}_T1_kd_rel_error']:>15.4f} {figures[f'k{k}_T2_kd_rel_error']:>15.4f} "
              f"{figures[f'k{k}_T1_mean_tail_mass']:>14.4f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
