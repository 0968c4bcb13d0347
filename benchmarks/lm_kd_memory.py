"""Peak memory and time of token-level KD over a large vocabulary: chunked and fused vs naive.

    python benchmarks/lm_kd_memory.py [--tokens 1024] [--vocab 49152] [--hidden 576] [--chunk 256]

One forward + backward of forward-KL KD (plus the student's cross-entropy) from the final hidden
states of a student and a teacher (SmolLM2-135M-like sizes: hidden 576, vocabulary 49,152):

  naive    build full ``[tokens, vocab]`` fp32 logits for both models, then the loss;
  chunked  ``distill_toolkit.losses.chunked.chunked_lm_kd``: ``chunk`` positions at a time under
           activation checkpointing (the reference route, ``strategy_options: {fused: false}``);
  fused    ``distill_toolkit.losses.fused.fused_lm_kd`` (the ``causal_lm`` default): ``chunk`` positions at a
           time, each chunk's loss and gradients computed in one pass (one combined gradient of KD + CE, as
           the strategy stores it), no recomputation in backward.

Each variant runs in its own fresh process; memory is the rise of the process's peak resident
set (``ru_maxrss``) over what it held once the inputs existed. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def run_variant(variant: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    from distill_toolkit.losses import forward_kl
    from distill_toolkit.losses.chunked import chunked_lm_kd
    from distill_toolkit.losses.fused import fused_lm_kd

    torch.manual_seed(0)
    head_S = torch.nn.Linear(hidden, vocab, bias=False)
    head_T = torch.nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    h_S = torch.randn(tokens, hidden, requires_grad=True)
    h_T = torch.randn(tokens, hidden)
    labels = torch.randint(0, vocab, (tokens,))
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "naive":
        logits_S = head_S(h_S)
        with torch.no_grad():
            logits_T = head_T(h_T)
        kd = forward_kl(logits_S, logits_T, 1.0) * tokens
        ce = torch.nn.functional.cross_entropy(logits_S, labels, reduction="sum")
    elif variant == "fused":
        kd, ce = fused_lm_kd(h_S, head_S, h_T, head_T, loss="forward_kl", chunk_size=chunk, labels=labels,
                             weights=(1.0, 1.0))
    else:
        kd, ce = chunked_lm_kd(h_S, head_S, h_T, head_T, loss="forward_kl", chunk_size=chunk, labels=labels)
    (kd + ce).backward()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "peak_mb": (peak - base) / 1024, "seconds": seconds, "kd": float(kd),
            "ce": float(ce), "grad_norm": float(h_S.grad.norm())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # child process
        print(json.dumps(run_variant(args.variant, args.tokens, args.vocab, args.hidden, args.chunk)))
        return

    rows = {}
    for variant in ("naive", "chunked", "fused"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--tokens", str(args.tokens),
                              "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)],
                             capture_output=True, text=True, check=True)
        rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    naive, chunked, fused = rows["naive"], rows["chunked"], rows["fused"]
    full_logits_mb = args.tokens * args.vocab * 4 / 2 ** 20
    print(f"\ntoken-level KD, {args.tokens} tokens x vocabulary {args.vocab}, hidden {args.hidden}, "
          f"chunk {args.chunk} (one fp32 [tokens, vocab] tensor = {full_logits_mb:.0f} MB)")
    print(f"{'variant':10} {'peak MB':>10} {'seconds':>9} {'kd sum':>14} {'grad norm':>11}")
    for r in (naive, chunked, fused):
        print(f"{r['variant']:10} {r['peak_mb']:>10.0f} {r['seconds']:>9.2f} {r['kd']:>14.4f} {r['grad_norm']:>11.5f}")
    figures = {
        "tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "chunk": args.chunk,
        "naive_peak_mb": naive["peak_mb"], "chunked_peak_mb": chunked["peak_mb"],
        "naive_seconds": naive["seconds"], "chunked_seconds": chunked["seconds"],
        "peak_memory_ratio": chunked["peak_mb"] / naive["peak_mb"],
        "time_ratio": chunked["seconds"] / naive["seconds"],
        "kd_relative_difference": abs(chunked["kd"] - naive["kd"]) / abs(naive["kd"]),
        "fused_peak_mb": fused["peak_mb"], "fused_seconds": fused["seconds"],
        "fused_peak_memory_ratio": fused["peak_mb"] / naive["peak_mb"],
        "fused_time_ratio": fused["seconds"] / naive["seconds"],
        "fused_kd_relative_difference": abs(fused["kd"] - naive["kd"]) / abs(naive["kd"]),
        "fused_grad_norm_relative_difference": abs(fused["grad_norm"] - naive["grad_norm"]) / naive["grad_norm"],
    }
    print(f"chunked / naive: peak memory {figures['peak_memory_ratio']:.3f}, time {figures['time_ratio']:.2f}, "
          f"KD values differ by {figures['kd_relative_difference']:.1e} (relative)")
    print(f"fused / naive: peak memory {figures['fused_peak_memory_ratio']:.3f}, "
          f"time {figures['fused_time_ratio']:.2f}, KD values differ by {figures['fused_kd_relative_difference']:.1e}, "
          f"gradient norms by {figures['fused_grad_norm_relative_difference']:.1e} (relative)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
