"""Seconds per step and peak memory of causal-LM KD: the plain-PyTorch floor, distill_toolkit, TRL's GKDTrainer.

    python benchmarks/lm_kd_speed.py [--vocab 8192,49152] [--large-vocab] [--steps 12] [--warmup 2] [--threads 2]
                                     [--variants floor,fused,chunked,trl_gkd]

The same work in every variant: a 6-block Llama teacher and a 2-block student (hidden 256, 4 heads, MLP 4 x
hidden, untied heads, fp32), 8 x 128 random tokens per step (the same batches everywhere), forward KL at
temperature 1 over all 8 x 127 next-token positions, a per-token mean, AdamW (lr 1e-4, no weight decay, constant
learning rate, no clipping), no generation:

  floor    the teacher's forward under ``no_grad`` + the student's step, with the loss written directly in plain
           PyTorch (full logits of both models, ``log_softmax``, ``kl_div``); no library loop.
  fused    distill_toolkit's ``Trainer`` with ``strategy: causal_lm``, ``kd_loss: forward_kl`` (the default route:
           head + divergence fused, chunked by ``chunk_bytes``).
  chunked  the same with ``strategy_options: {fused: false}`` (the reference route, checkpointed chunks).
  trl_gkd  TRL's ``GKDTrainer`` (``trl.experimental.gkd``) with ``lmbda=0`` (no on-policy samples), ``beta=0``
           (forward KL), ``temperature=1``, ``optim=adamw_torch``, ``gradient_checkpointing=False`` and
           ``bf16=False`` (TRL's defaults are True for both). Needs ``pip install -e ".[bench]"``.

Each (variant, vocabulary) runs in its own fresh process (this script, with ``--child``). Time is the median of
the seconds between consecutive step ends over steps ``warmup+1 .. steps`` (3-12 by default). Memory is the
process's peak resident set (``ru_maxrss``) read at the end of the last step, reported absolute and as the rise
over the peak reached once the variant's libraries were imported: models, optimiser state, batches and the step's
temporaries, without library code (DeepSpeed, which Accelerate's ``unwrap_model`` imports in both trainers, is
imported before that baseline in every variant). The ``*_memory_*`` ratios use the rise, ``*_peak_rss_*`` the
absolute peak. The step-1 losses (same weights, same batch) must agree across variants to ``--loss-tolerance``
(absolute, 1e-6 by default: the KL is a sum of differences of log-probabilities of size ~log V, so fp32 rounding
is absolute, not relative to the small KL of two random models) or the script says they differ and exits with
status 1. The last line is JSON, with ``toolkit_time_vs_floor_ratio_v<V>``, ``toolkit_memory_vs_floor_ratio_v<V>``
and ``toolkit_time_vs_trl_gkd_ratio_v<V>`` (toolkit = the fused default) for every vocabulary ``V``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata

import torch

VARIANTS = ("floor", "fused", "chunked", "trl_gkd")
LABELS = {"floor": "floor (plain PyTorch)", "fused": "distill_toolkit causal_lm (fused)",
          "chunked": "distill_toolkit causal_lm (fused: false)", "trl_gkd": "TRL GKDTrainer (lmbda 0, beta 0)"}
DEFAULT_VOCABS = (8192, 49152)
LARGE_VOCAB = 152064
LEARNING_RATE = 1e-4
HEADS = 4


def peak_rss_mb() -> float:
    """The process's peak resident set so far, in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 1024


def build_models(args):
    """``(teacher, student)``: Llamas of ``args.teacher_layers`` / ``args.student_layers`` blocks, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                 num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=args.seq_len,
                 tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(num_hidden_layers=args.teacher_layers, **shape)).eval()
    torch.manual_seed(1)
    student = LlamaForCausalLM(LlamaConfig(num_hidden_layers=args.student_layers, **shape)).train()
    return teacher, student


def build_batches(args) -> list[dict]:
    """``args.steps`` batches of random tokens; every next-token position counts (label 0 is never predicted)."""
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps):
        ids = torch.randint(0, args.vocab, (args.batch_size, args.seq_len), generator=g)
        labels = ids.clone()
        labels[:, 0] = -100  # no position predicts token 0: the trainers that count labels count B x (L - 1)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


class Record:
    """What a child measures: a stamp and the loss at the end of every step, the peak RSS at the last one."""

    def __init__(self, steps: int):
        self.steps, self.stamps, self.losses, self.peak_mb, self.threads = steps, [], [], None, None

    def step_end(self, loss: float) -> None:
        self.stamps.append(time.perf_counter())
        self.losses.append(float(loss))
        if len(self.stamps) == self.steps:  # before any export or teardown the tool does after training
            self.peak_mb, self.threads = peak_rss_mb(), torch.get_num_threads()


def run_floor(teacher, student, batches, record: Record) -> None:
    """The teacher forward under ``no_grad`` + the student's step, the forward KL written directly."""
    import torch.nn.functional as F

    optimizer = torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE, weight_decay=0.0, eps=1e-8)
    for batch in batches:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            logits_T = teacher(**inputs).logits[:, :-1]
        logits_S = student(**inputs).logits[:, :-1]
        positions = logits_S.shape[0] * logits_S.shape[1]
        loss = F.kl_div(F.log_softmax(logits_S, -1), F.log_softmax(logits_T, -1), reduction="sum",
                        log_target=True) / positions
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record.step_end(loss.detach())


def run_toolkit(teacher, student, batches, record: Record, fused: bool) -> None:
    """distill_toolkit's Trainer with ``strategy: causal_lm`` (fused, or ``fused: false``), as a user runs it."""
    from torch.utils.data import DataLoader

    from distill_toolkit import Callback, DistillationConfig, Trainer, TrainingConfig

    class StepEnd(Callback):
        def on_step_end(self, trainer, step, logs):
            record.step_end(logs["train/loss"])  # the step's loss, a mean over its counted tokens

    with tempfile.TemporaryDirectory() as out:
        training = TrainingConfig(output_dir=out, max_steps=len(batches), batch_size=len(batches[0]["input_ids"]),
                                  learning_rate=LEARNING_RATE, weight_decay=0.0, lr_scheduler="constant",
                                  max_grad_norm=None, trackers=[], progress_bar=False, eval_every_epochs=None,
                                  overwrite=True, cpu=True, seed=0)
        distillation = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=1.0,
                                          hard_label_weight=0.0, strategy_options={"fused": fused})
        loader = DataLoader(batches, batch_size=None, shuffle=False)  # the pre-built batches, in order
        Trainer(student, training, distillation, loader, teacher=teacher, callbacks=[StepEnd()]).train()


def _pad_only_tokenizer():
    """GKDTrainer needs a tokenizer (for its pad id) even when the data come tokenised: a 4-token one."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def run_trl_gkd(teacher, student, batches, record: Record) -> None:
    """TRL's GKDTrainer on the same batches: off-policy (lmbda 0), forward KL (beta 0), T = 1, same AdamW."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class Recorded(GKDTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            self.last_loss = (out[0] if return_outputs else out).detach()
            return out

    class StepEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            record.step_end(trainer.last_loss)

    rows = {key: torch.cat([b[key] for b in batches]) for key in batches[0]}
    dataset = Dataset.from_dict({k: v.tolist() for k, v in rows.items()}).with_format("torch")
    with tempfile.TemporaryDirectory() as out:
        args = GKDConfig(output_dir=out, per_device_train_batch_size=len(batches[0]["input_ids"]),
                         max_steps=len(batches), learning_rate=LEARNING_RATE, weight_decay=0.0,
                         lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, optim="adamw_torch",
                         lmbda=0.0, beta=0.0, temperature=1.0, gradient_checkpointing=False, bf16=False,
                         train_sampling_strategy="sequential", report_to="none", disable_tqdm=True,
                         save_strategy="no", logging_steps=10 ** 9, dataloader_pin_memory=False, use_cpu=True,
                         seed=0)
        trainer = Recorded(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                           processing_class=_pad_only_tokenizer(), callbacks=[StepEnd()],
                           data_collator=lambda items: {k: torch.stack([i[k] for i in items]) for k in items[0]})
        trainer.train()


def run_child(args) -> dict:
    """One variant at one vocabulary, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    versions = {"torch": torch.__version__, "transformers": metadata.version("transformers")}
    if args.child in ("fused", "chunked"):
        import distill_toolkit  # noqa: F401  (imported before the baseline: library code is not the step's memory)

        versions["distill_toolkit"] = metadata.version("distill_toolkit")
    elif args.child == "trl_gkd":
        import trl
        import trl.experimental.gkd  # noqa: F401

        versions["trl"] = trl.__version__
    from transformers import LlamaForCausalLM  # noqa: F401  (loads the model code before the baseline, in all)

    if importlib.util.find_spec("deepspeed") is not None:
        # Accelerate's unwrap_model (both trainers call it) imports DeepSpeed, and with it MLflow, when installed:
        # ~90 MB of library code; imported before the baseline in every variant so the rise is the step's memory
        import deepspeed  # noqa: F401

    baseline_mb = peak_rss_mb()
    teacher, student = build_models(args)
    batches = build_batches(args)
    record = Record(args.steps)
    if args.child == "floor":
        run_floor(teacher, student, batches, record)
    elif args.child == "trl_gkd":
        run_trl_gkd(teacher, student, batches, record)
    else:
        run_toolkit(teacher, student, batches, record, fused=args.child == "fused")
    if len(record.stamps) != args.steps:
        raise RuntimeError(f"{args.child}: {len(record.stamps)} step ends recorded, expected {args.steps}")
    step_seconds = [b - a for a, b in zip(record.stamps, record.stamps[1:])][args.warmup - 1:]
    return {"variant": args.child, "vocab": args.vocab, "seconds_per_step": statistics.median(step_seconds),
            "step_seconds": step_seconds, "peak_rss_mb": record.peak_mb, "baseline_mb": baseline_mb,
            "rise_mb": record.peak_mb - baseline_mb, "step1_loss": record.losses[0], "last_loss": record.losses[-1],
            "threads": record.threads, "versions": versions}


def spawn(variant: str, vocab: int, args) -> dict:
    """Run one variant in a fresh process of this script; its last stdout line is its JSON."""
    command = [sys.executable, __file__, "--child", variant, "--vocab", str(vocab), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--batch-size", str(args.batch_size),
               "--seq-len", str(args.seq_len), "--hidden", str(args.hidden),
               "--teacher-layers", str(args.teacher_layers), "--student-layers", str(args.student_layers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"variant {variant} at vocabulary {vocab} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def relative_difference(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def figures_for(vocab: int, rows: dict) -> dict:
    """The ratios of one vocabulary: each variant against the floor and TRL, ``toolkit`` naming ``fused``."""
    out = {}
    names = {"fused": "toolkit", "chunked": "chunked", "trl_gkd": "trl_gkd"}
    for variant, name in names.items():
        if variant not in rows:
            continue
        r = rows[variant]
        for ref in ("floor", "trl_gkd"):
            if ref in rows and ref != variant:
                out[f"{name}_time_vs_{ref}_ratio_v{vocab}"] = r["seconds_per_step"] / rows[ref]["seconds_per_step"]
                out[f"{name}_memory_vs_{ref}_ratio_v{vocab}"] = r["rise_mb"] / rows[ref]["rise_mb"]
                out[f"{name}_peak_rss_vs_{ref}_ratio_v{vocab}"] = r["peak_rss_mb"] / rows[ref]["peak_rss_mb"]
    reference = rows["floor"] if "floor" in rows else next(iter(rows.values()))
    for step in ("step1", "last"):
        values, ref = [r[f"{step}_loss"] for r in rows.values()], reference[f"{step}_loss"]
        out[f"{step}_loss_max_abs_difference_v{vocab}"] = max(abs(v - ref) for v in values)
        out[f"{step}_loss_max_relative_difference_v{vocab}"] = max(relative_difference(v, ref) for v in values)
    return out


def print_table(vocab: int, rows: dict, figures: dict, args) -> None:
    floor = rows.get("floor")
    print(f"\ncausal-LM KD, vocabulary {vocab:,}: {args.batch_size} x {args.seq_len} tokens per step, hidden "
          f"{args.hidden}, teacher {args.teacher_layers} / student {args.student_layers} blocks, fp32, "
          f"{args.threads} threads, median over steps {args.warmup + 1}-{args.steps}")
    print(f"{'variant':42} {'s/step':>8} {'x floor':>8} {'peak MB':>8} {'rise MB':>8} {'x floor':>8} "
          f"{'step-1 loss':>14} {'last loss':>14}")
    for variant, r in rows.items():
        time_ratio = f"{r['seconds_per_step'] / floor['seconds_per_step']:.2f}" if floor else "-"
        memory_ratio = f"{r['rise_mb'] / floor['rise_mb']:.2f}" if floor else "-"
        print(f"{LABELS[variant]:42} {r['seconds_per_step']:>8.3f} {time_ratio:>8} {r['peak_rss_mb']:>8.0f} "
              f"{r['rise_mb']:>8.0f} {memory_ratio:>8} {r['step1_loss']:>14.9g} {r['last_loss']:>14.9g}")
    step1 = figures[f"step1_loss_max_abs_difference_v{vocab}"]
    verdict = "agree" if step1 <= args.loss_tolerance else "DIFFER"
    print(f"step-1 losses {verdict}: max difference {step1:.1e} (tolerance {args.loss_tolerance:.0e}; relative "
          f"{figures[f'step1_loss_max_relative_difference_v{vocab}']:.1e}); last-step losses (after "
          f"{args.steps - 1} AdamW steps) differ by up to {figures[f'last_loss_max_abs_difference_v{vocab}']:.1e}")
    for variant, r in rows.items():
        if r["threads"] != args.threads:
            print(f"warning: {variant} ran with {r['threads']} threads, not {args.threads}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", default=",".join(map(str, DEFAULT_VOCABS)),
                        help="comma-separated vocabulary sizes (default 8192,49152)")
    parser.add_argument("--large-vocab", action="store_true", help=f"also vocabulary {LARGE_VOCAB:,} (Qwen2's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per variant (default 12)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the median (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every variant (default 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--teacher-layers", type=int, default=6)
    parser.add_argument("--student-layers", type=int, default=2)
    parser.add_argument("--loss-tolerance", type=float, default=1e-6,
                        help="largest absolute difference of the step-1 losses that counts as agreeing")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not 1 <= args.warmup < args.steps:
        parser.error(f"--warmup must be at least 1 and below --steps ({args.steps}), got {args.warmup}")
    if args.hidden % HEADS:
        parser.error(f"--hidden must be a multiple of {HEADS} (the attention heads), got {args.hidden}")
    if args.child:
        args.vocab = int(args.vocab)
        return args
    args.vocabs = [int(v) for v in args.vocab.split(",") if v] + ([LARGE_VOCAB] if args.large_vocab else [])
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or not args.variants:
        parser.error(f"--variants: unknown {unknown or 'empty list'}; choose from {', '.join(VARIANTS)}")
    if "trl_gkd" in args.variants and _version("trl") is None:
        parser.error("the trl_gkd variant needs TRL: pip install -e \".[bench]\" (trl==1.16.0), or leave it out: "
                     "--variants floor,fused,chunked")
    return args


def _version(dist: str):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args)))
        return
    results = {"trl_version": _version("trl") if "trl_gkd" in args.variants else None,
               "torch_version": torch.__version__, "transformers_version": _version("transformers"),
               "distill_toolkit_version": _version("distill_toolkit"), "threads": args.threads, "steps": args.steps,
               "timed_steps": [args.warmup + 1, args.steps], "batch_size": args.batch_size, "seq_len": args.seq_len,
               "positions_per_step": args.batch_size * (args.seq_len - 1), "hidden": args.hidden,
               "teacher_layers": args.teacher_layers, "student_layers": args.student_layers, "vocabs": args.vocabs,
               "variants": args.variants, "runs": {}}
    if results["trl_version"]:
        print(f"TRL {results['trl_version']} (trl.experimental.gkd.GKDTrainer), torch {torch.__version__}")
    agree = True
    for vocab in args.vocabs:
        rows = {variant: spawn(variant, vocab, args) for variant in args.variants}
        figures = figures_for(vocab, rows)
        print_table(vocab, rows, figures, args)
        agree &= figures[f"step1_loss_max_abs_difference_v{vocab}"] <= args.loss_tolerance
        results["runs"][f"v{vocab}"] = {v: {k: r[k] for k in ("seconds_per_step", "peak_rss_mb", "rise_mb",
                                                             "step1_loss", "last_loss")} for v, r in rows.items()}
        results.update(figures)
    results["losses_agree"] = agree
    print(json.dumps(results))
    if not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
