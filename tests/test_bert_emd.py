"""BERT-EMD (examples/bert_emd.py), a custom strategy on the public API: EMD finds the right mapping."""

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scipy  # noqa: E402,F401  (the test extra; examples/bert_emd.py solves the transport with it)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import bert_emd  # noqa: E402  (registers "bert_emd")
from distill_toolkit import DistillationConfig, Trainer, TrainingConfig  # noqa: E402
from distill_toolkit.losses import get as get_loss  # noqa: E402
from distill_toolkit.strategies import StrategyError, available_strategies  # noqa: E402

from helpers import ToyTask, collate, tiny_bert  # noqa: E402


def test_emd_recovers_the_layer_mapping_on_a_constructed_case():
    """Teacher layers 1=2 and 3=4; student layer 1 copies the first pair, layer 2 the second."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    teacher = [a, a.clone(), b, b.clone()]
    student = [a.clone(), b.clone()]
    d = bert_emd.layer_distances(student, teacher, get_loss("hidden_mse"))
    flow = bert_emd.emd_flow(np.full(2, 0.5), np.full(4, 0.25), d.numpy().astype(np.float64))
    np.testing.assert_allclose(flow, [[0.25, 0.25, 0, 0], [0, 0, 0.25, 0.25]], atol=1e-9)
    assert (flow * d.numpy()).sum() == pytest.approx(0.0, abs=1e-9)
    # swap the student's layers: the flow follows them
    d = bert_emd.layer_distances(student[::-1], teacher, get_loss("hidden_mse"))
    flow = bert_emd.emd_flow(np.full(2, 0.5), np.full(4, 0.25), d.numpy().astype(np.float64))
    np.testing.assert_allclose(flow, [[0, 0, 0.25, 0.25], [0.25, 0.25, 0, 0]], atol=1e-9)


def test_emd_with_uniform_weights_is_the_best_assignment():
    cost = np.random.default_rng(1).random((4, 4))
    flow = bert_emd.emd_flow(np.ones(4), np.ones(4), cost)
    best = min(itertools.permutations(range(4)), key=lambda p: sum(cost[i, p[i]] for i in range(4)))
    expected = np.zeros((4, 4))
    expected[range(4), best] = 0.25
    np.testing.assert_allclose(flow, expected, atol=1e-9)


def test_emd_flow_keeps_unequal_marginals():
    rng = np.random.default_rng(2)
    w_S, w_T, cost = rng.random(3), rng.random(6), rng.random((3, 6))
    flow = bert_emd.emd_flow(w_S, w_T, cost)
    np.testing.assert_allclose(flow.sum(1), w_S / w_S.sum(), atol=1e-9)
    np.testing.assert_allclose(flow.sum(0), w_T / w_T.sum(), atol=1e-9)
    assert (flow >= 0).all()


def test_cost_attention_gives_cheap_layers_more_weight():
    flow = np.array([[0.3, 0.2], [0.1, 0.4]])
    cost = np.array([[1.0, 2.0], [4.0, 0.5]])
    w_S, w_T = np.array([0.5, 0.5]), np.array([0.4, 0.6])
    new_S, new_T = bert_emd.cost_attention(flow, cost, w_S, w_T, tau=2.0)
    c_S = np.array([0.3 + 0.4, 0.4 + 0.2]) / w_S  # transfer cost per unit of weight
    c_T = np.array([0.3 + 0.4, 0.4 + 0.2]) / w_T
    for new, c in ((new_S, c_S), (new_T, c_T)):
        z = (c.sum() / c) / 2.0
        np.testing.assert_allclose(new, np.exp(z) / np.exp(z).sum())
    assert new_S[1] > new_S[0]  # student layer 2 moves its mass more cheaply


def test_bert_emd_trains_on_the_one_loop(tmp_path):
    assert "bert_emd" in available_strategies()
    distill = DistillationConfig(strategy="bert_emd", hard_label_weight=0.5,
                                 strategy_options={"student_layers": 2, "teacher_layers": 4, "tau": 1.0})
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=3, batch_size=8, trackers=[], progress_bar=False,
                         eval_every_epochs=None, learning_rate=1e-3)
    trainer = Trainer(tiny_bert(2, 32, seed=2), cfg, distill, ToyTask(24), teacher=tiny_bert(4, 48, seed=1),
                      collate_fn=collate)
    result = trainer.train()
    assert {"train/emd_hidden", "train/emd_attention", "train/embedding", "train/kd",
            "train/hard_label"} <= set(result["history"][-1])
    strategy = trainer.strategy
    assert strategy.last_flows["hidden"].shape == (2, 4)
    np.testing.assert_allclose(strategy.last_flows["hidden"].sum(), 1.0, atol=1e-9)
    for kind in ("hidden", "attention"):  # cost attention moved the weights off uniform, still distributions
        w = getattr(strategy, f"{kind}_weights_T").numpy()
        assert w.sum() == pytest.approx(1.0) and not np.allclose(w, 0.25)
    assert strategy.projection.weight.shape == (48, 32)


def _views(seed: int, layers: int, batch: int = 4, length: int = 7, width: int = 8, heads: int = 2):
    """A ModelView with the features BERT-EMD reads (hidden:0..layers, attention maps), logits and a loss."""
    from distill_toolkit.features import ModelView

    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -2:] = 0
    features = {f"hidden:{i}": torch.randn(batch, length, width, generator=g) for i in range(layers + 1)}
    features.update({f"attention:{i}": torch.randn(batch, heads, length, length, generator=g).softmax(-1)
                     for i in range(layers)})
    return ModelView(logits=[torch.randn(batch, 3, generator=g)], loss=torch.rand((), generator=g),
                     labels=torch.arange(batch) % 3, inputs_mask=mask, features=features)


@pytest.mark.parametrize("kd_weight,hard_weight", [(1.0, 0.5), (0.0, 0.7), (1.0, 0.0), (0.0, 0.0)])
def test_bert_emd_loss_is_its_emd_terms_plus_kd_and_hard_labels(kd_weight, hard_weight):
    """The total: weighted EMD terms + the KD objective's kd (scheduled weight) and hard-label terms."""
    distill = DistillationConfig(strategy="bert_emd", temperature=3.0, kd_loss_weight=kd_weight,
                                 hard_label_weight=hard_weight, kd_loss_weight_schedule="linear_decay",
                                 strategy_options={"student_layers": 2, "teacher_layers": 4, "hidden_weight": 0.5})
    strategy = bert_emd.BertEMD(distill)
    strategy.setup(_views(0, 2), {"teacher": _views(1, 4)})
    student, teacher = _views(2, 2), _views(3, 4)
    loss, terms = strategy(None, student, {"teacher": teacher}, 0.25)
    expected = terms["embedding"] + 0.5 * terms["emd_hidden"] + terms["emd_attention"]
    if kd_weight:
        kd = get_loss("kd_ce")(student.logits[0], teacher.logits[0], 3.0)
        assert float(terms["kd"]) == pytest.approx(float(kd), rel=1e-6)
        expected = expected + kd_weight * (1 - 0.25) * kd  # linear_decay at progress 0.25
    if hard_weight:
        assert float(terms["hard_label"]) == pytest.approx(float(student.loss))
        expected = expected + hard_weight * student.loss
    assert ("kd" in terms) == bool(kd_weight) and ("hard_label" in terms) == bool(hard_weight)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_bert_emd_needs_its_layer_counts():
    with pytest.raises(StrategyError, match=r"strategy_options \['teacher_layers'\]"):
        bert_emd.BertEMD(DistillationConfig(strategy="bert_emd", strategy_options={"student_layers": 2}))


def test_the_custom_strategy_of_the_docs_runs(tmp_path):
    """docs/strategies.md's worked example, run as written on tiny models."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "strategies.md").read_text()
    code = re.search(r"## A custom strategy, worked.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('TrainingConfig(output_dir="out")', f'TrainingConfig(output_dir={str(tmp_path)!r}, max_steps=2, '
                        'batch_size=8, trackers=[], progress_bar=False, eval_every_epochs=None)')
    code = code.replace('@register_strategy("cls_cosine")', '@register_strategy("cls_cosine", overwrite=True)')
    scope = {"student": tiny_bert(3, 32, seed=2), "teacher": tiny_bert(6, 48, seed=1), "train_data": ToyTask(16),
             "collator": collate}
    exec(compile(code, "docs/strategies.md", "exec"), scope)
    assert "cls_cosine" in available_strategies()
