"""Loop overhead: a full distillation step vs. the sum of its parts, and vs. TextBrewer.

    python benchmarks/loop_overhead.py [--steps 20] [--rounds 3] [--batch-size 32] [--seq-len 64]
    python benchmarks/loop_overhead.py --device cuda [--bf16]      # on a GPU (benchmarks/gpu_check.sh runs it)

Same models and the same pre-built batches throughout, measured in one run:

  (a) parts    teacher forward (inference mode) + student train step (forward with labels,
               backward, AdamW step), timed back to back in plain PyTorch;
  (b) toolkit  distill_toolkit's Trainer step: logits KD + hard labels + 4 hidden-state matches
               (hooks capture only those 4 layers), through Accelerate;
  (c) textbrewer  TextBrewer 0.2.1's GeneralDistiller with the same losses (needs
               ``output_hidden_states`` of every layer), if the package is installed;
  (d) compat   the same TextBrewer script on ``distill_toolkit.compat.textbrewer`` (one import line
               changed): TextBrewer's GeneralDistiller run by the toolkit's Trainer, timed between the
               ends of consecutive steps as (b) is. Goal: d/b <= 1.10.
  (e) hf_trainer  ``distill_toolkit.hf.DistillationTrainer``: the same recipe as (b) (same strategy,
               hooks and losses) run by ``transformers.Trainer``'s own loop (AdamW, constant LR, no
               clipping, fixed order), timed between the ends of consecutive steps (``on_step_end``).
               Goal: e/b <= 1.10.

  (f) toolkit, bf16 teacher  (b) with the teacher's weights in bf16 (``teacher.dtype: bf16``), the
               student in fp32 without autocast;
  (g) toolkit, bf16 teacher + bf16 autocast  (f) with ``mixed_precision: bf16`` for the student's
               forward (fp32 weights and optimizer state).
               Goal (issue 12): f or g <= 0.8 x c (TextBrewer's fp32 step), at no loss of student
               accuracy on the quickstart (``examples/configs/distill_minilm_3l.yaml`` with
               ``--set teacher.dtype=bf16``, see docs/benchmarks.md).

Models: a MiniLM-L6-shaped BERT teacher (6 blocks, hidden 384, built from its config) and a
3-block student of the same width. Gradient clipping is off in all three. Times are medians
over ``rounds`` interleaved rounds of ``steps`` steps (after warm-up). The last line is JSON.

``--device`` (default ``cpu``) places models and batches (the batches are on the device before
timing starts, in all three); on ``cuda`` every step ends with a ``torch.cuda.synchronize()``
before it is timed. ``--bf16`` runs every forward (teacher and student) under bf16 autocast with
fp32 weights: ``mixed_precision: bf16`` for the toolkit, ``torch.autocast`` around (a)'s forwards
and TextBrewer's ``train_on_batch`` (its forward and losses; backward outside, as in the others).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, TrainerCallback, TrainingArguments

from distill_toolkit import Callback, DistillationConfig, Match, Trainer, TrainingConfig
import distill_toolkit.compat.textbrewer as compat_textbrewer
from distill_toolkit.hf import DistillationTrainer

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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a timestamp means it is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when ``bf16``, else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def time_parts(teacher, student, batches, device: torch.device, bf16: bool = False, lr=1e-4) -> list[float]:
    """(a) teacher forward + student train step, per step, in plain PyTorch."""
    student.to(device)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    student.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        with torch.inference_mode(), autocast(device, bf16):
            teacher(**{k: v for k, v in batch.items() if k != "labels"})
        with autocast(device, bf16):
            loss = student(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


class StepTimer(Callback):
    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def on_step_end(self, trainer, step, logs):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def time_toolkit(teacher, student, batches, device: torch.device, bf16: bool = False, lr=1e-4) -> list[float]:
    """(b) the toolkit's distillation step, timed between consecutive steps of its loop (also (f) and (g):
    ``teacher`` in bf16, and ``bf16`` autocast)."""
    timer = StepTimer(device)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingConfig(output_dir=out, max_steps=len(batches), learning_rate=lr, max_grad_norm=None,
                                  trackers=[], progress_bar=False, eval_every_epochs=None, lr_scheduler="constant",
                                  overwrite=True, cpu=device.type == "cpu", mixed_precision="bf16" if bf16 else "no")
        distillation = DistillationConfig(temperature=4, hard_label_weight=1.0, matches=[
            Match(teacher_layer=t, student_layer=s, loss="hidden_mse") for t, s in MATCHES])
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        Trainer(student, training, distillation, loader, teacher=teacher, callbacks=[timer]).train()
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]


def time_textbrewer(teacher, student, batches, device: torch.device, bf16: bool = False, lr=1e-4):
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
            synchronize(device)
            stamps.append(time.perf_counter())
            with autocast(device, bf16):
                return super().train_on_batch(batch, args)

        def save_and_callback(self, *args, **kwargs):
            pass  # no checkpoint writing inside the timed loop

    student.to(device)
    with tempfile.TemporaryDirectory() as out:
        train_config = textbrewer.TrainingConfig(device=device, output_dir=out, log_dir=None, ckpt_steps=10 ** 9)
        distill_config = textbrewer.DistillationConfig(
            temperature=4, hard_label_weight=1.0, kd_loss_type="ce",
            intermediate_matches=[{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse",
                                   "weight": 1} for t, s in MATCHES])
        distiller = Timed(train_config, distill_config, teacher, student, adaptor, adaptor)
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        distiller.train(optimizer, loader, num_steps=len(batches), output_hidden_states=True)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def time_compat(teacher, student, batches, device: torch.device, bf16: bool = False, lr=1e-4) -> list[float]:
    """(d) (c)'s script on ``distill_toolkit.compat.textbrewer``, timed at the end of every step (its
    ``tb_writer`` gets each step's losses there)."""
    stamps = []

    class StepStamps:  # stands in for distiller.tb_writer
        def add_scalar(self, tag, value, step):
            if tag == "scalar/total_loss":
                synchronize(device)
                stamps.append(time.perf_counter())

    def adaptor(batch, outputs):
        return {"logits": outputs.logits, "hidden": outputs.hidden_states, "losses": outputs.loss,
                "inputs_mask": batch["attention_mask"]}

    student.to(device)
    with tempfile.TemporaryDirectory() as out:
        train_config = compat_textbrewer.TrainingConfig(device=device, output_dir=out, log_dir=None, ckpt_steps=10 ** 9,
                                                        mixed_precision="bf16" if bf16 else "no")
        distill_config = compat_textbrewer.DistillationConfig(
            temperature=4, hard_label_weight=1.0, kd_loss_type="ce",
            intermediate_matches=[{"layer_T": t, "layer_S": s, "feature": "hidden", "loss": "hidden_mse",
                                   "weight": 1} for t, s in MATCHES])
        distiller = compat_textbrewer.GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
        distiller.tb_writer = StepStamps()
        optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0)  # (b)'s: no weight decay
        loader = DataLoader(batches, batch_size=None, shuffle=False)
        distiller.train(optimizer, loader, num_steps=len(batches), output_hidden_states=True)
    return [b - a for a, b in zip(stamps, stamps[1:])]


class HFStepTimer(TrainerCallback):
    """(e)'s clock: a stamp at the end of every optimiser step of ``transformers.Trainer``."""

    def __init__(self, device: torch.device):
        self.device, self.stamps = device, []

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())


def time_hf_trainer(teacher, student, batches, device: torch.device, bf16: bool = False, lr=1e-4) -> list[float]:
    """(e) (b)'s recipe through ``DistillationTrainer`` (a ``transformers.Trainer``), timed as (b) is."""
    timer = HFStepTimer(device)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=1, max_steps=len(batches), learning_rate=lr,
            lr_scheduler_type="constant", max_grad_norm=0.0, optim="adamw_torch", train_sampling_strategy="sequential",
            report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=10 ** 9,
            dataloader_pin_memory=False, use_cpu=device.type == "cpu", bf16=bf16)
        distillation = DistillationConfig(temperature=4, hard_label_weight=1.0, matches=[
            Match(teacher_layer=t, student_layer=s, loss="hidden_mse") for t, s in MATCHES])
        # the data set's items are the pre-built batches: one item per step, passed through as it is
        DistillationTrainer(model=student, teacher_model=teacher, args=args, distillation=distillation,
                            train_dataset=batches, data_collator=lambda items: items[0], callbacks=[timer]).train()
    return [b - a for a, b in zip(timer.stamps, timer.stamps[1:])]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where models and batches live (cuda: the current CUDA device)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for every forward, fp32 weights")
    args = parser.parse_args(argv)
    if args.warmup < 1:
        parser.error("--warmup must be at least 1 (the toolkit's first step has no earlier stamp)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device; use --device cpu")
    args.device = torch.device("cuda", torch.cuda.current_device()) if args.device == "cuda" else torch.device("cpu")
    return args


def measure(args) -> dict:
    """The per-step times of (a), (b), (c) over the interleaved rounds, after warm-up."""
    teacher, _ = build_models()
    teacher.to(args.device)
    batches = [{k: v.to(args.device) for k, v in b.items()}
               for b in build_batches(args.steps + args.warmup, args.batch_size, args.seq_len)]
    bf16_teacher = build_models()[0].to(device=args.device, dtype=torch.bfloat16)  # same seed: same weights
    results = {"parts": [], "toolkit": [], "textbrewer": [], "compat": [], "hf_trainer": [],
               "toolkit_bf16_teacher": [], "toolkit_bf16_teacher_autocast": []}
    for _ in range(args.rounds):
        # fresh copies each round so every method trains the same starting student
        results["parts"] += time_parts(teacher, build_models()[1], batches, args.device, args.bf16)[args.warmup:]
        results["toolkit"] += time_toolkit(teacher, build_models()[1], batches, args.device,
                                           args.bf16)[args.warmup - 1:]
        tb = time_textbrewer(teacher, build_models()[1], batches, args.device, args.bf16)
        if tb is not None:
            results["textbrewer"] += tb[args.warmup - 1:]
        results["compat"] += time_compat(teacher, build_models()[1], batches, args.device, args.bf16)[args.warmup - 1:]
        results["hf_trainer"] += time_hf_trainer(teacher, build_models()[1], batches, args.device,
                                                 args.bf16)[args.warmup - 1:]
        if args.device.type == "cpu" and not args.bf16:
            results["toolkit_bf16_teacher"] += time_toolkit(bf16_teacher, build_models()[1], batches,
                                                            args.device)[args.warmup - 1:]
            results["toolkit_bf16_teacher_autocast"] += time_toolkit(bf16_teacher, build_models()[1], batches,
                                                                     args.device, bf16=True)[args.warmup - 1:]
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    median = {k: statistics.median(v) for k, v in measure(args).items() if v}
    figures = {
        "batch_size": args.batch_size, "seq_len": args.seq_len, "steps_per_round": args.steps,
        "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "parts_ms": 1000 * median["parts"], "toolkit_ms": 1000 * median["toolkit"],
        "overhead_ratio": median["toolkit"] / median["parts"],
    }
    if "textbrewer" in median:
        figures["textbrewer_ms"] = 1000 * median["textbrewer"]
        figures["toolkit_vs_textbrewer_ratio"] = median["toolkit"] / median["textbrewer"]
    figures["compat_ms"] = 1000 * median["compat"]
    figures["compat_vs_toolkit_ratio"] = median["compat"] / median["toolkit"]
    figures["hf_trainer_ms"] = 1000 * median["hf_trainer"]
    figures["hf_trainer_vs_toolkit_ratio"] = median["hf_trainer"] / median["toolkit"]
    for name in ("toolkit_bf16_teacher", "toolkit_bf16_teacher_autocast"):
        if name in median:
            figures[f"{name}_ms"] = 1000 * median[name]
            if "textbrewer" in median:
                figures[f"{name}_vs_textbrewer_ratio"] = median[name] / median["textbrewer"]
    figures["device"] = args.device.type if args.device.type == "cpu" else torch.cuda.get_device_name(args.device)
    figures["precision"] = "bf16_autocast" if args.bf16 else "fp32"
    print_table(figures, args)
    print(json.dumps(figures))


def print_table(figures: dict, args) -> None:
    where = "" if args.device.type == "cpu" and not args.bf16 else \
        f", {figures['device']}, {'bf16 autocast' if args.bf16 else 'fp32'}"
    print(f"\nloop overhead, batch {args.batch_size} x {args.seq_len} tokens, "
          f"{args.rounds} rounds x {args.steps} steps, {torch.get_num_threads()} threads{where} (median per step)")
    print(f"{'measurement':52} {'ms/step':>9}")
    print(f"{'(a) teacher fwd + student train step (plain torch)':52} {figures['parts_ms']:>9.1f}")
    print(f"{'(b) distill_toolkit step (KD + 4 hidden matches)':52} {figures['toolkit_ms']:>9.1f}")
    if "textbrewer_ms" in figures:
        print(f"{'(c) textbrewer GeneralDistiller step (same losses)':52} {figures['textbrewer_ms']:>9.1f}")
    print(f"{'(d) compat.textbrewer GeneralDistiller step (same)':52} {figures['compat_ms']:>9.1f}")
    print(f"{'(e) hf.DistillationTrainer step (transformers loop)':52} {figures['hf_trainer_ms']:>9.1f}")
    if "toolkit_bf16_teacher_ms" in figures:
        print(f"{'(f) distill_toolkit step, bf16 teacher':52} {figures['toolkit_bf16_teacher_ms']:>9.1f}")
        print(f"{'(g) distill_toolkit step, bf16 teacher + bf16 autocast':52} "
              f"{figures['toolkit_bf16_teacher_autocast_ms']:>9.1f}")
    print(f"overhead ratio b/a = {figures['overhead_ratio']:.3f} (goal <= 1.05)")
    print(f"compat / toolkit d/b = {figures['compat_vs_toolkit_ratio']:.3f} (goal <= 1.10)")
    print(f"hf_trainer / toolkit e/b = {figures['hf_trainer_vs_toolkit_ratio']:.3f} (goal <= 1.10)")
    if "toolkit_vs_textbrewer_ratio" in figures:
        print(f"toolkit / textbrewer = {figures['toolkit_vs_textbrewer_ratio']:.3f}")
    if "toolkit_bf16_teacher_vs_textbrewer_ratio" in figures:
        print(f"bf16 teacher / textbrewer fp32 f/c = {figures['toolkit_bf16_teacher_vs_textbrewer_ratio']:.3f}, "
              f"g/c = {figures['toolkit_bf16_teacher_autocast_vs_textbrewer_ratio']:.3f} (goal <= 0.80)")


if __name__ == "__main__":
    main()
