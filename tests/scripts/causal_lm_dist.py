"""One causal-LM distillation run for the distributed tests (python, torchrun or accelerate launch).

    causal_lm_dist.py OUTPUT_DIR [--batch-size 2] [--max-steps 6] [--lmbda 0.5] [--placement replicated|zero3]

Tiny Llama teacher (3 blocks) and student (2 blocks), prompt/completion pairs of uneven length.
Every rank writes OUTPUT_DIR/report_rank{R}.json: world size, distributed type, the loss history,
what it holds of the teacher's parameters, and per micro-batch whether it went on-policy, the
prompts it continued and how many tokens it generated.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lm_helpers import prompt_pairs, tiny_llama, tiny_tokenizer  # noqa: E402

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig  # noqa: E402
from distill_toolkit.data.lm import CausalLMCollator, prompts_of  # noqa: E402
from distill_toolkit.utils.shards import parameter_shards  # noqa: E402


def run(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=6)
    parser.add_argument("--lmbda", type=float, default=0.0)
    parser.add_argument("--placement", default="replicated")
    args = parser.parse_args(argv)

    training = TrainingConfig(output_dir=args.output_dir, max_steps=args.max_steps, batch_size=args.batch_size,
                              learning_rate=3e-3, trackers=[], progress_bar=False, eval_every_epochs=None, seed=0,
                              max_grad_norm=None, teacher_placement=args.placement)
    distillation = DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", temperature=2.0,
                                      hard_label_weight=0.5,
                                      strategy_options={"lmbda": args.lmbda, "max_new_tokens": 4})
    trainer = Trainer(tiny_llama(2, 32, seed=2), training, distillation, prompt_pairs(16),
                      teacher=tiny_llama(3, 48, seed=1), collate_fn=CausalLMCollator(tiny_tokenizer()))
    seen = []
    prepare = trainer.strategy.prepare_batch

    def recording(batch, student, teachers, key):
        out = prepare(batch, student, teachers, key)
        if key is not None:
            on = trainer.strategy.on_policy
            seen.append({"key": list(key), "on_policy": on, "prompts": prompts_of(batch) if on else None,
                         "generated_tokens": trainer.strategy.loss_items(out) if on else 0})
        return out

    trainer.strategy.prepare_batch = recording
    result = trainer.train()
    acc = trainer.accelerator
    runner = trainer.teachers["teacher"]
    report = {"rank": acc.process_index, "world": acc.num_processes, "distributed_type": acc.distributed_type.name,
              "history": result["history"], "micro_batches": seen, "teacher_type": type(runner.model).__name__,
              "teacher_shards": parameter_shards(runner.model)}
    Path(args.output_dir, f"report_rank{acc.process_index}.json").write_text(json.dumps(report))
    acc.wait_for_everyone()


if __name__ == "__main__":
    run()
