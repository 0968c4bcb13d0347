"""Cross-tokenizer causal-LM KD: SmolLM2-135M (byte-level BPE) into a small Llama with MiniLM's WordPiece vocabulary.

    python examples/cross_tokenizer_lm.py                          # settings: examples/configs/cross_tokenizer_lm.yaml
    python examples/cross_tokenizer_lm.py --steps 4 --eval-examples 16   # a smoke run

Teacher: SmolLM2-135M-Instruct from the GGUF the project fetches (``distill_toolkit.data.sources.smollm2_gguf``,
dequantised to float32; its tokenizer has 49,152 byte-level BPE tokens). Student: a Llama built from the YAML's
config (2 blocks, hidden 128) over the 30,522-token WordPiece vocabulary of all-MiniLM-L6-v2 (``builtin:minilm``),
randomly initialised. Data: VADER sentences (``distill_toolkit.data.unlabelled``). Three students, same data,
same steps, same seed:

  no_teacher   next-token cross-entropy alone (strategy ``supervised``);
  uld          + ULD (Boizard et al. 2024) between the models' next-token distributions, positions paired in order;
  aligned_kd   + offset-aligned KD (shared-vocabulary KL, ULD on the rest, span probabilities).

``CrossTokenizerLMCollator`` tokenises each sentence with both tokenizers and aligns them by character offsets.
Prints held-out perplexity of each student over the WordPiece tokens of the corpus's test sentences (the same
tokens for all three, so the numbers compare), and as its last line a JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig
from distill_toolkit.data import CrossTokenizerLMCollator, sources
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.data.unlabelled import load_unlabelled
from distill_toolkit.models import load_gguf_causal_lm, load_tokenizer
from distill_toolkit.tasks.causal_lm import perplexity

CONFIG = Path(__file__).parent / "configs" / "cross_tokenizer_lm.yaml"


def build_student(tokenizer, fields: dict, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **fields)
    return LlamaForCausalLM(config)


def run(name: str, dist: DistillationConfig, settings: dict, train, held_out, tokenizers, teacher, root: Path,
        steps: int) -> dict:
    tok_S, tok_T = tokenizers
    data, t = settings["data"], settings["training"]
    student = build_student(tok_S, settings["student"], t["seed"])
    training = TrainingConfig(output_dir=str(root / name), max_steps=steps, batch_size=t["batch_size"],
                              learning_rate=t["learning_rate"], warmup_ratio=t["warmup_ratio"], seed=t["seed"],
                              trackers=[], progress_bar=False, overwrite=True)
    if dist.strategy == "supervised":  # the student's tokens only
        collate, given = CausalLMCollator(tok_S, max_length=data["max_length"]), None
    else:
        collate, given = CrossTokenizerLMCollator(tok_S, tok_T, max_length=data["max_length"]), teacher
    start = time.perf_counter()
    history = Trainer(student, training, dist, train, teacher=given, collate_fn=collate,
                      task="causal_lm").train()["history"]
    seconds = time.perf_counter() - start
    scored = perplexity(student, held_out, CausalLMCollator(tok_S, max_length=data["max_length"]), batch_size=32)
    last = {k[6:]: round(v, 4) for k, v in history[-1].items() if k.startswith("train/") and k != "train/lr"}
    return {"perplexity": round(scored["perplexity"], 2), "tokens": scored["tokens"], "train_s": round(seconds, 1),
            "last_losses": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--output-dir", default="outputs/cross_tokenizer_lm")
    parser.add_argument("--steps", type=int, help="training steps of every student (default: the YAML's)")
    parser.add_argument("--eval-examples", type=int, help="held-out sentences (default: the YAML's)")
    parser.add_argument("--runs", nargs="*", help="names of the YAML's runs to do (default: all)")
    args = parser.parse_args()
    settings = yaml.safe_load(Path(args.config).read_text())
    data, t = settings["data"], settings["training"]
    steps = args.steps or t["max_steps"]

    teacher, tok_T = load_gguf_causal_lm(sources.smollm2_gguf())
    tok_S = load_tokenizer("builtin:minilm")
    splits = load_unlabelled(data["corpus"], seed=t["seed"])
    train = [{"text": x} for x in splits["train"]["text"][:data["train_examples"]]]
    held_out = [{"text": x} for x in splits["test"]["text"][:args.eval_examples or data["eval_examples"]]]
    results = {}
    for name, section in settings["runs"].items():
        if args.runs and name not in args.runs:
            continue
        dist = DistillationConfig.from_dict(section)
        results[name] = run(name, dist, settings, train, held_out, (tok_S, tok_T), teacher, Path(args.output_dir),
                            steps)
        print(f"{name}: {results[name]}", flush=True)

    base = results.get("no_teacher", {}).get("perplexity")
    header = f"{'student':12} {'held-out ppl':>12} {'vs no teacher':>13} {'train s':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        ratio = f"{r['perplexity'] / base:.3f}" if base else ""
        print(f"{name:12} {r['perplexity']:>12.2f} {ratio:>13} {r['train_s']:>8.1f}")
    print(json.dumps({"runs": results, "steps": steps, "batch_size": t["batch_size"], "train_examples": len(train),
                      "eval_examples": len(held_out), "max_length": data["max_length"]}))


if __name__ == "__main__":
    main()
