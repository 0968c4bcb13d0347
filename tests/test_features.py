"""Features: hooks against Hugging Face's own outputs, output views per head, a custom adaptor, errors.

Every model is built from a tiny config (no downloads) and compared with what Hugging Face
itself returns for ``output_hidden_states`` / ``output_attentions`` / its own loss.
"""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import (BertConfig, BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                          BertForTokenClassification, DistilBertConfig, DistilBertForSequenceClassification,
                          GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM)

from distill_toolkit import DistillationConfig, Match, Trainer, TrainingConfig
from distill_toolkit.features import FeatureCapture, FeatureError, ensure_eager_attention, find_blocks, view_from_adaptor
from distill_toolkit.tasks import detect_task
from distill_toolkit.tasks import get as get_task


def view_outputs(outputs, batch, task):
    """How the loop reads a model's output: by the task of the registry."""
    return get_task(task).read_outputs(outputs, batch)

from helpers import VOCAB, ToyTask, collate, tiny_bert

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from bigru import BiGRUClassifier, bigru_adaptor  # noqa: E402

LAYERS = 3


def _inputs(labels=None):
    """Two rows of 7 tokens; the second is padded after 4."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    ids[1, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        batch["labels"] = labels
    return batch


def _bert_config(**kw):
    base = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, attn_implementation="eager")
    base.update(kw)
    return BertConfig(**base)


def _llama(**kw):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                                        max_position_embeddings=64, attn_implementation="eager", **kw)).eval()


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64,
                                      attn_implementation="eager")).eval()


def _distilbert():
    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=VOCAB, dim=32, n_layers=LAYERS, n_heads=4, hidden_dim=64, max_position_embeddings=64,
        attn_implementation="eager")).eval()


def _bert(cls=BertForSequenceClassification, **kw):
    torch.manual_seed(0)
    return cls(_bert_config(**kw)).eval()


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _captured(model, keys, batch):
    capture = FeatureCapture(model, keys)
    capture.active = True
    out = model(**batch, output_hidden_states=True, output_attentions=True)
    capture.active = False
    return capture, capture.collect(), out


# ---- 1. hooks give what Hugging Face gives --------------------------------------------------

def test_bert_hooks_equal_hf_hidden_states_and_attentions():
    model = _bert()
    keys = ["hidden:0", "hidden:2", "attention:1", "module:bert.encoder.layer.1.output"]
    capture, feats, out = _captured(model, keys, _inputs())
    assert list(feats) and set(feats) == set(keys)
    torch.testing.assert_close(feats["hidden:0"], out.hidden_states[0], rtol=0, atol=0)
    torch.testing.assert_close(feats["hidden:2"], out.hidden_states[2], rtol=0, atol=0)
    torch.testing.assert_close(feats["attention:1"], out.attentions[1], rtol=0, atol=0)
    assert feats["attention:1"].shape == (2, 4, 7, 7)
    # BertOutput of block 1 is the block's output, i.e. hidden_states[2]
    torch.testing.assert_close(feats["module:bert.encoder.layer.1.output"], out.hidden_states[2], rtol=0, atol=0)
    # padded keys get no attention probability in the padded row
    assert feats["attention:1"][1, :, :, 4:].abs().max() < 1e-6
    # the features are differentiable (a student's losses backpropagate through them)
    feats["hidden:2"].sum().backward()
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_only_the_requested_modules_are_hooked_and_remove_unhooks():
    model = _bert()
    assert _hook_count(model) == 0
    capture = FeatureCapture(model, ["hidden:0", "hidden:2", "attention:1", "hidden:2"])  # duplicate: one hook
    blocks = model.bert.encoder.layer
    assert _hook_count(model) == 3
    assert len(blocks[0]._forward_pre_hooks) == 1 and not blocks[0]._forward_hooks      # hidden:0 = input of block 0
    assert len(blocks[1]._forward_hooks) == 1 and not blocks[1]._forward_pre_hooks      # hidden:2 = output of block 1
    assert len(blocks[1].attention._forward_hooks) == 1                                  # attention:1
    assert _hook_count(blocks[2]) == 0 and _hook_count(model.bert.embeddings) == 0
    capture.active = True
    with torch.no_grad():
        model(**_inputs())
    assert set(capture.store) == {"hidden:0", "hidden:2", "attention:1"}
    capture.remove()
    assert _hook_count(model) == 0


def test_capture_records_nothing_while_inactive():
    model = _bert()
    keys = ["hidden:0", "hidden:1", "attention:0", "module:bert.pooler"]
    capture = FeatureCapture(model, keys)
    with torch.no_grad():
        model(**_inputs())
    assert capture.store == {}
    with pytest.raises(FeatureError, match=r"not produced by the forward pass"):
        capture.collect()
    capture.active = True
    with torch.no_grad():
        model(**_inputs())
    assert set(capture.collect()) == set(keys)
    assert capture.store == {}  # collect hands the features over


@pytest.mark.parametrize("build, blocks_name, last_is_normed", [
    (_llama, "model.layers", True),        # LlamaModel applies `norm` to the last hidden state
    (_gpt2, "transformer.h", True),        # GPT2Model applies `ln_f`
    (_distilbert, "distilbert.transformer.layer", False),
], ids=["llama", "gpt2", "distilbert"])
def test_other_architectures_hooks_equal_hf(build, blocks_name, last_is_normed):
    model = build()
    name, blocks = find_blocks(model)
    assert name == blocks_name and len(blocks) == LAYERS
    keys = [f"hidden:{i}" for i in range(LAYERS + 1)] + ["attention:1"]
    _, feats, out = _captured(model, keys, _inputs())
    assert len(out.hidden_states) == LAYERS + 1
    for i in range(LAYERS):
        torch.testing.assert_close(feats[f"hidden:{i}"], out.hidden_states[i], rtol=0, atol=0)
    torch.testing.assert_close(feats["attention:1"], out.attentions[1], rtol=0, atol=0)
    last = feats[f"hidden:{LAYERS}"]
    if last_is_normed:
        # the hook takes the block's own output; HF's last entry is that output after the final norm
        assert not torch.allclose(last, out.hidden_states[LAYERS])
        final_norm = model.model.norm if hasattr(model, "model") else model.transformer.ln_f
        torch.testing.assert_close(final_norm(last), out.hidden_states[LAYERS])
    else:
        torch.testing.assert_close(last, out.hidden_states[LAYERS], rtol=0, atol=0)


# ---- 2. output views per head ---------------------------------------------------------------

@pytest.mark.parametrize("build, task", [
    (lambda: _bert(), "sequence_classification"),
    (lambda: _bert(num_labels=3, problem_type="multi_label_classification"), "multilabel_classification"),
    (lambda: _bert(BertForTokenClassification, num_labels=5), "token_classification"),
    (lambda: _bert(BertForQuestionAnswering), "question_answering"),
    (lambda: _bert(BertForMaskedLM), "masked_lm"),
    (_llama, "causal_lm"),
    (_gpt2, "causal_lm"),  # GPT2LMHeadModel: no "CausalLM" in the class name
    (lambda: BiGRUClassifier(VOCAB), "auto"),
], ids=["seqcls", "multilabel", "token", "qa", "mlm", "llama", "gpt2", "bigru"])
def test_detect_task(build, task):
    assert detect_task(build()) == task


def test_view_sequence_classification():
    model = _bert()
    batch = _inputs(torch.tensor([0, 1]))
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    assert len(view.logits) == 1 and view.logits[0].shape == (2, 2)
    assert view.logits[0] is out.logits and view.logits_mask is None
    assert view.loss is out.loss and view.labels is batch["labels"] and view.inputs_mask is batch["attention_mask"]


def test_view_multilabel_classification():
    model = _bert(num_labels=3, problem_type="multi_label_classification")
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    batch = _inputs(labels)
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    assert view.logits[0].shape == (2, 3) and view.logits_mask is None
    # HF really trained it as multi-label (sigmoid per label)
    torch.testing.assert_close(view.loss, F.binary_cross_entropy_with_logits(view.logits[0], labels))


def test_view_token_classification():
    model = _bert(BertForTokenClassification, num_labels=5)
    labels = torch.tensor([[-100, 1, 2, 3, 4, 0, -100], [-100, 2, 2, -100, -100, -100, -100]])
    batch = _inputs(labels)
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    expected = labels != -100
    assert torch.equal(view.logits_mask, expected)
    torch.testing.assert_close(view.logits[0], out.logits, rtol=0, atol=0)
    # the mask selects exactly the positions HF's own loss counts
    torch.testing.assert_close(F.cross_entropy(view.logits[0][view.logits_mask], labels[view.logits_mask]), out.loss)
    # without labels: the non-padding positions
    unlabelled = _inputs()
    view = view_outputs(model(**unlabelled), unlabelled, "token_classification")
    assert torch.equal(view.logits_mask, unlabelled["attention_mask"].bool())
    assert view.loss is None and view.labels is None


def test_view_question_answering_masks_padding():
    model = _bert(BertForQuestionAnswering)
    batch = {**_inputs(), "start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([3, 3])}
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    assert len(view.logits) == 2 and view.logits_mask is None
    keep = batch["attention_mask"].bool()
    for got, raw in zip(view.logits, (out.start_logits, out.end_logits)):
        torch.testing.assert_close(got[keep], raw[keep], rtol=0, atol=0)
        assert torch.all(got[~keep] == -1e4)
        assert got.softmax(-1)[~keep].max() < 1e-6  # padded positions get no probability
    assert view.loss is out.loss


def test_view_masked_lm():
    model = _bert(BertForMaskedLM)
    batch = _inputs()
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 2], labels[0, 5], labels[1, 1] = 11, 12, 13
    batch["labels"] = labels
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    assert torch.equal(view.logits_mask, labels != -100) and int(view.logits_mask.sum()) == 3
    torch.testing.assert_close(F.cross_entropy(view.logits[0][view.logits_mask], labels[view.logits_mask]), out.loss)


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2"])
def test_view_causal_lm_shifts_by_one(build):
    model = build()
    batch = _inputs()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    labels[0, 3] = -100  # a prompt token: not trained on
    batch["labels"] = labels
    out = model(**batch)
    view = view_outputs(out, batch, detect_task(model))
    torch.testing.assert_close(view.logits[0], out.logits[:, :-1], rtol=0, atol=0)
    # position t predicts token t + 1: kept where token t + 1 is a real, trained-on token
    expected = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(view.logits_mask, expected)
    # and the kept positions are exactly those of HF's own (internally shifted) loss
    targets = labels[:, 1:][view.logits_mask]
    torch.testing.assert_close(F.cross_entropy(view.logits[0][view.logits_mask], targets), out.loss)
    # without labels the shifted attention mask decides (padding after a real token is not predicted)
    unlabelled = _inputs()
    view = view_outputs(model(**unlabelled), unlabelled, "causal_lm")
    assert torch.equal(view.logits_mask, unlabelled["attention_mask"][:, 1:].bool())
    assert view.logits[0].shape[1] == 6


def test_view_from_adaptor_keys():
    logits, h0, h1 = torch.randn(2, 3), torch.randn(2, 7, 4), torch.randn(2, 7, 4)
    mask = torch.ones(2, 7, dtype=torch.long)
    view = view_from_adaptor({"logits": logits, "losses": [torch.tensor(1.0), torch.tensor([2.0, 4.0])],
                              "hidden": [h0, h1], "inputs_mask": mask}, None)
    assert view.logits[0] is logits and view.inputs_mask is mask
    assert view.features["hidden:0"] is h0 and view.features["hidden:1"] is h1
    torch.testing.assert_close(view.loss, torch.tensor(4.0))  # 1 + mean(2, 4)
    with pytest.raises(FeatureError, match="must return a dict"):
        view_from_adaptor([logits], None)


# ---- 3. a non-transformer student through an adaptor ----------------------------------------

def test_bigru_model_ignores_padding():
    model = BiGRUClassifier(VOCAB, embed_dim=16, hidden_size=16).eval()
    batch = _inputs()
    out = model(**batch)
    assert out["logits"].shape == (2, 2) and out["hidden_states"].shape == (2, 7, 32) and out["loss"] is None
    assert torch.all(out["hidden_states"][1, 4:] == 0)
    # the padded row gives the same result as the same tokens unpadded
    alone = model(input_ids=batch["input_ids"][1:, :4], attention_mask=batch["attention_mask"][1:, :4])
    torch.testing.assert_close(alone["logits"][0], out["logits"][1])
    torch.testing.assert_close(alone["hidden_states"][0], out["hidden_states"][1, :4])


def test_bigru_student_distils_from_bert_through_adaptor(tmp_path):
    torch.manual_seed(3)
    student = BiGRUClassifier(VOCAB, embed_dim=16, hidden_size=12)  # GRU outputs are 24 wide
    teacher = tiny_bert(2, 48, seed=1)
    # a confident teacher whose predictions are the labels, so KD and hard labels pull the same way
    with torch.no_grad():
        teacher.classifier.weight.mul_(300)
    data = ToyTask(16)
    with torch.no_grad():
        predicted = teacher.eval()(**collate(data.items)).logits.argmax(-1)
    assert 0 < int(predicted.sum()) < 16
    for item, label in zip(data.items, predicted.tolist()):
        item["labels"] = label
    before = {k: v.clone() for k, v in student.state_dict().items()}
    training = TrainingConfig(output_dir=str(tmp_path / "run"), max_steps=12, batch_size=16, learning_rate=1e-2,
                              trackers=[], progress_bar=False, eval_every_epochs=None, seed=0)
    distillation = DistillationConfig(
        temperature=2.0, hard_label_weight=0.5,
        matches=[Match(teacher_layer=2, student_layer=0, projection="linear", loss="hidden_mse")])
    # one batch of 16 per epoch: every step sees the same examples, so the loss must go down
    trainer = Trainer(student, training, distillation, data, teacher=teacher, collate_fn=collate,
                      eval_data=ToyTask(16, seed=4), student_adaptor=bigru_adaptor)
    result = trainer.train()
    assert result["global_step"] == 12
    history = result["history"]
    assert {"train/loss", "train/kd", "train/hard_label", "train/hidden_mse/S0-T2"} <= set(history[-1])
    for term in ("train/loss", "train/kd", "train/hard_label", "train/hidden_mse/S0-T2"):
        assert history[-1][term] < history[0][term], (term, history[0][term], history[-1][term])
    assert 0.0 <= result["eval"]["accuracy"] <= 1.0
    # the projection 24 -> 48 was built from the real widths
    projection = trainer.accelerator.unwrap_model(trainer.module).strategy.projections[0]
    assert isinstance(projection, nn.Linear) and tuple(projection.weight.shape) == (48, 24)
    # export: plain safetensors of the student alone, loadable into a fresh BiGRUClassifier
    exported = load_file(str(tmp_path / "run" / "final" / "model.safetensors"))
    assert set(exported) == set(before)
    assert any(not torch.equal(exported[k], before[k]) for k in exported)
    fresh = BiGRUClassifier(VOCAB, embed_dim=16, hidden_size=12)
    fresh.load_state_dict(exported)
    batch = collate([ToyTask(4)[i] for i in range(4)])
    student.eval()
    torch.testing.assert_close(fresh.eval()(**batch)["logits"], student(**batch)["logits"])


# ---- 4. errors ------------------------------------------------------------------------------

def test_sdpa_model_is_switched_to_eager_for_attention():
    torch.manual_seed(0)
    sdpa = BertForSequenceClassification(_bert_config(attn_implementation="sdpa")).eval()
    assert sdpa.config._attn_implementation == "sdpa"
    eager = _bert()
    eager.load_state_dict(sdpa.state_dict())
    reference = eager(**_inputs(), output_attentions=True).attentions[1]
    capture = FeatureCapture(sdpa, ["attention:1"])
    assert sdpa.config._attn_implementation == "eager"
    capture.active = True
    sdpa(**_inputs())
    torch.testing.assert_close(capture.collect()["attention:1"], reference, rtol=0, atol=0)


def test_attention_without_a_way_to_switch_says_how_to_load():
    class Config:
        _attn_implementation = "sdpa"

    model = nn.Linear(2, 2)
    model.config = Config()
    with pytest.raises(FeatureError, match=r"attn_implementation='eager'"):
        ensure_eager_attention(model)


class _NoWeightsBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = nn.Linear(4, 4)  # "attention" that returns no weights

    def forward(self, x):
        return x + self.self_attn(x)


class _TinyStack(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(_NoWeightsBlock() for _ in range(2))

    def forward(self, x):
        for block in self.layers:
            x = block(x)
        return x


def test_custom_stack_hidden_works_and_attention_without_weights_raises():
    model = _TinyStack()
    x = torch.randn(2, 3, 4)
    capture = FeatureCapture(model, ["hidden:0", "hidden:2"])
    capture.active = True
    y = model(x)
    feats = capture.collect()
    torch.testing.assert_close(feats["hidden:0"], x, rtol=0, atol=0)
    torch.testing.assert_close(feats["hidden:2"], y, rtol=0, atol=0)
    capture = FeatureCapture(model, ["attention:1"])
    capture.active = True
    with pytest.raises(FeatureError, match=r"attention:1.*no attention weights.*eager"):
        model(x)


def test_find_blocks_without_a_block_list():
    model = BiGRUClassifier(VOCAB)
    with pytest.raises(FeatureError, match=r"cannot find a list of transformer blocks in BiGRUClassifier.*module"):
        find_blocks(model)
    with pytest.raises(FeatureError, match=r"cannot find a list of transformer blocks"):
        FeatureCapture(model, ["hidden:1"])
    # module features need no block list
    capture = FeatureCapture(model, ["module:gru"])
    capture.active = True
    out = model(**_inputs())
    assert capture.collect()["module:gru"] is not None and out["logits"].shape == (2, 2)


@pytest.mark.parametrize("key, message", [
    ("heads:1", r"unknown feature kind 'heads'.*hidden.*attention.*module"),
    ("hidden", r"'hidden'.*integer >= 0"),
    ("hidden:x", r"'hidden:x'.*integer >= 0"),
    ("hidden:-1", r"'hidden:-1'.*integer >= 0"),
    ("hidden:4", r"hidden layer 4 is out of range.*0\.\.3"),
    ("attention:3", r"attention layer 3 is out of range.*0\.\.2"),
    ("module:bert.encoder.layer.9.output", r"module 'bert.encoder.layer.9.output' not found.*similar names"),
    ("module:", r"module '' not found"),
])
def test_bad_feature_keys(key, message):
    with pytest.raises(FeatureError, match=message):
        FeatureCapture(_bert(), [key])


def test_unknown_kind_is_reported_before_looking_for_blocks():
    with pytest.raises(FeatureError, match=r"unknown feature kind 'heads'"):
        FeatureCapture(BiGRUClassifier(VOCAB), ["heads:0"])
