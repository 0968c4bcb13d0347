"""Distil a teacher served by llama.cpp (SmolLM2-135M over the OpenAI-compatible API) into a 4-block student.

    python examples/served_teacher.py                   # starts llama-cpp-python's server itself
    python examples/served_teacher.py --server http://HOST:PORT/v1 --model NAME   # a server you run
    python examples/served_teacher.py --on-policy       # also: the student's samples scored by the server

Needs the ``served`` extra (``CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'llama-cpp-python[server]==0.3.36'``).
Runs ``examples/configs/served_teacher.yaml`` through the CLI: ``cache-teacher`` scores the VADER sentences
once through the server (top-32 log-probabilities per token) into the teacher cache, ``train`` distils the
student from it; ``--on-policy`` then trains with ``strategy_options.lmbda: 1`` and no cache, the server
scoring the student's own samples as they are drawn. Prints the summaries and one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from distill_toolkit.cli import main
from distill_toolkit.data import load_sentiment
from distill_toolkit.data.sources import smollm2_gguf
from distill_toolkit.models import load_gguf_causal_lm, student_from_teacher
from distill_toolkit.teachers.llama_server import MODEL_ALIAS, llama_server

CONFIG = Path(__file__).parent / "configs" / "served_teacher.yaml"
OUT = Path("outputs/served_teacher")


def prepare(examples: int) -> None:
    """The student (4 of SmolLM2's blocks, its tokenizer) and the text files the YAML names."""
    OUT.mkdir(parents=True, exist_ok=True)
    if not (OUT / "student" / "config.json").is_file():
        teacher, tokenizer = load_gguf_causal_lm(smollm2_gguf())
        student = student_from_teacher(teacher, [0, 10, 20, 29])
        vars(student.config).pop("quantization_config", None)  # float32 now: saved checkpoints must not claim GGUF
        student.save_pretrained(OUT / "student")
        tokenizer.save_pretrained(OUT / "student")
    data = load_sentiment("movies")
    (OUT / "train.txt").write_text("\n".join(data["train"]["text"][:examples]) + "\n")
    (OUT / "dev.txt").write_text("\n".join(data["test"]["text"][:max(examples // 4, 8)]) + "\n")
    for split, texts in (("train", data["train"]["text"][:examples]), ("dev", data["test"]["text"][:8])):
        rows = [{"prompt": " ".join(t.split()[:4]), "text": " " + " ".join(t.split()[4:])} for t in texts
                if len(t.split()) > 5]  # on-policy: the student continues each sentence's first four words
        (OUT / f"{split}_prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def run(command: str, server: str, model: str, *extra: str) -> int:
    return main([command, str(CONFIG), "--set", f"teacher.server={server}", "--set", f"teacher.model={model}",
                 *extra])


def main_example() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--server", help="a running server's /v1 URL (default: start llama-cpp-python's)")
    parser.add_argument("--model", default=MODEL_ALIAS)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--on-policy", action="store_true")
    args = parser.parse_args()
    prepare(args.examples)
    own = llama_server(smollm2_gguf(), OUT / "server.log", threads=2) if args.server is None else None
    with own if own is not None else contextlib.nullcontext(args.server) as server:
        codes = {"cache-teacher": run("cache-teacher", server, args.model, "--overwrite"),
                 "train": run("train", server, args.model, "--overwrite")}
        if args.on_policy:
            codes["train_on_policy"] = run("train", server, args.model, "--overwrite", "--set",
                                           "training.teacher_cache=null", "--set",
                                           f"training.output_dir={OUT / 'on_policy'}", "--set",
                                           "distillation.strategy_options={lmbda: 1.0, max_new_tokens: 16}",
                                           "--set", "training.max_steps=10", "--set", "data.prompt_column=prompt",
                                           "--set", f"data.train_file={OUT / 'train_prompts.jsonl'}",
                                           "--set", f"data.dev_file={OUT / 'dev_prompts.jsonl'}")
    print(json.dumps({"exit_codes": codes, "config": str(CONFIG)}))


if __name__ == "__main__":
    main_example()
