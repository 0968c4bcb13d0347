"""Peak per-rank bytes held by a teacher's parameters: replicated vs ZeRO-3 vs FSDP2, at world size 1 and 2.

    python benchmarks/teacher_memory.py [--hidden 256] [--layers 24] [--vocab 2000] [--world-sizes 1 2]

For each world size and placement it launches ``torchrun --nproc_per_node N`` (gloo on
127.0.0.1 on CPUs, so it runs anywhere; NCCL is picked on GPUs), builds a BERT teacher from
its config through the Trainer's own path (``build_accelerator`` -> ``build_teacher`` ->
``place_teacher``) and records on every rank, in bytes of parameter storage the rank holds:

- ``build``: right after the teacher is built (under ``zero3`` Transformers loads it straight
  into ZeRO-3 partitions; ``replicated`` and ``fsdp`` build it whole, FSDP2 shards it after);
- ``placed``: after placement, between forwards;
- ``forward``: the most held at any moment of one forward (measured at every submodule's
  forward entry, when ZeRO-3 / FSDP2 have gathered that layer), including ``placed``.

The table shows the largest value over ranks; ``*_ratio`` = sharded / replicated at the same
world size. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEMENTS = ("replicated", "zero3", "fsdp")


def _worker(args) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from distill_toolkit import TrainingConfig
    from distill_toolkit.engine.accelerator import build_accelerator
    from distill_toolkit.teachers.placement import build_teacher, place_teacher
    from distill_toolkit.utils.shards import held_parameter_bytes
    from distill_toolkit.teachers import freeze

    training = TrainingConfig(output_dir=args.scratch, trackers=[], progress_bar=False, batch_size=4, overwrite=True,
                              teacher_placement=args.placement,
                              deepspeed_config=str(ROOT / "ds_configs" / "zero2.json")
                              if args.placement == "zero3" else None)
    accelerator = build_accelerator(training)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                        max_position_embeddings=128, num_labels=2)
    teacher = build_teacher(accelerator, lambda: AutoModelForSequenceClassification.from_config(config),
                            args.placement)
    built = held_parameter_bytes(teacher)
    full = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in teacher.parameters())
    placed_model = place_teacher(accelerator, freeze(teacher), args.placement)
    placed = held_parameter_bytes(placed_model)
    peak = [placed]
    inner = placed_model.module if hasattr(placed_model, "module") else placed_model
    hooks = [m.register_forward_pre_hook(lambda *_: peak.append(held_parameter_bytes(placed_model)))
             for m in inner.modules()]
    ids = torch.randint(0, args.vocab, (4, 32), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # the second and third forwards run on ZeRO-3's recorded trace (prefetch)
        for _ in range(3):
            placed_model(input_ids=ids.to(accelerator.device))
    peak.append(held_parameter_bytes(placed_model))
    for h in hooks:
        h.remove()
    record = {"placement": args.placement, "world": accelerator.num_processes, "rank": accelerator.process_index,
              "distributed_type": accelerator.distributed_type.name, "full_bytes": full, "build": built,
              "placed": placed, "forward": max(peak)}
    Path(args.scratch, f"rank{accelerator.process_index}.json").write_text(json.dumps(record))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(placement: str, world: int, args, scratch: Path) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve()), "--worker",
           "--placement", placement, "--scratch", str(scratch), "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--vocab", str(args.vocab)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(
                   Path.home() / ".cache" / "distill_toolkit" / "torch_extensions")))
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if done.returncode != 0:
        sys.exit(f"{placement} at world size {world} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return [json.loads((scratch / f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--vocab", type=int, default=2000)
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--placement", choices=PLACEMENTS, help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return _worker(args)

    rows = {}
    for world in args.world_sizes:
        for placement in PLACEMENTS:
            with tempfile.TemporaryDirectory() as scratch:
                ranks = _launch(placement, world, args, Path(scratch))
            assert all(r["world"] == world for r in ranks), f"{placement}: a rank did not see world size {world}"
            rows[(world, placement)] = {k: max(r[k] for r in ranks) for k in ("build", "placed", "forward")}
            rows[(world, placement)]["full"] = ranks[0]["full_bytes"]
            rows[(world, placement)]["type"] = ranks[0]["distributed_type"]

    mib = 2 ** 20
    figures = {"teacher_params_bytes": next(iter(rows.values()))["full"], "hidden": args.hidden,
               "layers": args.layers, "vocab": args.vocab}
    print(f"teacher: BERT hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: "
          f"{figures['teacher_params_bytes'] / mib:.1f} MiB of fp32 parameters\n")
    print(f"{'world':>5}  {'placement':<11}{'launch':<11}{'build MiB':>10}{'placed MiB':>11}{'forward MiB':>12}"
          f"{'placed / repl.':>16}{'forward / repl.':>17}")
    for (world, placement), row in rows.items():
        base = rows[(world, "replicated")]
        ratio, placed = row["forward"] / base["forward"], row["placed"] / base["placed"]
        print(f"{world:>5}  {placement:<11}{row['type']:<11}{row['build'] / mib:>10.2f}{row['placed'] / mib:>11.2f}"
              f"{row['forward'] / mib:>12.2f}{placed:>16.3f}{ratio:>17.3f}")
        key = f"{placement}_ws{world}"
        figures.update({f"{key}_{k}_bytes": row[k] for k in ("build", "placed", "forward")})
        if placement != "replicated":
            figures[f"{key}_forward_ratio"] = round(ratio, 4)
            figures[f"{key}_placed_ratio"] = round(placed, 4)
            figures[f"{key}_build_ratio"] = round(row["build"] / base["build"], 4)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
