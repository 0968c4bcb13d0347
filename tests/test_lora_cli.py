"""`distill-toolkit train CONFIG.yaml` with LoRA students, a bf16 teacher and gradient checkpointing, on tiny
models saved to folders: a causal LM (Llama) and a sentence classifier (BERT), then `distill-toolkit export`."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from lm_helpers import sentences, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file
from test_cli import workspace  # noqa: F401  (the tiny BERT teacher and sentiment files of the CLI tests)
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

peft = pytest.importorskip("peft")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "distill_toolkit.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _summary(run) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout[run.stdout.index("{"):])


def _write(tmp_path, config, name):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _training(out, **kw):
    return {"output_dir": str(out), "max_steps": 4, "batch_size": 4, "learning_rate": 1e-2, "trackers": [],
            "progress_bar": False, "save_every_steps": 2, **kw}


@pytest.fixture
def lm_workspace(tmp_path):
    for name, model in (("teacher", tiny_llama(4, 48, seed=1)), ("student", tiny_llama(2, 32, seed=2))):
        model.save_pretrained(tmp_path / name)
        tiny_tokenizer(tmp_path / name)
    for split, n in (("train", 16), ("dev", 8)):
        (tmp_path / f"{split}.txt").write_text("\n".join(sentences(n, seed=len(split))) + "\n")
    return tmp_path


def _lm_config(tmp_path, out, checkpointing):
    return {"teacher": {"path": str(tmp_path / "teacher"), "dtype": "bfloat16"},
            "student": {"path": str(tmp_path / "student"),
                        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
            "data": {"name": "text", "train_file": str(tmp_path / "train.txt"), "dev_file": str(tmp_path / "dev.txt"),
                     "max_length": 16},
            "training": _training(tmp_path / out, gradient_checkpointing=checkpointing),
            "distillation": {"strategy": "causal_lm", "kd_loss": "forward_kl", "hard_label_weight": 0.5}}


@pytest.mark.slow
def test_lora_causal_lm_student_with_a_bf16_teacher_and_gradient_checkpointing(lm_workspace):
    tmp_path = lm_workspace
    runs = {}
    for checkpointing in (True, False):
        out = f"out_gc_{checkpointing}"
        summary = _summary(_cli("train", _write(tmp_path, _lm_config(tmp_path, out, checkpointing), f"{out}.yaml")))
        assert summary["global_step"] == 4 and summary["eval"]["perplexity"] > 0
        runs[checkpointing] = load_file(str(tmp_path / out / "final" / "model.safetensors"))
    record = yaml.safe_load((tmp_path / "out_gc_True" / "config.yaml").read_text())
    assert record["training"]["gradient_checkpointing"] is True and record["student"]["lora"]["r"] == 4
    # recomputing the blocks changes nothing but memory
    assert runs[True].keys() == runs[False].keys()
    for key in runs[True]:
        torch.testing.assert_close(runs[True][key], runs[False][key], rtol=1e-4, atol=1e-6)

    final = tmp_path / "out_gc_True" / "final"
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "student")
    merged = AutoModelForCausalLM.from_pretrained(final)  # plain transformers: the adapters merged in
    weights = runs[True]
    attn = "model.layers.1.self_attn"
    assert torch.equal(weights[f"{attn}.k_proj.weight"], base.state_dict()[f"{attn}.k_proj.weight"])
    assert not torch.equal(weights[f"{attn}.q_proj.weight"], base.state_dict()[f"{attn}.q_proj.weight"])
    adapter = peft.PeftModel.from_pretrained(base, str(final / "adapter")).eval()
    ids = torch.randint(4, 30, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(input_ids=ids).logits, adapter(input_ids=ids).logits,
                                   rtol=1e-5, atol=1e-5)

    exported = _summary(_cli("export", tmp_path / "out_gc_True" / "checkpoints" / "step_4", tmp_path / "exported"))
    assert exported["loadable_by_transformers"] and "adapter" in exported["files"]
    again = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert again.keys() == weights.keys() and all(torch.equal(again[k], weights[k]) for k in weights)


def _bert_config(tmp_path, lora):
    return {"teacher": {"path": str(tmp_path / "teacher"), "dtype": "bfloat16"},
            "student": {"init_from": "teacher", "layers": [1, 3], "lora": lora},
            "data": {"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                     "dev_file": str(tmp_path / "dev.jsonl"), "text_column": "sentence", "label_column": "polarity",
                     "max_length": 16},
            "training": _training(tmp_path / "out", gradient_checkpointing=True),
            "distillation": {"temperature": 2.0, "hard_label_weight": 0.5}}


@pytest.mark.slow
def test_lora_classifier_student_from_yaml(workspace):
    tmp_path = workspace
    config = _bert_config(tmp_path, {"r": 4, "target_modules": ["query", "value"]})
    summary = _summary(_cli("train", _write(tmp_path, config, "run.yaml")))
    assert summary["global_step"] == 4 and 0 <= summary["eval"]["accuracy"] <= 1
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher", dtype=torch.bfloat16)
    teacher = {k: v.float() for k, v in teacher.state_dict().items()}  # the student copied the bf16 teacher's blocks
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert student.config.num_hidden_layers == 2
    weights = student.state_dict()
    # student block 0 is teacher block 1: its key stays the teacher's (frozen), its query took the adapter
    assert torch.equal(weights["bert.encoder.layer.0.attention.self.key.weight"],
                       teacher["bert.encoder.layer.1.attention.self.key.weight"])
    assert not torch.equal(weights["bert.encoder.layer.0.attention.self.query.weight"],
                           teacher["bert.encoder.layer.1.attention.self.query.weight"])
    assert not torch.equal(weights["classifier.weight"], teacher["classifier.weight"])  # the head trained in full
    assert json.loads((tmp_path / "out" / "final" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_lora_target_the_classifier_lacks_is_a_config_error(workspace):
    tmp_path = workspace
    run = _cli("train", _write(tmp_path, _bert_config(tmp_path, {"target_modules": ["q_proj"]}), "bad.yaml"))
    assert run.returncode == 2, run.stderr[-2000:]
    assert "student.lora.target_modules" in run.stderr and "'q_proj'" in run.stderr and "query" in run.stderr
    assert not (tmp_path / "out" / "final").exists()
