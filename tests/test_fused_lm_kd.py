"""The fused head + divergence (distill_toolkit.losses.fused): values and gradients (hidden states, head weight,
bias) equal full logits + the registry's loss + autograd, for every divergence and teacher form; training with
and without fusion ends with the same weights."""

import pytest
import torch
from lm_helpers import prompt_pairs, tiny_gpt2, tiny_llama, tiny_tokenizer
from safetensors.torch import load_file
from torch import nn

from distill_toolkit import DistillationConfig, Trainer, TrainingConfig, losses
from distill_toolkit.config import ConfigError
from distill_toolkit.data.lm import CausalLMCollator
from distill_toolkit.losses import SparseTeacher, sparse_from_dense
from distill_toolkit.losses.chunked import DEFAULT_CHUNK_BYTES, chunk_rows, chunked_lm_kd
from distill_toolkit.losses.fused import fused_lm_kd, fused_supported
from distill_toolkit.strategies import KDObjective, check_distillation
from distill_toolkit.strategies import objective as objective_module

N, H, H_T, V = 37, 16, 24, 50  # 37 rows in chunks of 8: the last chunk is partial
F64 = torch.float64
DIVERGENCES = [
    ("forward_kl", {}), ("kl", {"t2_scaling": True}), ("reverse_kl", {}), ("jsd", {"beta": 0.3}),
    ("jsd", {"beta": 0.0}), ("jsd", {"beta": 1.0}), ("skew_kl", {"alpha": 0.2}), ("skew_kl", {"alpha": 1.0}),
    ("total_variation", {}), ("kd_ce", {}), ("forward_kl", {"top_k": 5}),
    ("jsd", {"beta": 0.5, "top_k": 7, "t2_scaling": True}), ("reverse_kl", {"top_k": V}), ("tv", {"top_k": 3}),
]


def _models(seed=0, bias=True, dtype=F64):
    torch.manual_seed(seed)
    head_S, head_T = nn.Linear(H, V, bias=bias, dtype=dtype), nn.Linear(H_T, V, dtype=dtype)
    h_S = torch.randn(N, H, dtype=dtype, requires_grad=True)
    h_T = 3 * torch.randn(N, H_T, dtype=dtype)  # a peaked teacher
    return h_S, head_S, h_T, head_T


def _temperature(kind, dtype=F64):
    return 1.0 + torch.rand(N, dtype=dtype, generator=torch.Generator().manual_seed(1)) if kind == "row" else kind


def _params(h_S, head_S):
    return [h_S, head_S.weight] + ([head_S.bias] if head_S.bias is not None else [])


def _reference(h_S, head_S, teacher, loss, t, y, kwargs, w_ce=0.7):
    """Full logits, the registry's loss (a mean, times N: a sum) and the CE sum: ``(total, gradients)``."""
    logits_S = head_S(h_S)
    kd = losses.get(loss)(logits_S, teacher, t, **kwargs) * N
    ce = nn.functional.cross_entropy(logits_S, y, reduction="sum") if y is not None else 0.0
    total = kd + w_ce * ce + 0.0 * logits_S.sum()  # attached even where the loss is constant (skew_kl, alpha=1)
    return total.detach(), torch.autograd.grad(total, _params(h_S, head_S))


def _assert_fused_matches(h_S, head_S, fused_args, teacher, loss, t, y, kwargs, weights=None, tol=1e-10):
    kd, ce = fused_lm_kd(h_S, head_S, *fused_args, loss=loss, temperature=t, chunk_size=8, labels=y, weights=weights,
                         **kwargs)
    total = kd + 0.7 * ce
    grads = torch.autograd.grad(total, _params(h_S, head_S))
    ref_total, ref_grads = _reference(h_S, head_S, teacher, loss, t, y, kwargs)
    torch.testing.assert_close(total.detach(), ref_total, rtol=tol, atol=tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("loss, kwargs", DIVERGENCES, ids=[f"{n}-{k}" for n, k in DIVERGENCES])
@pytest.mark.parametrize("temperature", [1.0, 2.5, "row"])
@pytest.mark.parametrize("hard", [False, True])
def test_fused_equals_full_logits_and_autograd(loss, kwargs, temperature, hard):
    h_S, head_S, h_T, head_T = _models()
    t = _temperature(temperature)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2)) if hard else None
    weights = (1.0, 0.7) if hard else None  # the combined gradient where there are two terms
    _assert_fused_matches(h_S, head_S, (h_T, head_T), head_T(h_T).detach(), loss, t, y, kwargs, weights)


@pytest.mark.parametrize("loss, kwargs", [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.4}),
                                          ("skew_kl", {"alpha": 0.1}), ("total_variation", {"t2_scaling": True})])
@pytest.mark.parametrize("temperature", [1.0, 2.5, "row"])
@pytest.mark.parametrize("stored_tail", [True, False])
def test_fused_with_a_topk_sparse_teacher(loss, kwargs, temperature, stored_tail):
    """A top-k SparseTeacher (a cache: log-probs at the temperature, indices, tail): its k + 1 buckets."""
    h_S, head_S, h_T, head_T = _models(seed=3)
    t = _temperature(temperature)
    sparse = sparse_from_dense(head_T(h_T).detach(), 6, t)
    if not stored_tail:
        sparse = SparseTeacher(sparse.logprobs, sparse.indices, None)
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(4))
    _assert_fused_matches(h_S, head_S, (sparse, None), sparse, loss, t, y, kwargs)


def test_fused_with_teacher_rows_probability_shift_and_ignored_labels():
    """Dense teacher logits given as rows (head_T=None), the probability shift, and -100 labels among the rows."""
    h_S, head_S, h_T, head_T = _models(seed=5, bias=False)
    logits_T = head_T(h_T).detach()
    y = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(6))
    y[::5] = -100
    shift = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(7))
    kd, ce = fused_lm_kd(h_S, head_S, logits_T, None, loss="jsd", beta=0.2, temperature=2.0, chunk_size=8, labels=y,
                         shift_labels=shift)
    grads = torch.autograd.grad(kd + 0.7 * ce, _params(h_S, head_S))
    total, ref = _reference(h_S, head_S, losses.probability_shift(logits_T, shift), "jsd", 2.0, y, {"beta": 0.2})
    torch.testing.assert_close((kd + 0.7 * ce).detach(), total, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("loss, kwargs", [("forward_kl", {}), ("jsd", {"beta": 0.5}), ("skew_kl", {"alpha": 0.1}),
                                          ("total_variation", {}), ("kd_ce", {}), ("forward_kl", {"top_k": 4})])
def test_teacher_minus_infinity_logits_stay_finite(loss, kwargs):
    """A padded vocabulary: -inf teacher logits (p = 0) give the registry's finite values and gradients."""
    h_S, head_S, _, _ = _models(seed=13)
    logits_T = torch.randn(N, V, dtype=F64)
    logits_T[:, -7:] = float("-inf")
    y = torch.randint(0, V - 7, (N,))
    _assert_fused_matches(h_S, head_S, (logits_T, None), logits_T, loss, 2.0, y, kwargs)


def test_tied_head_weight_gets_the_head_and_embedding_gradients():
    """The head's weight is the input embedding: autograd adds the fused head gradient to the embedding's."""
    torch.manual_seed(8)
    embed = nn.Embedding(V, H, dtype=F64)
    head = nn.Linear(H, V, bias=False, dtype=F64)
    head.weight = embed.weight
    mix = nn.Linear(H, H, dtype=F64)
    ids = torch.randint(0, V, (N,))
    h_T, head_T = torch.randn(N, H_T, dtype=F64), nn.Linear(H_T, V, dtype=F64)
    y = torch.randint(0, V, (N,))
    params = [embed.weight, mix.weight]

    def grads(fused):
        hidden = torch.tanh(mix(embed(ids)))
        if fused:
            kd, ce = fused_lm_kd(hidden, head, h_T, head_T, loss="forward_kl", temperature=2.0, chunk_size=8,
                                 labels=y, weights=(1.0, 0.5))
            return torch.autograd.grad(kd + 0.5 * ce, params)
        logits = head(hidden)
        loss = losses.forward_kl(logits, head_T(h_T).detach(), 2.0) * N
        return torch.autograd.grad(loss + 0.5 * nn.functional.cross_entropy(logits, y, reduction="sum"), params)

    for got, want in zip(grads(True), grads(False)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_separate_gradients_without_weights_and_the_proportionality_check():
    h_S, head_S, h_T, head_T = _models(seed=9)
    y = torch.randint(0, V, (N,))
    logits = head_S(h_S)
    ref_kd = losses.reverse_kl(logits, head_T(h_T).detach()) * N
    ref_ce = nn.functional.cross_entropy(logits, y, reduction="sum")
    for mix in [lambda kd, ce: kd, lambda kd, ce: ce, lambda kd, ce: 3 * kd - 2 * ce]:
        kd, ce = fused_lm_kd(h_S, head_S, h_T, head_T, loss="reverse_kl", chunk_size=8, labels=y)  # weights=None
        got = torch.autograd.grad(mix(kd, ce), _params(h_S, head_S))
        want = torch.autograd.grad(mix(ref_kd, ref_ce), _params(h_S, head_S), retain_graph=True)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)
    kd, ce = fused_lm_kd(h_S, head_S, h_T, head_T, loss="reverse_kl", chunk_size=8, labels=y, weights=(1.0, 0.5))
    with pytest.raises(RuntimeError, match=r"weights=\(1.0, 0.5\).*not proportional.*Fix"):
        torch.autograd.grad(kd + ce, h_S, retain_graph=True)
    loss = 4 * (kd + 0.5 * ce)  # any multiple of the weighted sum, e.g. the loop's token normalisation
    torch.testing.assert_close(torch.autograd.grad(loss, h_S, retain_graph=True)[0],
                               4 * torch.autograd.grad(ref_kd + 0.5 * ref_ce, h_S)[0], rtol=1e-10, atol=1e-10)
    with pytest.raises(RuntimeError, match="backward ran twice.*compute the loss again"):
        torch.autograd.grad(loss, h_S)


def test_chunk_size_follows_the_memory_budget():
    assert chunk_rows(49152) == DEFAULT_CHUNK_BYTES // (8 * 4 * 49152) == 341
    assert chunk_rows(128256) == 130 and chunk_rows(50, chunk_bytes=1) == 1
    assert chunk_rows(49152, chunk_size=77) == 77  # the old option overrides
    with pytest.raises(ValueError, match="chunk_bytes"):
        chunk_rows(50, chunk_bytes=0)
    h_S, head_S, h_T, head_T = _models(seed=10)
    budget = 3 * 8 * 8 * V  # 3 rows per chunk in fp64
    assert chunk_rows(V, chunk_bytes=budget, itemsize=8) == 3
    values = [fused_lm_kd(h_S, head_S, h_T, head_T, loss="jsd", **kw)[0] for kw in
              [{"chunk_bytes": budget}, {"chunk_size": N}, {}]]
    grads = [torch.autograd.grad(v, h_S)[0] for v in values]
    for v, g in zip(values[1:], grads[1:]):
        torch.testing.assert_close(v, values[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g, grads[0], rtol=1e-12, atol=1e-12)


def test_fused_equals_the_chunked_route_in_float32_and_without_gradients():
    h_S, head_S, h_T, head_T = _models(seed=11, dtype=torch.float32)
    y = torch.randint(0, V, (N,))
    args = dict(loss="skew_kl", alpha=0.3, temperature=_temperature("row", torch.float32), chunk_size=8, labels=y)
    kd, ce = fused_lm_kd(h_S, head_S, h_T, head_T, **args)
    ref_kd, ref_ce = chunked_lm_kd(h_S, head_S, h_T, head_T, **args)
    torch.testing.assert_close(torch.stack([kd, ce]), torch.stack([ref_kd, ref_ce]))
    got = torch.autograd.grad(kd + ce, _params(h_S, head_S))
    for g, w in zip(got, torch.autograd.grad(ref_kd + ref_ce, _params(h_S, head_S))):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        plain = fused_lm_kd(h_S, head_S, h_T, head_T, **args)
    assert not plain[0].requires_grad
    torch.testing.assert_close(torch.stack(plain), torch.stack([kd, ce]).detach())


def test_what_cannot_be_fused_takes_the_reference_route():
    head = nn.Linear(H, V)
    assert fused_supported("forward_kl", head) and fused_supported("tv", head) and fused_supported("kd_ce", head)
    assert not fused_supported("kd_mse", head) and not fused_supported("no_such_loss", head)
    assert not fused_supported("forward_kl", nn.Sequential(head))
    hooked = nn.Linear(H, V)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    assert not fused_supported("forward_kl", hooked)
    with pytest.raises(ValueError, match="cannot fuse loss 'kd_mse'.*chunked_lm_kd"):
        fused_lm_kd(torch.randn(2, H), head, torch.randn(2, V), None, loss="kd_mse")
    with pytest.raises(TypeError, match="takes no argument 'mask'"):
        fused_lm_kd(torch.randn(2, H), head, torch.randn(2, V), None, loss="forward_kl", mask=torch.ones(2))
    with pytest.raises(ValueError, match="beta must be a number in"):
        fused_lm_kd(torch.randn(2, H), head, torch.randn(2, V), None, loss="jsd", beta=2)


def test_token_kd_uses_the_fused_route_by_default(monkeypatch):
    calls = []
    real = objective_module.fused_lm_kd
    monkeypatch.setattr(objective_module, "fused_lm_kd", lambda *a, **k: calls.append(k) or real(*a, **k))
    h_S, head_S, h_T, head_T = _models(seed=12, dtype=torch.float32)
    objective = KDObjective(DistillationConfig(strategy="causal_lm", kd_loss="forward_kl", hard_label_weight=0.5))
    targets = torch.randint(0, V, (N,))
    fused = objective.token_kd(h_S, head_S, h_T, head_T, targets, progress=0.0)
    assert len(calls) == 1 and calls[0]["weights"] == (1.0, 0.5)
    reference = objective.token_kd(h_S, head_S, h_T, head_T, targets, fused=False)
    assert len(calls) == 1
    torch.testing.assert_close(torch.stack(fused), torch.stack(reference))


@pytest.mark.parametrize("options, field", [({"fused": "yes"}, "fused"), ({"chunk_bytes": 0}, "chunk_bytes"),
                                            ({"chunk_size": -1}, "chunk_size")])
def test_bad_fused_options_name_the_field(options, field):
    with pytest.raises(ConfigError, match=rf"distillation.strategy_options.{field}: .*Fix:"):
        check_distillation(DistillationConfig(strategy="causal_lm", strategy_options=options))


def _train(path, student, fused: bool, **dist):
    training = TrainingConfig(output_dir=str(path), max_steps=4, batch_size=4, learning_rate=3e-3, trackers=[],
                              progress_bar=False, eval_every_epochs=None, seed=0, max_grad_norm=1.0)
    distill = DistillationConfig(strategy="causal_lm", strategy_options={"fused": fused}, **dist)
    Trainer(student(2, 32, seed=2), training, distill, prompt_pairs(16), teacher=student(3, 48, seed=1),
            collate_fn=CausalLMCollator(tiny_tokenizer())).train()
    return load_file(str(path / "final" / "model.safetensors"))


@pytest.mark.parametrize("student, dist", [
    (tiny_llama, dict(kd_loss="jsd", kd_loss_kwargs={"beta": 0.5}, temperature=2.0, hard_label_weight=0.5,
                      hard_label_weight_schedule="linear_decay")),
    (tiny_gpt2, dict(kd_loss="reverse_kl", temperature=1.0, hard_label_weight=0.3)),  # tied embeddings and head
])
def test_training_with_and_without_fusion_ends_with_the_same_weights(tmp_path, student, dist):
    fused = _train(tmp_path / "fused", student, True, **dist)
    reference = _train(tmp_path / "ref", student, False, **dist)
    assert fused.keys() == reference.keys()
    for name in fused:
        torch.testing.assert_close(fused[name], reference[name], rtol=1e-4, atol=1e-5)
