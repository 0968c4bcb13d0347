"""LoRA students (peft), gradient checkpointing and a bf16 teacher, through the Python API on tiny models.

The merged export is compared with the trained peft model itself (logits), a LoRA run killed by an
exception and resumed with the one never interrupted, and gradient checkpointing with the plain
backward (loss and every gradient)."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from helpers import ToyTask, collate, final_weights, tiny_bert, toy_distillation, toy_training
from lm_helpers import VOCAB, tiny_llama

from distill_toolkit import Callback, DistillationConfig, Trainer
from distill_toolkit.activation_checkpointing import enable_gradient_checkpointing
from distill_toolkit.config import ConfigError, ExperimentConfig, LoraSpec, ModelSpec
from distill_toolkit.engine.export import export_checkpoint
from distill_toolkit.engine.module import DistillationModule
from distill_toolkit.engine.optim import build_optimizer
from distill_toolkit.lora import apply_lora, is_lora
from distill_toolkit.strategies import build_strategy

peft = pytest.importorskip("peft")

BERT_LORA = LoraSpec(r=4, alpha=8, target_modules=["query", "value"])


def lora_bert(seed=2):
    torch.manual_seed(seed)
    return apply_lora(tiny_bert(2, 32, seed=seed), BERT_LORA, "sequence_classification")


# ---- config ---------------------------------------------------------------------------------

@pytest.mark.parametrize("section, field", [({"r": 0}, "r"), ({"alpha": -1}, "alpha"), ({"dropout": 1.0}, "dropout"),
                                            ({"target_modules": "q_proj"}, "target_modules"),
                                            ({"target_modules": []}, "target_modules"),
                                            ({"modules_to_save": "score"}, "modules_to_save"),
                                            ({"bias": "some"}, "bias"), ({"rank": 8}, "rank")])
def test_bad_lora_sections_name_their_field(section, field):
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({"path": "x", "lora": section}, "student.").validate("student")
    assert err.value.field == f"student.lora.{field}"


def test_a_lora_section_is_read_and_a_teacher_one_refused():
    spec = ModelSpec.from_dict({"path": "x", "lora": {"r": 4, "target_modules": ["q_proj"]}}, "student.")
    spec.validate("student")
    assert spec.lora == LoraSpec(r=4, target_modules=["q_proj"]) and spec.to_dict()["lora"]["r"] == 4
    assert ModelSpec.from_dict({"path": "x", "lora": {}}).lora == LoraSpec()
    config = ExperimentConfig.from_dict({"teacher": {"path": "t", "lora": {}}, "student": {"path": "s"}})
    with pytest.raises(ConfigError, match="teacher.lora: a teacher is frozen"):
        config.validate()


# ---- placing the adapters ---------------------------------------------------------------------

def test_modules_the_model_lacks_are_a_config_error_listing_real_ones():
    with pytest.raises(ConfigError) as err:
        apply_lora(tiny_llama(), LoraSpec(target_modules=["q_proj", "qkv"]), "causal_lm")
    assert err.value.field == "student.lora.target_modules"
    assert "'qkv'" in str(err.value) and "'q_proj'" not in str(err.value) and "v_proj" in str(err.value)
    with pytest.raises(ConfigError, match=r"student.lora.modules_to_save: .* no module named 'head'.*classifier"):
        apply_lora(tiny_bert(2, 32), LoraSpec(target_modules=["query"], modules_to_save=["head"]),
                   "sequence_classification")


def test_only_adapters_and_the_head_train_and_the_optimizer_holds_only_them():
    student = lora_bert()
    trained = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or ".classifier.modules_to_save." in n for n in trained)
    assert any(".classifier.modules_to_save." in n for n in trained)  # the new head trains in full (peft SEQ_CLS)
    assert {n.split(".")[-4] for n in trained if "lora_" in n} == {"query", "value"}
    module = DistillationModule(student, build_strategy(DistillationConfig(strategy="supervised")),
                                "sequence_classification")
    optimizer = build_optimizer(module, toy_training("unused"))
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for n, p in student.named_parameters() if n in trained}
    causal = apply_lora(tiny_llama(), LoraSpec(r=2), "causal_lm")  # peft's default targets for Llama
    assert {n.split(".")[-4] for n, p in causal.named_parameters() if p.requires_grad} == {"q_proj", "v_proj"}


# ---- training, export, resume ---------------------------------------------------------------

def _distil(out, student, **training):
    return Trainer(student, toy_training(out, learning_rate=1e-2, **training), toy_distillation(matches=[]),
                   ToyTask(48), teacher=tiny_bert(4, 48, seed=1), collate_fn=collate)


def _logits(model, n=6):
    batch = collate([ToyTask(n, seed=4)[i] for i in range(n)])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_merged_export_gives_the_peft_students_logits(tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = tiny_bert(2, 32, seed=2)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    student = apply_lora(copy.deepcopy(base), BERT_LORA, "sequence_classification")
    _distil(tmp_path / "run", student, save_every_steps=6).train()
    final = tmp_path / "run" / "final"
    merged = AutoModelForSequenceClassification.from_pretrained(final)
    assert not is_lora(merged) and not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged), _logits(student), rtol=1e-5, atol=1e-5)
    weights = final_weights(tmp_path / "run")
    layer = "bert.encoder.layer.0.attention.self"
    assert torch.equal(weights[f"{layer}.key.weight"], before[f"{layer}.key.weight"])  # frozen: not a target
    assert not torch.equal(weights[f"{layer}.query.weight"], before[f"{layer}.query.weight"])  # adapter merged in
    assert not torch.equal(weights["classifier.weight"], before["classifier.weight"])  # the head trained
    # the adapter alone, on the untouched base, is the same model
    adapter = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(final / "adapter"))
    torch.testing.assert_close(_logits(adapter), _logits(student), rtol=1e-5, atol=1e-5)
    # `distill-toolkit export` of the checkpoint writes the same merged model
    summary = export_checkpoint(tmp_path / "run" / "checkpoints" / "step_6", tmp_path / "exported")
    assert summary["loadable_by_transformers"] and "adapter" in summary["files"]
    exported = load_file(str(tmp_path / "exported" / "model.safetensors"))
    assert exported.keys() == weights.keys()
    for key in weights:
        torch.testing.assert_close(exported[key], weights[key], rtol=0, atol=0)


def test_save_adapter_false_writes_the_merged_model_only(tmp_path):
    student = apply_lora(tiny_bert(2, 32, seed=2), LoraSpec(r=2, target_modules=["query"], save_adapter=False),
                         "sequence_classification")
    _distil(tmp_path / "run", student, max_steps=2).train()
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert not (tmp_path / "run" / "final" / "adapter").exists()


class Crash(Callback):
    def on_step_end(self, trainer, step, logs):
        if step == 5:
            raise RuntimeError("simulated crash")


def test_a_lora_run_resumed_ends_as_the_uninterrupted_one(tmp_path):
    _distil(tmp_path / "whole", lora_bert(), save_every_steps=2).train()
    crashed = _distil(tmp_path / "crashed", lora_bert(), save_every_steps=2)
    crashed.callbacks.append(Crash())
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.train()
    assert not (tmp_path / "crashed" / "final").exists()
    resumed = _distil(tmp_path / "crashed", lora_bert(), save_every_steps=2, resume_from="latest").train()
    assert resumed["global_step"] == 6
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "crashed")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6)


# ---- gradient checkpointing -------------------------------------------------------------------

def _loss_and_grads(model):
    ids = torch.randint(4, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(lora):
    def build():
        model = tiny_llama(2, 32, seed=3)
        model.config.attention_dropout = 0.1  # dropout replayed in the recomputation
        return apply_lora(model, LoraSpec(r=4, target_modules=["q_proj", "v_proj"], dropout=0.1), "causal_lm") \
            if lora else model

    torch.manual_seed(7)
    plain, checkpointed = build(), build()
    enable_gradient_checkpointing(checkpointed)
    inner = checkpointed.get_base_model() if lora else checkpointed
    assert inner.model.gradient_checkpointing and not (plain.get_base_model() if lora else plain).model \
        .gradient_checkpointing
    torch.manual_seed(11)
    loss_a, grads_a = _loss_and_grads(plain)
    torch.manual_seed(11)
    loss_b, grads_b = _loss_and_grads(checkpointed)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-6, atol=1e-6)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    if lora:
        assert all("lora_" in n for n in grads_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_of_a_module_without_it_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="training.gradient_checkpointing: the student .Linear. does not support"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


# ---- a bf16 teacher --------------------------------------------------------------------------

def _lm_collate(rows):
    ids = torch.tensor(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _first_losses(tmp_path, teacher_dtype, **training):
    rows = torch.randint(4, VOCAB, (8, 12), generator=torch.Generator().manual_seed(0)).tolist()
    teacher = tiny_llama(4, 48, seed=1).to(teacher_dtype)
    cfg = toy_training(tmp_path / str(teacher_dtype), max_steps=2, batch_size=4, learning_rate=1e-3, **training)
    result = Trainer(tiny_llama(2, 32, seed=2), cfg, DistillationConfig(strategy="causal_lm", kd_loss="forward_kl",
                                                                        hard_label_weight=0.0),
                     rows, teacher=teacher, collate_fn=_lm_collate).train()
    return [row["train/kd"] for row in result["history"]]


def test_a_bf16_causal_lm_teacher_gives_the_fp32_teachers_loss_to_bf16_precision(tmp_path):
    fp32, bf16 = _first_losses(tmp_path, torch.float32), _first_losses(tmp_path, torch.bfloat16)
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 == pytest.approx(fp32, rel=5e-3)  # measured: 3e-4 and 1e-3
    assert bf16 != fp32  # the teacher really ran in bf16
