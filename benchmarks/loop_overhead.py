"""Loop overhead: a full distillation step vs. the sum of its parts, and vs. TextBrewer.

    python benchmarks/loop_overhead.py [--steps 20] [--rounds 3] [--batch-size 32] [--seq-len 64]

Same models and the same pre-built batches throughout, measured in one run:

  (a) parts    teacher forward (inference mode) + student train step (forward with labels,
               backward, AdamW step), timed back to back in plain PyTorch;
  (b) toolkit  distill_toolkit's Trainer step: logits KD + hard labels + 4 hidden-state matches
               (hooks capture only those 4 layers), through Accelerate;
  (c) textbrewer  TextBrewer 0.2.1's GeneralDistiller with the same losses (needs
               ``output_hidden_states`` of every layer), if the package is installed.

Models: a MiniLM-L6-shaped BERT teacher (6 blocks, hidden 384, built from its config) and a
3-block student of the same width. Gradient clipping is off in all three. Times are medians
over ``rounds`` interleaved rounds of ``steps`` steps (after warm-up). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, TrainingConfig

MATCHES = [(0, 0), (2, 1), (4, 2), (6, 3)]  # (teacher hidden layer, student hidden layer)


def build_models(seed: int = 0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, num_labels=2, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1)
    teacher = BertForSequenceClassification(config).eval()
    student_config = BertConfig(**{**config.to_dict(), "num_hidden_layers": 3})
    student = BertForSequenceClassification(student_config)
    return teacher, student


def build_batches(n: int, batch_size: int, seq_len: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(1000, 30000, (batch_size, seq_len), generator=g)
        mask = torch.ones(batch_size, seq_len, dtype=torch.long)
        for row in range(batch_size):  # some padding, as real batches have
            pad = int(torch.randint(0, seq_len // 4, (1,), generator=g))
            if pad:
                mask[row, -pad:] = 0
                ids[row, -pad:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask,
                        "labels": torch.randint(0, 2, (batch_size,), generator=g)})
    return batches


def time_parts(teacher, student, batches, lr=1e-4) -> list[float]:
    """(a) teacher forward + student train step, per step, in plain PyTorch."""
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        with torch.inference_mode():
            teacher(**{k: v for k, v in batch.items() if k != "labels"})
        loss = student(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    def __init__(self):
        self.stamps = []

    def on_step_end(self, trainer, step, logs):
        self.stamps.append(time.perf_counter())


def time_toolkit(teacher, student, batches, lr=1e-4) -> list[float]:
    """(b) the toolkit's distillation step, timed between consecutive steps of its loop."""
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingConfig(output_dir=out, max_steps=len(batches), learning_rate=lr, max_grad_norm=None,
                                  trackers=[], progress_bar=False, eval_every_epochs=None, lr_scheduler="constant",
                                  overwrite=True)
        distillation = DistillationConfig(temperature=4, hard_label_weight=1.0, matches=[
            Match(teacher_layer=t, student_layer=s, loss="hidden_mse") for t, s in MATCHES])
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        Trainer(student, training, distillation, loader, teacher=teacher, callbacks=[timer]).train()
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]


def time_textbrewer(teacher, student, batches, lr=1e-4):
    """(c) TextBrewer's GeneralDistiller on the same batches (None if textbrewer is not installed)."""
    try:
        import textbrewer
    except ImportError:
        return None

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "losses": outputs.loss,
                "inputs_mask": batch["attention_mask"]}

    stamps = []

    class Timed(textbrewer.GeneralDistiller):
        def train_on_batch(self, batch, args):
            stamps.append(time.perf_counter())
            return super().train_on_batch(batch, args)

        def save_and_callback(self, *args, **kwargs):
            pass  # no checkpoint writing inside the timed loop

    with tempfile.TemporaryDirectory() as out:
        train_config = textbrewer.TrainingConfig(device="cpu", output_dir=out, log_dir=None, ckpt_steps=10 ** 9)
        distill_config = textbrewer.DistillationConfig(
            temperature=4, hard_label_weight=1.0, kd_loss_type="ce",
            intermediate_matches=[{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse",
                                   "weight": 1} for t, s in MATCHES])
        distiller = Timed(train_config, distill_config, teacher, student, adaptor, adaptor)
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        distiller.train(optimizer, loader, num_steps=len(batches), output_hidden_states=True)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()

    teacher, student = build_models()
    batches = build_batches(args.steps + args.warmup, args.batch_size, args.seq_len)
    results = {"parts": [], "toolkit": [], "textbrewer": []}
    for _ in range(args.rounds):
        # fresh copies each round so every method trains the same starting student
        results["parts"] += time_parts(teacher, build_models()[1], batches)[args.warmup:]
        results["toolkit"] += time_toolkit(teacher, build_models()[1], batches)[args.warmup - 1:]
        tb = time_textbrewer(teacher, build_models()[1], batches)
        if tb is not None:
            results["textbrewer"] += tb[args.warmup - 1:]

    median = {k: statistics.median(v) for k, v in results.items() if v}
    figures = {
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps_per_round": args.steps,
        "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "parts_ms": 1000 * median["parts"], "toolkit_ms": 1000 * median["toolkit"],
        "overhead_ratio": median["toolkit"] / median["parts"],
    }
    if "textbrewer" in median:
        figures["textbrewer_ms"] = 1000 * median["textbrewer"]
        figures["toolkit_vs_textbrewer_ratio"] = median["toolkit"] / median["textbrewer"]

    print(f"\nloop overhead, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} threads (median per step)")
    print(f"{'measurement':52} {'ms/step':>9}")
    print(f"{'(a) teacher fwd + student train step (plain torch)':52} {figures['parts_ms']:>9.1f}")
    print(f"{'(b) distill_toolkit step (KD + 4 hidden matches)':52} {figures['toolkit_ms']:>9.1f}")
    if "textbrewer_ms" in figures:
        print(f"{'(c) textbrewer GeneralDistiller step (same losses)':52} {figures['textbrewer_ms']:>9.1f}")
    print(f"overhead ratio b/a = {figures['overhead_ratio']:.3f} (goal <= 1.05)")
    if "toolkit_vs_textbrewer_ratio" in figures:
        print(f"toolkit / textbrewer = {figures['toolkit_vs_textbrewer_ratio']:.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
