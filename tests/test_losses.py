"""Losses: parity with TextBrewer 0.2.1, hand-written references for the modern losses, registry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from distill_toolkit import losses as L
from distill_toolkit.losses import registry as R
from distill_toolkit.losses.logits import SparseTeacher

# TextBrewer 0.2.1 is the reference (a test dependency in pyproject.toml).
import textbrewer.losses as tb_losses  # noqa: E402
import textbrewer.presets as tb_presets  # noqa: E402
from textbrewer.distiller_utils import select_logits_with_mask  # noqa: E402


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, seed=0, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=_gen(seed)) * scale).to(dtype)


def _pad_mask(lengths, length, hole=None):
    """(batch, length) mask of 1s up to each length (padding at the end), optionally a 0 at `hole`."""
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    if hole is not None:
        mask[hole] = False
    return mask


# --------------------------------------------------------------------------- TextBrewer parity: kd


LOGIT_SHAPES = [(6, 5), (3, 7, 11)]


def _logits_mask(shape):
    if len(shape) == 2:
        return torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)[: shape[0]]
    return _pad_mask([shape[1], shape[1] - 3, 2], shape[1], hole=(0, 2))


def _tb_select(x, mask):
    # TextBrewer's own row selection (it ignores logits_mask on 2-D logits, so index those directly).
    if x.dim() == 3:
        return select_logits_with_mask([x], [mask])[0]
    return x[mask]


@pytest.mark.parametrize("shape", LOGIT_SHAPES)
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("temp_kind", ["one", "float", "tensor"])
@pytest.mark.parametrize("name,tb_fn", [("kd_ce", tb_losses.kd_ce_loss), ("kd_mse", tb_losses.kd_mse_loss)])
def test_kd_parity_with_textbrewer(shape, use_mask, temp_kind, name, tb_fn):
    S = _randn(*shape, seed=1, scale=3)
    T = _randn(*shape, seed=2, scale=3)
    temperature = {"one": 1, "float": 3.5, "tensor": 0.5 + 4 * torch.rand(shape[:-1], generator=_gen(3))}[temp_kind]
    mask = _logits_mask(shape) if use_mask else None
    ours = L.get(name)(S, T, temperature, mask=mask)
    if mask is None:
        expected = tb_fn(S, T, temperature)
    else:
        t_sel = temperature[mask] if isinstance(temperature, torch.Tensor) else temperature
        expected = tb_fn(_tb_select(S, mask), _tb_select(T, mask), t_sel)
    assert_close(ours, expected)


def test_kd_loss_map_names_resolve_to_parity_functions():
    S, T = _randn(4, 6, 9, seed=4), _randn(4, 6, 9, seed=5)
    for tb_name, ours in (("ce", "kd_ce"), ("mse", "kd_mse")):
        assert_close(L.get(ours)(S, T, 2.0), tb_presets.KD_LOSS_MAP[tb_name](S, T, 2.0))


def test_kd_ce_masked_rows_may_hold_garbage():
    S, T = _randn(3, 7, 11, seed=1), _randn(3, 7, 11, seed=2)
    mask = _logits_mask(S.shape)
    S_bad, T_bad = S.clone(), T.clone()
    S_bad[~mask] = float("nan")
    T_bad[~mask] = float("inf")
    assert_close(L.kd_ce(S_bad, T_bad, 2.0, mask=mask), L.kd_ce(S, T, 2.0, mask=mask))


# --------------------------------------------------------------------------- TextBrewer parity: features


def _attention(shape, seed, masked_cols=None):
    """Random attention scores; masked key columns hold -10000 as in BERT's extended mask."""
    a = _randn(*shape, seed=seed, scale=2)
    if masked_cols is not None:
        a = a.masked_fill(~masked_cols, -10000.0)
    return a


ATT_B, ATT_H, ATT_L = 3, 4, 6
ATT_MASK = _pad_mask([6, 4, 5], ATT_L, hole=(2, 1))


def _att_pair(dim, fill=True):
    """Student/teacher attention scores; with ``fill`` the padded keys hold -10000, otherwise
    random values (so only the mask can exclude them)."""
    shape = (ATT_B, ATT_H, ATT_L, ATT_L) if dim == 4 else (ATT_B, ATT_L, ATT_L)
    cols = ATT_MASK[:, None, None, :] if dim == 4 else ATT_MASK[:, None, :]
    if not fill:
        cols = None
    return _attention(shape, 10, cols), _attention(shape, 11, cols)


# (registry name, TextBrewer function, attention ranks TextBrewer supports with a mask)
ATT_CASES = [
    ("attention_mse", tb_losses.att_mse_loss, (4,)),
    ("attention_mse_sum", tb_losses.att_mse_sum_loss, (3, 4)),
    ("attention_ce", tb_losses.att_ce_loss, (4,)),
    ("attention_ce_mean", tb_losses.att_ce_mean_loss, (3, 4)),
]


ATT_PARAMS = [
    pytest.param(name, tb_fn, dim, use_mask, id=f"{name}-{dim}d-{'mask' if use_mask else 'nomask'}")
    for name, tb_fn, masked_dims in ATT_CASES
    for dim in (3, 4)
    for use_mask in (False, True)
    if not use_mask or dim in masked_dims  # TextBrewer cannot do the others
]


@pytest.mark.parametrize("name,tb_fn,dim,use_mask", ATT_PARAMS)
@pytest.mark.parametrize("fill", [True, False], ids=["padded-keys-filled", "raw-scores"])
def test_attention_losses_match_textbrewer(name, tb_fn, dim, use_mask, fill):
    S, T = _att_pair(dim, fill)
    mask = ATT_MASK.long() if use_mask else None
    assert_close(L.get(name)(S, T, mask), tb_fn(S, T, mask))


def test_attention_no_mask_thresholds_negative_scores():
    # Without a mask, entries <= -1e-3 count as masked (zeroed) in TextBrewer; check it is not a no-op.
    S, T = _att_pair(4)
    plain = F.mse_loss(S, T)
    assert not torch.isclose(L.attention_mse(S, T), plain)


def test_attention_3d_with_mask_is_single_head():
    S, T = _att_pair(4)
    m = ATT_MASK
    for name in ("attention_mse", "attention_ce"):
        fn = L.get(name)
        per_head = torch.stack([fn(S[:, h], T[:, h], m) for h in range(ATT_H)])
        assert_close(fn(S, T, m), per_head.mean())


HID_MASK = _pad_mask([5, 3, 4], 5, hole=(0, 1))


@pytest.mark.parametrize("name,tb_fn", [("hidden_mse", tb_losses.hid_mse_loss), ("cos", tb_losses.cos_loss),
                                        ("pkd", tb_losses.pkd_loss)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_hidden_losses_match_textbrewer(name, tb_fn, use_mask):
    S, T = _randn(3, 5, 8, seed=20), _randn(3, 5, 8, seed=21)
    mask = HID_MASK.long() if use_mask else None
    assert_close(L.get(name)(S, T, mask), tb_fn(S, T, mask))


def test_cos_and_pkd_on_2d_inputs_match_textbrewer():
    S, T = _randn(6, 8, seed=22), _randn(6, 8, seed=23)
    assert_close(L.cos(S, T), tb_losses.cos_loss(S, T))
    row_mask = torch.tensor([1, 1, 0, 1, 0, 1])
    assert_close(L.cos(S, T, row_mask), tb_losses.cos_loss(S, T, row_mask))
    assert_close(L.pkd(S, T), tb_losses.pkd_loss(S, T))


def test_hidden_mse_mask_changes_value():
    S, T = _randn(3, 5, 8, seed=20), _randn(3, 5, 8, seed=21)
    assert not torch.isclose(L.hidden_mse(S, T, HID_MASK), L.hidden_mse(S, T))


@pytest.mark.parametrize("name", ["fsp", "gram", "mmd", "nst"])
@pytest.mark.parametrize("use_mask", [False, True])
def test_pair_losses_match_textbrewer(name, use_mask):
    hid_T = 8 if name in ("fsp", "gram") else 12  # mmd allows different hidden sizes
    S = [_randn(3, 5, 8, seed=30), _randn(3, 5, 8, seed=31)]
    T = [_randn(3, 5, hid_T, seed=32), _randn(3, 5, hid_T, seed=33)]
    mask = HID_MASK.long() if use_mask else None
    assert_close(L.get(name)(S, T, mask), tb_presets.MATCH_LOSS_MAP[name](S, T, mask))


def test_every_textbrewer_match_loss_name_is_registered_with_equal_values():
    S, T = _att_pair(4)
    H_S, H_T = _randn(3, 6, 8, seed=40), _randn(3, 6, 8, seed=41)
    for name, tb_fn in tb_presets.MATCH_LOSS_MAP.items():
        assert L.loss_kind(name) == "feature"
        if name.startswith("attention"):
            args = (S, T)
        elif name in ("fsp", "gram", "mmd", "nst"):
            args = ([H_S, H_T], [H_T, H_S])
        else:
            args = (H_S, H_T)
        for mask in (None, ATT_MASK.long()):
            assert_close(L.get(name)(*args, mask), tb_fn(*args, mask), msg=f"{name} mask={mask is not None}")


def test_pair_losses_reject_single_tensor():
    with pytest.raises(ValueError, match="list of two tensors"):
        L.fsp(_randn(2, 3, 4), _randn(2, 3, 4))


# --------------------------------------------------------------------------- MiniLM value relation


def _ref_value_relation(v_S, v_T, lengths):
    total, rows = 0.0, 0
    for b, n in enumerate(lengths):
        vs, vt = v_S[b, :, :n].double(), v_T[b, :, :n].double()
        r_S = torch.softmax(vs @ vs.transpose(-1, -2) / math.sqrt(vs.size(-1)), -1)
        r_T = torch.softmax(vt @ vt.transpose(-1, -2) / math.sqrt(vt.size(-1)), -1)
        total += (r_T * (r_T.log() - r_S.log())).sum()
        rows += n * v_S.size(1)
    return total / rows


def test_minilm_value_relation_matches_reference():
    v_S, v_T = _randn(3, 2, 5, 4, seed=50), _randn(3, 2, 5, 6, seed=51)
    assert_close(L.minilm_value_relation(v_S, v_T).double(), _ref_value_relation(v_S, v_T, [5, 5, 5]))
    mask = _pad_mask([5, 3, 4], 5)
    assert_close(L.minilm_value_relation(v_S, v_T, mask).double(), _ref_value_relation(v_S, v_T, [5, 3, 4]))
    assert L.loss_kind("minilm_value_relation") == "feature"


# --------------------------------------------------------------------------- modern losses: references


def _p(x, temperature):
    t = temperature.unsqueeze(-1) if isinstance(temperature, torch.Tensor) else temperature
    return torch.softmax(x.double() / t, dim=-1)


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


REFERENCES = {
    "forward_kl": lambda p, q: _kl(p, q),
    "reverse_kl": lambda p, q: _kl(q, p),
    "jsd": lambda p, q, beta=0.5: beta * _kl(p, beta * p + (1 - beta) * q)
    + (1 - beta) * _kl(q, beta * p + (1 - beta) * q),
    "skew_kl": lambda p, q, alpha=0.1: _kl(p, alpha * p + (1 - alpha) * q),
    "total_variation": lambda p, q: 0.5 * (p - q).abs().sum(-1),
}
SPARSE_LOSSES = list(REFERENCES)


def _reference(name, S, T, temperature=1, mask=None, top_k=None, **kw):
    """Probability-space float64 reference; p = teacher, q = student. Mean over kept rows."""
    p, q = _p(T, temperature), _p(S, temperature)
    if top_k is not None:
        idx = p.topk(top_k, dim=-1).indices
        p_k, q_k = p.gather(-1, idx), q.gather(-1, idx)
        p = torch.cat([p_k, (1 - p_k.sum(-1, keepdim=True)).clamp(min=0)], -1)
        q = torch.cat([q_k, (1 - q_k.sum(-1, keepdim=True)).clamp(min=0)], -1)
    per_row = REFERENCES[name](p, q, **kw)
    if mask is not None:
        per_row = per_row[mask]
    return per_row.mean()


@pytest.mark.parametrize("name", SPARSE_LOSSES)
@pytest.mark.parametrize("shape", [(5, 7), (2, 4, 9)])
@pytest.mark.parametrize("temperature", [1, 2.5, "tensor"])
def test_divergence_matches_reference(name, shape, temperature):
    S, T = _randn(*shape, seed=60, scale=2, dtype=torch.float64), _randn(*shape, seed=61, scale=2, dtype=torch.float64)
    if temperature == "tensor":
        temperature = 0.5 + 3 * torch.rand(shape[:-1], generator=_gen(62), dtype=torch.float64)
    ours = L.get(name)(S, T, temperature)
    assert ours.dtype == torch.float64
    assert_close(ours, _reference(name, S, T, temperature))


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_divergence_float32_close_to_float64_reference(name):
    S, T = _randn(3, 6, 50, seed=63, scale=4), _randn(3, 6, 50, seed=64, scale=4)
    ours = L.get(name)(S, T, 2.0)
    assert ours.dtype == torch.float32
    assert_close(ours.double(), _reference(name, S, T, 2.0), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_beta_matches_reference(beta):
    S, T = _randn(4, 5, 8, seed=65, dtype=torch.float64), _randn(4, 5, 8, seed=66, dtype=torch.float64)
    assert_close(L.jsd(S, T, 1.5, beta=beta), _reference("jsd", S, T, 1.5, beta=beta))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_forward_kl_is_soft_cross_entropy_minus_teacher_entropy(temperature):
    """KL(p_T || p_S) = CE(p_T, p_S) - H(p_T), on the real positions of labels with -100 (T^2 scaling on/off)."""
    S = _randn(2, 6, 11, seed=90, scale=3, dtype=torch.float64)
    T = _randn(2, 6, 11, seed=91, scale=3, dtype=torch.float64)
    labels = torch.tensor([[4, 2, -100, 7, -100, 1], [-100, 0, 3, 3, 9, -100]])
    keep = labels != -100
    log_p_T = torch.log_softmax(T / temperature, -1)[keep]
    log_p_S = torch.log_softmax(S / temperature, -1)[keep]
    p_T = log_p_T.exp()
    soft_ce = -(p_T * log_p_S).sum(-1).mean()            # what TextBrewer's kd_ce computes
    entropy = -(p_T * log_p_T).sum(-1).mean()
    assert_close(L.kd_ce(S[keep], T[keep], temperature), soft_ce)
    assert_close(L.forward_kl(S, T, temperature, mask=keep), soft_ce - entropy)
    assert_close(L.forward_kl(S, T, temperature, mask=keep, t2_scaling=True), temperature ** 2 * (soft_ce - entropy))
    # the gradient with respect to the student is the same: the entropy term is constant
    S1, S2 = S.clone().requires_grad_(), S.clone().requires_grad_()
    L.forward_kl(S1, T, temperature, mask=keep).backward()
    L.kd_ce(S2[keep], T[keep], temperature).backward()
    assert_close(S1.grad, S2.grad)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.7, 1.0])
def test_skew_kl_alpha_matches_reference(alpha):
    S, T = _randn(4, 8, seed=67, dtype=torch.float64), _randn(4, 8, seed=68, dtype=torch.float64)
    assert_close(L.skew_kl(S, T, alpha=alpha), _reference("skew_kl", S, T, alpha=alpha))


def test_jsd_beta_edges_are_forward_and_reverse_kl():
    S, T = _randn(4, 5, 8, seed=69), _randn(4, 5, 8, seed=70)
    at0, at1 = L.jsd(S, T, 2.0, beta=0.0), L.jsd(S, T, 2.0, beta=1.0)
    assert torch.isfinite(at0) and torch.isfinite(at1)
    assert_close(at0, L.forward_kl(S, T, 2.0))
    assert_close(at1, L.reverse_kl(S, T, 2.0))
    # Consistent with the limits: jsd(beta) / beta -> forward KL as beta -> 0.
    small = 1e-4
    S64, T64 = S.double(), T.double()
    assert_close(L.jsd(S64, T64, 2.0, beta=small) / small, L.forward_kl(S64, T64, 2.0), rtol=1e-3, atol=0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            L.jsd(S, T, beta=bad)


def test_divergences_zero_for_identical_distributions():
    S = _randn(3, 10, seed=71)
    for name in SPARSE_LOSSES:
        assert_close(L.get(name)(S, S.clone(), 2.0), torch.tensor(0.0), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- masks


def test_mask_from_labels():
    labels = torch.tensor([[3, -100, 1], [-100, -100, 0]])
    assert torch.equal(L.mask_from_labels(labels), torch.tensor([[True, False, True], [False, False, True]]))
    assert L.mask_from_labels(labels).dtype == torch.bool
    assert torch.equal(L.mask_from_labels(labels, ignore_index=0), labels != 0)


LOGITS_NAMES = ["kd_ce", "kd_mse", "multilabel_kd"] + SPARSE_LOSSES


@pytest.mark.parametrize("name", LOGITS_NAMES)
def test_mask_drops_rows(name):
    S, T = _randn(3, 6, 10, seed=80, scale=2), _randn(3, 6, 10, seed=81, scale=2)
    labels = torch.randint(0, 10, (3, 6), generator=_gen(82))
    labels[0, 4:] = -100  # padding at the end
    labels[1, 1] = -100
    mask = L.mask_from_labels(labels)
    fn = L.get(name)
    masked = fn(S, T, 2.0, mask=mask)
    assert_close(masked, fn(S[mask], T[mask], 2.0))
    # Masked rows do not enter the computation: garbage there changes nothing.
    S_bad = S.masked_fill(~mask[..., None], float("nan"))
    assert_close(fn(S_bad, T, 2.0, mask=mask), masked)
    assert torch.isnan(fn(S_bad, T, 2.0))
    # An int/float 0-1 mask means the same as a bool one.
    assert_close(fn(S, T, 2.0, mask=mask.float()), masked)


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_masked_divergence_with_tensor_temperature_matches_reference(name):
    S = _randn(3, 6, 10, seed=83, scale=2, dtype=torch.float64)
    T = _randn(3, 6, 10, seed=84, scale=2, dtype=torch.float64)
    temperature = 0.5 + 3 * torch.rand(3, 6, generator=_gen(85), dtype=torch.float64)
    mask = _pad_mask([6, 2, 5], 6, hole=(0, 3))
    assert_close(L.get(name)(S, T, temperature, mask=mask), _reference(name, S, T, temperature, mask=mask))


@pytest.mark.parametrize("name", LOGITS_NAMES)
def test_all_masked_gives_zero_with_graph(name):
    S = _randn(2, 3, 5, seed=86).requires_grad_()
    loss = L.get(name)(S, _randn(2, 3, 5, seed=87), mask=torch.zeros(2, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(S.grad, torch.zeros_like(S))


def test_bad_mask_and_temperature_shapes_name_the_field():
    S, T = _randn(2, 3, 5), _randn(2, 3, 5, seed=1)
    with pytest.raises(ValueError, match="mask"):
        L.forward_kl(S, T, mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="temperature"):
        L.kd_ce(S, T, torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        L.kd_ce(S, T, 0)
    with pytest.raises(ValueError, match="top_k"):
        L.forward_kl(S, T, top_k=6)
    with pytest.raises(ValueError, match="same shape"):
        L.forward_kl(S, _randn(2, 3, 6))


# --------------------------------------------------------------------------- top-k sparse form


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_top_k_full_vocab_equals_dense(name):
    S, T = _randn(3, 4, 12, seed=90, scale=3), _randn(3, 4, 12, seed=91, scale=3)
    fn = L.get(name)
    assert_close(fn(S, T, 2.0, top_k=12), fn(S, T, 2.0))
    mask = _pad_mask([4, 2, 3], 4)
    assert_close(fn(S, T, 2.0, top_k=12, mask=mask), fn(S, T, 2.0, mask=mask))


@pytest.mark.parametrize("name", SPARSE_LOSSES)
@pytest.mark.parametrize("k", [1, 3])
def test_top_k_matches_bucket_reference(name, k):
    S = _randn(3, 4, 12, seed=92, scale=3, dtype=torch.float64)
    T = _randn(3, 4, 12, seed=93, scale=3, dtype=torch.float64)
    fn = L.get(name)
    sparse = fn(S, T, 2.0, top_k=k)
    assert torch.isfinite(sparse)
    assert not torch.isclose(sparse, fn(S, T, 2.0))
    assert_close(sparse, _reference(name, S, T, 2.0, top_k=k))


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_sparse_teacher_input_equals_dense_top_k_path(name):
    S, T = _randn(3, 4, 12, seed=94, scale=3), _randn(3, 4, 12, seed=95, scale=3)
    temperature = 0.5 + 3 * torch.rand(3, 4, generator=_gen(96))
    mask = _pad_mask([4, 1, 3], 4)
    fn = L.get(name)
    st = L.sparse_from_dense(T, 5, temperature)
    assert isinstance(st, SparseTeacher)
    assert st.logprobs.shape == (3, 4, 5) and st.indices.shape == (3, 4, 5) and st.tail_logprob.shape == (3, 4)
    expected = fn(S, T, temperature, top_k=5, mask=mask)
    assert_close(fn(S, st, temperature, mask=mask), expected)
    # A cache that stored no tail: derived as log(1 - sum p_topk) (in float64, where the
    # cancellation in 1 - sum is negligible).
    S64, T64, t64 = S.double(), T.double(), temperature.double()
    st64 = L.sparse_from_dense(T64, 5, t64)
    assert_close(fn(S64, st64._replace(tail_logprob=None), t64, mask=mask), fn(S64, T64, t64, top_k=5, mask=mask))
    # A cache in half precision with int32 indices still works.
    half = SparseTeacher(st.logprobs.half(), st.indices.int(), st.tail_logprob.half())
    assert_close(fn(S, half, temperature, mask=mask), expected, rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="top_k"):
        fn(S, st, temperature, top_k=4)


def test_sparse_from_dense_values():
    T = _randn(2, 9, seed=97, scale=2, dtype=torch.float64)
    st = L.sparse_from_dense(T, 4, temperature=2.0)
    p = torch.softmax(T / 2.0, -1)
    top = p.topk(4, -1)
    assert torch.equal(st.indices, top.indices)
    assert_close(st.logprobs.exp(), top.values)
    assert_close(st.tail_logprob.exp(), 1 - top.values.sum(-1))
    full = L.sparse_from_dense(T, 9)
    assert torch.all(full.tail_logprob.exp() == 0)  # no mass left, and no -inf either
    assert torch.all(torch.isfinite(full.tail_logprob))
    with pytest.raises(ValueError, match="k"):
        L.sparse_from_dense(T, 10)


# --------------------------------------------------------------------------- temperature scaling, multilabel


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_t2_scaling(name):
    S, T = _randn(4, 6, seed=100, scale=2), _randn(4, 6, seed=101, scale=2)
    fn = L.get(name)
    assert_close(fn(S, T, 3.0, t2_scaling=True), 9.0 * fn(S, T, 3.0))
    temperature = torch.tensor([1.0, 2.0, 3.0, 4.0])
    per_row = torch.stack([fn(S[i : i + 1], T[i : i + 1], float(temperature[i])) for i in range(4)])
    assert_close(fn(S, T, temperature, t2_scaling=True), (per_row * temperature**2).mean())


@pytest.mark.parametrize("temperature", [1, 2.0])
def test_multilabel_kd_equals_hand_bce(temperature):
    S = _randn(3, 4, 5, seed=110, scale=3, dtype=torch.float64)
    T = _randn(3, 4, 5, seed=111, scale=3, dtype=torch.float64)
    mask = _pad_mask([4, 2, 3], 4)
    p = torch.sigmoid(T / temperature)
    q = torch.sigmoid(S / temperature)
    bce = -(p * q.log() + (1 - p) * (1 - q).log())
    assert_close(L.multilabel_kd(S, T, temperature), bce.mean())
    assert_close(L.multilabel_kd(S, T, temperature, mask=mask), bce[mask].mean())
    # Stable for huge logits where the naive formula would give inf.
    big = L.multilabel_kd(S * 1e4, T * 1e4)
    assert torch.isfinite(big)


# --------------------------------------------------------------------------- gradients & numerics


@pytest.mark.parametrize("name,top_k", [(n, None) for n in LOGITS_NAMES] + [(n, 3) for n in SPARSE_LOSSES])
def test_gradients_flow_to_student_only_on_kept_rows(name, top_k):
    S = _randn(2, 4, 8, seed=120, scale=2).requires_grad_()
    T = _randn(2, 4, 8, seed=121, scale=2)
    mask = _pad_mask([4, 2], 4)
    kw = {"top_k": top_k} if top_k else {}
    L.get(name)(S, T, 2.0, mask=mask, **kw).backward()
    assert torch.isfinite(S.grad).all()
    assert S.grad[mask].abs().sum() > 0
    assert torch.equal(S.grad[~mask], torch.zeros_like(S.grad[~mask]))


@pytest.mark.parametrize(
    "name,top_k", [("kd_ce", None)] + [(n, k) for n in SPARSE_LOSSES for k in (None, 3, 6, 8)]
)
def test_inf_logits_for_unused_classes_are_harmless(name, top_k):
    # A padded vocabulary: columns 6 and 7 are -inf for both models; the loss must equal the
    # loss on the 6 real classes, with finite gradients.
    S6, T6 = _randn(3, 6, seed=130, scale=2), _randn(3, 6, seed=131, scale=2)
    pad = torch.full((3, 2), float("-inf"))
    S = torch.cat([S6, pad], -1).requires_grad_()
    T = torch.cat([T6, pad], -1)
    kw = {"top_k": top_k} if top_k else {}
    loss = L.get(name)(S, T, 2.0, **kw)
    kw6 = {"top_k": min(top_k, 6)} if top_k else {}
    assert_close(loss, L.get(name)(S6, T6, 2.0, **kw6))
    loss.backward()
    assert torch.isfinite(S.grad).all()


@pytest.mark.parametrize("name", SPARSE_LOSSES)
def test_half_precision_inputs_computed_in_fp32(name):
    S, T = _randn(2, 3, 16, seed=140, scale=8), _randn(2, 3, 16, seed=141, scale=8)
    loss = L.get(name)(S.bfloat16(), T.bfloat16(), 2.0)
    assert loss.dtype == torch.float32
    assert_close(loss, L.get(name)(S.bfloat16().float(), T.bfloat16().float(), 2.0))


# --------------------------------------------------------------------------- registry


@pytest.fixture
def scratch_registry():
    saved = dict(R._REGISTRY)
    yield
    R._REGISTRY.clear()
    R._REGISTRY.update(saved)


def test_builtins_and_aliases():
    assert L.get("kl") is L.forward_kl and L.get("forward_kl") is L.forward_kl
    assert L.get("tv") is L.total_variation
    assert L.get("gram") is L.fsp and L.get("nst") is L.mmd
    assert L.get("att_mse") is L.attention_mse
    logits_names = {"kd_ce", "kd_mse", "forward_kl", "kl", "reverse_kl", "jsd", "skew_kl", "total_variation",
                    "tv", "multilabel_kd", "uld", "aligned_kd"}
    assert set(L.available_losses("logits")) == logits_names
    feature_names = {"attention_mse", "attention_mse_sum", "attention_ce", "attention_ce_mean", "hidden_mse", "cos",
                     "pkd", "fsp", "gram", "mmd", "nst"}
    assert feature_names <= set(L.available_losses("feature"))
    assert not logits_names & set(L.available_losses("feature"))
    assert L.available_losses() == sorted(L.available_losses())
    assert L.loss_kind("jsd") == "logits" and L.loss_kind("hidden_mse") == "feature"
    with pytest.raises(ValueError, match="kind"):
        L.available_losses("hidden")


def test_unknown_name_error_lists_known_names():
    with pytest.raises(L.UnknownLossError) as info:
        L.get("kld")
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    message = str(err)
    assert message.startswith("unknown loss 'kld'")  # not wrapped in quotes like a bare KeyError
    assert ", ".join(sorted(L.available_losses())) in message
    with pytest.raises(KeyError):
        L.loss_kind("kld")
    with pytest.raises(ValueError):
        L.get(["not", "hashable"])


def test_register_loss(scratch_registry):
    def l1(feature_S, feature_T, mask=None):
        return (feature_S - feature_T).abs().mean()

    assert L.register_loss("my_l1", l1) is l1
    assert L.get("my_l1") is l1 and L.loss_kind("my_l1") == "feature"
    assert "my_l1" in L.available_losses("feature")
    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("my_l1", l1)
    with pytest.raises(ValueError, match="already registered"):
        L.register_loss("kl", l1, kind="logits")

    @L.register_loss("my_kl", kind="logits")
    def my_kl(logits_S, logits_T, temperature=1, *, mask=None):
        return L.forward_kl(logits_S, logits_T, temperature, mask=mask)

    assert L.get("my_kl") is my_kl and L.loss_kind("my_kl") == "logits"
    L.register_loss("kl", my_kl, kind="logits", overwrite=True)
    assert L.get("kl") is my_kl
    with pytest.raises(ValueError, match="kind"):
        L.register_loss("x", l1, kind="hidden")
    with pytest.raises(TypeError, match="callable"):
        L.register_loss("x", 3)


def test_registry_restored_after_scratch():
    assert L.get("kl") is L.forward_kl
    assert "my_l1" not in L.available_losses()
