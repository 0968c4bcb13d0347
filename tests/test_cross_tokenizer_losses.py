"""Cross-tokenizer losses on small tensors computed by hand: ULD, the order pairing, the span pairing and the
offset-aligned KD (shared-vocabulary KL with a rest bucket, ULD on the rest, span binary KL), masks and padding."""

import math

import pytest
import torch

from distill_toolkit import losses
from distill_toolkit.losses.cross_tokenizer import aligned_kd, pair_by_order, span_pairs, uld


def _logits(*rows):
    """Logits whose softmax is exactly each row of probabilities."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_uld_by_hand_pads_the_shorter_vocabulary_with_zeros():
    # sorted S [.5 .3 .2 0], sorted T [.6 .2 .1 .1]: |.1| + |.1| + |.1| + |.1|
    assert float(uld(_logits([0.3, 0.5, 0.2]), _logits([0.1, 0.6, 0.2, 0.1]))) == pytest.approx(0.4)
    # order inside a vector does not matter, only the sorted shape
    assert float(uld(_logits([0.2, 0.3, 0.5]), _logits([0.5, 0.2, 0.3]))) == pytest.approx(0.0, abs=1e-12)
    assert losses.get("uld") is uld and losses.loss_kind("uld") == "logits"


def test_uld_mask_mean_and_sum_and_temperature():
    s = _logits([0.3, 0.5, 0.2], [0.5, 0.5, 0.0001])
    t = _logits([0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25])
    row2 = sum(abs(a - b) for a, b in zip(sorted(torch.softmax(s[1], -1).tolist(), reverse=True) + [0.0],
                                          [0.25] * 4))
    assert float(uld(s, t)) == pytest.approx((0.4 + row2) / 2)
    assert float(uld(s, t, reduction="sum")) == pytest.approx(0.4 + row2)
    assert float(uld(s, t, mask=torch.tensor([True, False]))) == pytest.approx(0.4)
    # T = 2 flattens both: the softmax of logits / 2
    p_S, p_T = torch.softmax(s[0] / 2, -1), torch.softmax(t[0] / 2, -1)
    expected = sum(abs(a - b) for a, b in zip(sorted(p_S.tolist(), reverse=True) + [0.0],
                                              sorted(p_T.tolist(), reverse=True)))
    assert float(uld(s[:1], t[:1], 2.0)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="pair positions first"):
        uld(s, t[:1])


def test_pair_by_order_truncates_each_row_to_the_shorter_side():
    mask_S = torch.tensor([[0, 1, 1, 1, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    mask_T = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    keep_S, keep_T = pair_by_order(mask_S, mask_T)
    assert keep_S.tolist() == [[False, True, True, False, False], [True, True, False, False, False]]
    assert keep_T.tolist() == [[True, True, False], [True, True, False]]


def test_span_pairs_keep_spans_present_and_wholly_counted_on_both_sides():
    # row 0: S tokens in spans [-1, 0, 1, 1, 2], T tokens in spans [0, 1, 2, -1]
    # row 1: S [0, 1, -1, -1, -1] (padding), T [0, 1, 1, -1]
    spans_S = torch.tensor([[-1, 0, 1, 1, 2], [0, 1, -1, -1, -1]])
    spans_T = torch.tensor([[0, 1, 2, -1], [0, 1, 1, -1]])
    counted_S = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    counted_T = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)  # T's span 2 of row 0 not learnt
    pairs = span_pairs(spans_S, spans_T, counted_S, counted_T)
    # row 0: span 0 (T token 0 has no predecessor) out, span 1 in, span 2 out; row 1: span 0 out, span 1 in
    assert pairs.row.tolist() == [0, 1]
    assert pairs.first_S.tolist() == [2, 1] and pairs.first_T.tolist() == [1, 1]
    assert pairs.index_S.tolist() == [[-1, -1, 0, 0, -1], [-1, 1, -1, -1, -1]]
    assert pairs.index_T.tolist() == [[-1, 0, -1, -1], [-1, 1, 1, -1]]


def _hand_aligned(p_S, p_T, shared, span_S=None, span_T=None, w=(1.0, 1.0, 1.0)):
    """The aligned-KD value of one row written out with Python floats."""
    ids_S, ids_T = shared
    a_S, a_T = [p_S[i] for i in ids_S], [p_T[j] for j in ids_T]
    rest_S, rest_T = 1 - sum(a_S), 1 - sum(a_T)
    kl = sum(t * math.log(t / s) for s, t in zip(a_S, a_T)) + rest_T * math.log(rest_T / rest_S)
    r_S = sorted((p for i, p in enumerate(p_S) if i not in ids_S), reverse=True)
    r_T = sorted((p for j, p in enumerate(p_T) if j not in ids_T), reverse=True)
    width = max(len(r_S), len(r_T))
    r_S, r_T = r_S + [0.0] * (width - len(r_S)), r_T + [0.0] * (width - len(r_T))
    rest = sum(abs(a - b) for a, b in zip(r_S, r_T))
    span = 0.0
    if span_S is not None:
        q, p = math.exp(span_S), math.exp(span_T)
        span = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    return w[0] * kl + w[1] * rest + w[2] * span


def test_aligned_kd_by_hand():
    # student vocabulary [a, b, c], teacher [b, a, d, e]: a = S0 = T1, b = S1 = T0
    p_S, p_T = [0.5, 0.3, 0.2], [0.2, 0.4, 0.3, 0.1]
    shared = ([0, 1], [1, 0])
    ids = [torch.tensor(x) for x in shared]
    # shared KL: .4 ln(.4/.5) + .2 ln(.2/.3) + rest .4 ln(.4/.2); rest ULD: [.2] vs [.3 .1] -> .1 + .1
    kl = 0.4 * math.log(0.4 / 0.5) + 0.2 * math.log(0.2 / 0.3) + 0.4 * math.log(0.4 / 0.2)
    value = aligned_kd(_logits(p_S), _logits(p_T), shared_S=ids[0], shared_T=ids[1])
    assert float(value) == pytest.approx(kl + 0.2)
    assert float(value) == pytest.approx(_hand_aligned(p_S, p_T, shared))
    # span term: p_T(span) = .3, p_S(span) = .1; weights as configured
    got = aligned_kd(_logits(p_S), _logits(p_T), shared_S=ids[0], shared_T=ids[1],
                     span_logp_S=torch.tensor([math.log(0.1)]), span_logp_T=torch.tensor([math.log(0.3)]),
                     shared_weight=2.0, uld_weight=0.5, span_weight=3.0)
    span = 0.3 * math.log(3) + 0.7 * math.log(0.7 / 0.9)
    assert float(got) == pytest.approx(2 * kl + 0.5 * 0.2 + 3 * span)
    assert float(got) == pytest.approx(_hand_aligned(p_S, p_T, shared, math.log(0.1), math.log(0.3), (2, 0.5, 3)))
    assert losses.get("aligned_kd") is aligned_kd


def test_aligned_kd_is_zero_for_equal_distributions_and_masks_rows():
    p = [0.1, 0.6, 0.3]
    ids = torch.tensor([0, 1, 2])
    same = aligned_kd(_logits(p), _logits(p), shared_S=ids, shared_T=ids,
                      span_logp_S=torch.tensor([-1.0]), span_logp_T=torch.tensor([-1.0]))
    assert float(same) == pytest.approx(0.0, abs=1e-9)
    s = _logits([0.5, 0.3, 0.2], [0.2, 0.2, 0.6])
    t = _logits([0.2, 0.4, 0.3, 0.1], [0.25, 0.25, 0.25, 0.25])
    shared = (torch.tensor([0, 1]), torch.tensor([1, 0]))
    first = _hand_aligned([0.5, 0.3, 0.2], [0.2, 0.4, 0.3, 0.1], ([0, 1], [1, 0]))
    second = _hand_aligned([0.2, 0.2, 0.6], [0.25] * 4, ([0, 1], [1, 0]))
    assert float(aligned_kd(s, t, shared_S=shared[0], shared_T=shared[1])) == pytest.approx((first + second) / 2)
    masked = aligned_kd(s, t, shared_S=shared[0], shared_T=shared[1], mask=torch.tensor([False, True]),
                        reduction="sum")
    assert float(masked) == pytest.approx(second)


def test_aligned_kd_gradient_reaches_the_student_only_and_errors_name_the_fix():
    s = _logits([0.5, 0.3, 0.2]).requires_grad_()
    t = _logits([0.2, 0.4, 0.3, 0.1])
    aligned_kd(s, t, shared_S=torch.tensor([0, 1]), shared_T=torch.tensor([1, 0])).backward()
    assert s.grad is not None and float(s.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="CrossTokenizerLMCollator"):
        aligned_kd(s, t)
