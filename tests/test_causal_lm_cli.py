"""`distill-toolkit train CONFIG.yaml` with strategy causal_lm: tiny Llama and GPT-2 saved to folders, a tokenizer
built locally, text files (plain lines, and prompt/completion JSON lines), a top-k teacher cache written by the CLI."""

import json
import math
import subprocess
import sys

import pytest
import yaml
from lm_helpers import prompt_pairs, sentences, tiny_gpt2, tiny_llama, tiny_tokenizer

from distill_toolkit.cli import load_experiment
from distill_toolkit.config import ConfigError


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


def _summary(run) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout[run.stdout.index("{"):])


def _workspace(tmp_path, arch: str):
    teacher = tmp_path / "teacher"
    (tiny_llama(4, 48, seed=1) if arch == "llama" else tiny_gpt2(4, 48, seed=1)).save_pretrained(teacher)
    tiny_tokenizer(teacher)
    if arch == "llama":  # plain text, one example per line
        for split, n in (("train", 32), ("dev", 8)):
            (tmp_path / f"{split}.txt").write_text("\n".join(sentences(n, seed=len(split))) + "\n")
        data = {"name": "text", "train_file": str(tmp_path / "train.txt"), "dev_file": str(tmp_path / "dev.txt")}
    else:  # prompt + completion: only the completion is learnt
        for split, n in (("train", 32), ("dev", 8)):
            lines = [json.dumps({"question": p["prompt"], "answer": p["completion"]})
                     for p in prompt_pairs(n, seed=len(split))]
            (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        data = {"name": "text", "train_file": str(tmp_path / "train.jsonl"), "dev_file": str(tmp_path / "dev.jsonl"),
                "prompt_column": "question", "text_column": "answer"}
    return {"teacher": {"path": str(teacher)}, "student": {"init_from": "teacher", "layers": [0, 3]},
            "data": {**data, "max_length": 16},
            "training": {"output_dir": str(tmp_path / "out"), "max_steps": 4, "batch_size": 4, "learning_rate": 3e-3,
                         "trackers": [], "progress_bar": False},
            "distillation": {"strategy": "causal_lm", "kd_loss": "forward_kl", "hard_label_weight": 0.5}}


def _write(tmp_path, config, name="run.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cli_distils_a_causal_lm_end_to_end(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    config = _workspace(tmp_path, arch)
    if arch == "gpt2":  # prompts to continue: half the batches on the student's own samples
        config["distillation"]["strategy_options"] = {"lmbda": 0.5, "max_new_tokens": 4}
    summary = _summary(_cli("train", _write(tmp_path, config)))
    assert summary["global_step"] == 4
    assert math.isfinite(summary["eval"]["perplexity"]) and summary["eval"]["tokens"] > 0
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "final")
    assert student.config.num_hidden_layers == 2 and student.config.model_type == arch
    assert json.loads((tmp_path / "out" / "result.json").read_text())["eval"] == summary["eval"]

    if arch == "gpt2":  # off-policy from a top-k teacher cache written by the CLI
        config["distillation"].pop("strategy_options")
        config["training"].update(output_dir=str(tmp_path / "cached"), teacher_cache=str(tmp_path / "cache"),
                                  teacher_cache_top_k=8)
        path = _write(tmp_path, config, "cached.yaml")
        built = _summary(_cli("cache-teacher", path))
        assert built["top_k"] == 8 and built["examples"] == 32
        cached = _summary(_cli("train", path))
        assert cached["global_step"] == 4 and math.isfinite(cached["eval"]["perplexity"])


def test_causal_lm_strategy_needs_text_data(tmp_path):
    config = _workspace(tmp_path, "llama")
    config["data"] = {"name": "sentiment"}
    with pytest.raises(ConfigError, match="data.name: strategy 'causal_lm' trains causal LMs on text.*name: text"):
        load_experiment(str(_write(tmp_path, config)))
    config["data"] = {"name": "text", "train_file": str(tmp_path / "missing.txt")}
    with pytest.raises(ConfigError, match="data.train_file: file .*missing.txt.* not found"):
        load_experiment(str(_write(tmp_path, config)))
