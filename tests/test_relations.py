"""MiniLM / MiniLMv2 relation losses: query/key/value capture by hooks, the losses against explicit
formulas on small tensors, their config checks, and a relation match from YAML through the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast, LlamaConfig,
                          LlamaModel)

from distill_toolkit import losses
from distill_toolkit.cli import main
from distill_toolkit.config import ConfigError, DistillationConfig, Match
from distill_toolkit.features import FeatureCapture, FeatureError, ModelView, head_count
from distill_toolkit.strategies import check_distillation
from distill_toolkit.strategies.base import StrategyError
from distill_toolkit.strategies.objective import KDObjective

WORDS = ["good", "great", "fun", "bad", "awful", "dull", "okay", "fine", "so", "movie", "plot", "the", "a"]


# ---- explicit formulas ------------------------------------------------------------------------

def _softmax(row):
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _relation_rows(states, heads, keep):
    """``states``: list over positions of lists (width); per relation head, per kept query, the softmax over
    kept keys of ``a_i . a_j / sqrt(d_r)``."""
    width = len(states[0])
    d = width // heads
    out = []
    for r in range(heads):
        part = [s[r * d:(r + 1) * d] for s in states]
        rows = []
        for i in keep:
            rows.append(_softmax([sum(a * b for a, b in zip(part[i], part[j])) / math.sqrt(d) for j in keep]))
        out.append(rows)
    return out


def _expected_relation(S, T, heads, keep):
    rel_S, rel_T = _relation_rows(S, heads, keep), _relation_rows(T, heads, keep)
    values = [_kl(t, s) for hs, ht in zip(rel_S, rel_T) for s, t in zip(hs, ht)]
    return sum(values) / len(values)


def _per_head(flat: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H) -> (B, heads, L, H / heads), the layout the hooks produce."""
    b, length, width = flat.shape
    return flat.view(b, length, heads, width // heads).transpose(1, 2)


def test_minilmv2_relation_equals_the_formula_across_widths_and_head_counts():
    g = torch.Generator().manual_seed(0)
    flat_S = torch.randn(1, 3, 4, generator=g)  # student: 2 heads of 2
    flat_T = torch.randn(1, 3, 6, generator=g)  # teacher: 3 heads of 2
    for relation_heads in (1, 2):
        expected = _expected_relation(flat_S[0].tolist(), flat_T[0].tolist(), relation_heads, [0, 1, 2])
        got = losses.get("minilmv2_relation")(_per_head(flat_S, 2), _per_head(flat_T, 3),
                                               relation_heads=relation_heads)
        assert got.item() == pytest.approx(expected, rel=1e-5)


def test_minilmv2_relation_with_a_mask_ignores_padded_keys_and_queries():
    g = torch.Generator().manual_seed(1)
    flat_S, flat_T = torch.randn(2, 4, 4, generator=g), torch.randn(2, 4, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = losses.minilmv2_relation(_per_head(flat_S, 2), _per_head(flat_T, 4), mask=mask, relation_heads=2)
    # the mean over (head, kept query) pairs of both examples: 2 heads x (4 + 2) queries
    rows = []
    for b, keep in ((0, [0, 1, 2, 3]), (1, [0, 1])):
        rel_S = _relation_rows(flat_S[b].tolist(), 2, keep)
        rel_T = _relation_rows(flat_T[b].tolist(), 2, keep)
        rows += [_kl(t, s) for hs, ht in zip(rel_S, rel_T) for s, t in zip(hs, ht)]
    assert got.item() == pytest.approx(sum(rows) / len(rows), rel=1e-5)
    # padding content does not matter
    noisy_S = flat_S.clone()
    noisy_S[1, 2:] = 100.0
    again = losses.minilmv2_relation(_per_head(noisy_S, 2), _per_head(flat_T, 4), mask=mask, relation_heads=2)
    assert again.item() == pytest.approx(got.item(), rel=1e-6)


def test_minilmv2_relation_defaults_and_errors():
    g = torch.Generator().manual_seed(2)
    S, T = torch.randn(1, 2, 3, 3, generator=g), torch.randn(1, 4, 3, 2, generator=g)  # widths 6 and 8
    with pytest.raises(ValueError, match=r"relation_heads: N\}` with N dividing both, e.g. 2"):
        losses.minilmv2_relation(S, T)  # default: the teacher's 4 heads, which do not divide 6
    assert losses.minilmv2_relation(S, T, relation_heads=2).item() >= 0
    with pytest.raises(ValueError, match="integer >= 1"):
        losses.minilmv2_relation(S, T, relation_heads=0)
    with pytest.raises(ValueError, match="share batch and length"):
        losses.minilmv2_relation(S, T[:, :, :2])
    same = torch.randn(2, 2, 5, 4, generator=g)
    assert losses.minilmv2_relation(same, same).item() == pytest.approx(0.0, abs=1e-6)


def test_minilm_value_relation_is_minilmv2_on_values_with_one_relation_head_per_attention_head():
    g = torch.Generator().manual_seed(3)
    v_S, v_T = torch.randn(2, 3, 5, 4, generator=g), torch.randn(2, 3, 5, 6, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # per attention head h: KL over keys of softmax(v v^T / sqrt(d_h)); the two agree when R = heads and the
    # heads are the relation heads (d_r = d_h)
    assert losses.minilm_value_relation(v_S, v_T, mask).item() == pytest.approx(
        losses.minilmv2_relation(v_S, v_T, mask, relation_heads=3).item(), rel=1e-5)
    assert "minilm_value_relation" in losses.available_losses("feature")


def test_minilm_attention_equals_the_formula_and_needs_equal_head_counts():
    A_T = torch.tensor([[[[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]]]])
    A_S = torch.tensor([[[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]]]])
    expected = sum(_kl(t, s) for t, s in zip(A_T[0, 0].tolist(), A_S[0, 0].tolist())) / 3
    assert losses.get("minilm_attention")(A_S, A_T).item() == pytest.approx(expected, rel=1e-5)
    mask = torch.tensor([[1, 1, 0]])
    padded_T = torch.tensor([[[[0.75, 0.25, 0.0], [0.5, 0.5, 0.0], [0.2, 0.8, 0.0]]]])
    padded_S = torch.tensor([[[[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.9, 0.1, 0.0]]]])
    rows = [_kl(t, s) for t, s in zip(padded_T[0, 0, :2].tolist(), padded_S[0, 0, :2].tolist())]
    assert losses.minilm_attention(padded_S, padded_T, mask).item() == pytest.approx(sum(rows) / 2, rel=1e-5)
    with pytest.raises(ValueError, match=r"student 2 heads, teacher 4\).*num_attention_heads.*minilmv2_relation"):
        losses.minilm_attention(torch.rand(1, 2, 3, 3), torch.rand(1, 4, 3, 3))


# ---- capture by hooks ----------------------------------------------------------------------------

def _tiny_bert(**config) -> BertModel:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=32, max_position_embeddings=16, **config)).eval()


def test_bert_queries_keys_values_are_the_projections_split_into_heads():
    model = _tiny_bert()
    ids, mask = torch.randint(0, 20, (2, 5)), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    capture = FeatureCapture(model, ["query:1", "key:0", "value:1"])
    capture.active = True
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    feats = capture.collect()
    block = model.encoder.layer
    for key, module, hidden in (("query:1", block[1].attention.self.query, out.hidden_states[1]),
                                ("key:0", block[0].attention.self.key, out.hidden_states[0]),
                                ("value:1", block[1].attention.self.value, out.hidden_states[1])):
        assert feats[key].shape == (2, 4, 5, 4)
        torch.testing.assert_close(feats[key], _per_head(module(hidden), 4))


def test_llama_keys_and_values_have_the_key_value_head_count():
    torch.manual_seed(0)
    model = LlamaModel(LlamaConfig(vocab_size=20, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=32)).eval()
    assert (head_count(model, "query"), head_count(model, "key"), head_count(model, "value")) == (4, 2, 2)
    capture = FeatureCapture(model, ["query:0", "key:1", "value:1"])
    capture.active = True
    ids = torch.randint(0, 20, (1, 6))
    out = model(input_ids=ids, output_hidden_states=True)
    feats = capture.collect()
    assert feats["query:0"].shape == (1, 4, 6, 4) and feats["key:1"].shape == (1, 2, 6, 4)
    attn = model.layers[1].self_attn
    torch.testing.assert_close(feats["value:1"], _per_head(attn.v_proj(model.layers[1].input_layernorm(
        out.hidden_states[1])), 2))


def test_unknown_projection_and_out_of_range_layers_are_named():
    model = _tiny_bert()
    with pytest.raises(FeatureError, match="query layer 2 is out of range"):
        FeatureCapture(model, ["query:2"])
    with pytest.raises(FeatureError, match="layer index must be an integer"):
        FeatureCapture(model, ["value:x"])
    from transformers import GPT2Config, GPT2Model
    gpt2 = GPT2Model(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=20, n_positions=8))
    with pytest.raises(FeatureError, match="c_attn are not split.*feature 'module'"):
        FeatureCapture(gpt2, ["key:0"])


# ---- config and objective ------------------------------------------------------------------------

def _relation(feature="query", **extra):
    return {"feature": feature, "teacher_layer": 1, "student_layer": 0, "loss": "minilmv2_relation", **extra}


def test_match_loss_kwargs_and_relation_checks():
    Match.from_dict(_relation(loss_kwargs={"relation_heads": 4})).validate()
    assert Match.from_dict(_relation("key")).name() == "minilmv2_relation.key/S0-T1"
    cases = [(_relation(loss_kwargs=[4]), "loss_kwargs"),
             (_relation(projection="linear"), "never projected"),
             (_relation("attention"), "not attention maps"),
             ({"feature": "value", "teacher_layer": 1, "student_layer": 0, "loss": "minilm_attention"},
              "feature: attention"),
             (_relation(teacher_layer=None), "teacher_layer")]
    for data, message in cases:
        with pytest.raises(ConfigError, match=message):
            Match.from_dict(data).validate("m")
    config = DistillationConfig(matches=[_relation(loss_kwargs={"relation_head": 4})])
    config.validate()
    with pytest.raises(ConfigError, match=r"matches\[0\].loss_kwargs: loss 'minilmv2_relation' does not take"):
        check_distillation(config)


def _views(S, T, key="query:1", mask=None):
    return (ModelView(features={key: S}, inputs_mask=mask), {"teacher": ModelView(features={key: T})})


def test_objective_passes_loss_kwargs_and_checks_the_loss_at_setup():
    g = torch.Generator().manual_seed(4)
    S, T = torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 4, 5, 4, generator=g)
    match = {**_relation(teacher_layer=1, student_layer=1), "loss_kwargs": {"relation_heads": 2}}
    objective = KDObjective(DistillationConfig(kd_loss_weight=0, matches=[match]))
    objective.setup(*_views(S, T))
    (_, _, value), = objective.match_terms(*_views(S, T))
    assert value.item() == pytest.approx(losses.minilmv2_relation(S, T, relation_heads=2).item())
    bad = KDObjective(DistillationConfig(kd_loss_weight=0, matches=[_relation(student_layer=1)]))
    with pytest.raises(StrategyError, match=r"matches\[0\] \(minilmv2_relation on query\).*relation_heads"):
        bad.setup(*_views(torch.randn(2, 2, 5, 3), T))  # widths 6 and 16: the teacher's 4 heads do not divide 6
    attention = {"feature": "attention", "teacher_layer": 1, "student_layer": 1, "loss": "minilm_attention"}
    heads = KDObjective(DistillationConfig(kd_loss_weight=0, matches=[attention]))
    with pytest.raises(StrategyError, match="num_attention_heads"):
        heads.setup(*_views(torch.rand(2, 2, 5, 5), torch.rand(2, 4, 5, 5), key="attention:1"))


# ---- from YAML ----------------------------------------------------------------------------------

def _workspace(tmp_path: Path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64, max_position_embeddings=32,
                                             num_labels=2)).save_pretrained(folder)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 32), ("dev", 8)):
        rows = []
        for _ in range(n):
            label = int(torch.randint(0, 2, (1,), generator=g))
            pool = WORDS[:3] if label else WORDS[3:6]
            rows.append({"text": " ".join(pool[int(i)] for i in torch.randint(0, 3, (3,), generator=g)) + " movie",
                         "label": label})
        (tmp_path / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def _yaml(tmp_path: Path, name: str, **sections) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(sections))
    return path


def test_relation_matches_from_yaml_on_a_narrower_student_with_fewer_heads(tmp_path, capsys):
    teacher = _workspace(tmp_path)
    matches = [_relation(f, teacher_layer=1, student_layer=0, loss_kwargs={"relation_heads": 4})
               for f in ("query", "key", "value")]
    matches.append({"feature": "value", "teacher_layer": 1, "student_layer": 0, "loss": "minilmv2_relation"})
    config = _yaml(tmp_path, "run.yaml", teacher={"path": str(teacher)},
                   student={"path": str(teacher), "init_from": "random",
                            "config": {"hidden_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1,
                                       "intermediate_size": 32}},
                   data={"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                         "dev_file": str(tmp_path / "dev.jsonl"), "max_length": 12},
                   training={"output_dir": str(tmp_path / "out"), "max_steps": 3, "batch_size": 8,
                             "learning_rate": 1e-3, "trackers": [], "progress_bar": False},
                   distillation={"temperature": 2, "matches": matches})
    code = main(["train", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["global_step"] == 3
    student = BertForSequenceClassification.from_pretrained(tmp_path / "out" / "final")
    assert student.config.hidden_size == 16 and student.config.num_attention_heads == 2


def test_relation_features_through_the_teacher_cache(tmp_path, capsys):
    teacher = _workspace(tmp_path)
    sections = dict(teacher={"path": str(teacher)}, student={"init_from": "teacher", "layers": [1]},
                    data={"name": "files", "train_file": str(tmp_path / "train.jsonl"),
                          "dev_file": str(tmp_path / "dev.jsonl"), "max_length": 12},
                    training={"output_dir": str(tmp_path / "out"), "max_steps": 2, "batch_size": 8,
                              "learning_rate": 1e-3, "trackers": [], "progress_bar": False,
                              "teacher_cache": str(tmp_path / "cache")},
                    distillation={"temperature": 2, "matches": [
                        _relation("key", loss_kwargs={"relation_heads": 2}),
                        {"feature": "attention", "teacher_layer": 1, "student_layer": 0, "loss": "minilm_attention"}]})
    config = _yaml(tmp_path, "run.yaml", **sections)
    code = main(["cache-teacher", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["examples"] == 32
    code = main(["train", str(config)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out[out.index("{"):])["global_step"] == 2
