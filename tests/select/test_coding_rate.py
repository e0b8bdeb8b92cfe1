"""Coding rates match their textbook definitions (MCR^2, SCORE Eq. 4), in float64."""
import math

import pytest
import torch

from score_codec.errors import InputError
from score_select import residual_label_coding_rate, select
from score_select.coding_rate import class_coding_rate, coding_rate, label_coding_rate, logdet_gram, objective

D64 = torch.float64


def _direct(Z, a):
    d = Z.shape[1]
    return torch.logdet(torch.eye(d, dtype=D64) + a * Z.T @ Z).item()


@pytest.mark.parametrize("m,d", [(3, 9), (9, 3), (7, 7), (1, 5)])
def test_logdet_gram_equals_direct_logdet_on_either_side(m, d):
    Z = torch.randn(m, d, dtype=D64)
    assert logdet_gram(Z, 0.7).item() == pytest.approx(_direct(Z, 0.7), rel=1e-12)


def test_logdet_gram_is_batched():
    Z = torch.randn(4, 5, 3, dtype=D64)
    out = logdet_gram(Z, 2.0)
    assert out.shape == (4,)
    for i in range(4):
        assert out[i].item() == pytest.approx(_direct(Z[i], 2.0), rel=1e-12)


def test_coding_rate_uses_the_given_budget_in_the_scale():
    Z = torch.randn(6, 4, dtype=D64)
    assert coding_rate(Z, 0.5, n=20).item() == pytest.approx(0.5 * _direct(Z, 4 / (20 * 0.5)), rel=1e-12)
    assert coding_rate(Z, 0.5).item() == pytest.approx(0.5 * _direct(Z, 4 / (6 * 0.5)), rel=1e-12)


def test_class_coding_rate_weights_each_class_by_its_budget():
    Z = torch.randn(10, 4, dtype=D64)
    y = torch.tensor([0] * 4 + [1] * 6)
    n_c = [5, 7]
    want = sum(n_c[c] / (2 * 12) * _direct(Z[y == c], 4 / (n_c[c] * 0.5)) for c in range(2))
    assert class_coding_rate(Z, y, 0.5, n=12, n_c=n_c).item() == pytest.approx(want, rel=1e-12)


def test_label_coding_rate_is_the_centred_log_softmax_rate_per_image():
    Y = 3 * torch.randn(5, 4, 7, dtype=D64)
    T = 2.0
    got = label_coding_rate(Y, eps_sq=0.5, temperature=T, chunk_size=2)
    for i in range(5):
        yt = torch.log_softmax(Y[i] / T, -1)
        yt = yt - yt.mean(-1, keepdim=True)
        want = 0.5 * torch.logdet(torch.eye(7, dtype=D64) + 7 / (4 * 0.5) * yt.T @ yt).item()
        assert got[i].item() == pytest.approx(want, rel=1e-10)


def test_label_coding_rate_is_zero_for_a_constant_row_and_small_for_rank_one():
    flat = torch.zeros(1, 6, 5, dtype=D64)
    assert label_coding_rate(flat).item() == pytest.approx(0.0, abs=1e-14)
    rank1 = torch.randn(1, 1, 5, dtype=D64).expand(1, 6, 5).clone()
    noisy = rank1 + torch.randn(1, 6, 5, dtype=D64)
    assert label_coding_rate(rank1).item() < label_coding_rate(noisy).item()


def test_label_coding_rate_rejects_bad_input():
    with pytest.raises(InputError):
        label_coding_rate(torch.randn(4, 5))
    with pytest.raises(InputError):
        label_coding_rate(torch.full((1, 2, 3), float("nan")))


def test_objective_combines_the_three_terms():
    Z = torch.randn(6, 4, dtype=D64)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    r = torch.rand(6, dtype=D64)
    want = (coding_rate(Z, 0.5, 6) - 2.0 * class_coding_rate(Z, y, 0.5, n=6, n_c=[3, 3]) - 0.3 * r.sum()).item()
    assert objective(Z, y, alpha=2.0, beta=0.3, n=6, n_c=[3, 3], label_rates=r).item() == pytest.approx(want)
    assert math.isfinite(want)


def test_residual_label_rate_is_zero_inside_the_store_basis_and_singles_out_an_image_outside_it():
    """Centred log-probabilities are centred logits / T, so logits in a 3-direction span (plus any per-row
    constant) leave nothing outside a rank-3 store basis; an image with rows off that span has the top rate."""

    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 20, generator=g, dtype=torch.float64)
    y = torch.randn(30, 8, 3, generator=g, dtype=torch.float64) @ w * 3 + torch.randn(30, 8, 1, generator=g, dtype=torch.float64)
    inside = residual_label_coding_rate(y, rank=3, temperature=4.0)
    assert inside.shape == (30,) and float(inside.abs().max()) < 1e-8
    assert float(label_coding_rate(y, temperature=4.0).min()) > 0.1     # the paper's term sees each image's rank
    y[5] += torch.randn(8, 20, generator=g, dtype=torch.float64) * 2
    off = residual_label_coding_rate(y, rank=3, temperature=4.0)
    assert int(off.argmax()) == 5 and float(off[5]) > 10 * float(off[torch.arange(30) != 5].max())
    with pytest.raises(InputError):
        residual_label_coding_rate(y, rank=-1)


def test_select_with_the_residual_label_rate_changes_the_beta_term_only():
    """label_rate="residual" replaces R(Y_x) by the store-basis residual rate; beta = 0 ignores either."""
    g = torch.Generator().manual_seed(1)
    feats, labels = torch.randn(60, 8, generator=g), torch.arange(60) % 3
    soft = torch.randn(60, 4, 12, generator=g)
    a, _ = select(feats, labels, 2, beta=0.0, soft_labels=soft)
    b, _ = select(feats, labels, 2, beta=0.0, soft_labels=soft, label_rate="residual")
    assert torch.equal(a, b)
    rates = residual_label_coding_rate(soft, rank=16)
    c, gc = select(feats, labels, 2, beta=5.0, soft_labels=soft, label_rate="residual")
    d, gd = select(feats, labels, 2, beta=5.0, label_rates=rates)
    assert torch.equal(c, d) and torch.allclose(gc, gd)
    with pytest.raises(InputError):
        select(feats, labels, 2, soft_labels=soft, label_rate="paper")


def test_the_default_label_rate_is_the_residual_and_the_papers_term_stays_an_option():
    g = torch.Generator().manual_seed(2)
    feats, labels = torch.randn(80, 8, generator=g), torch.arange(80) % 4
    soft = torch.randn(80, 4, 12, generator=g)
    soft[::3] += 4 * torch.randn(1, 1, 12, generator=g)   # a shared direction: residual and image rates differ
    dflt, gd = select(feats, labels, 3, beta=5.0, soft_labels=soft)
    res, gr = select(feats, labels, 3, beta=5.0, label_rates=residual_label_coding_rate(soft, rank=16))
    img, gi = select(feats, labels, 3, beta=5.0, label_rates=label_coding_rate(soft))
    assert torch.equal(dflt, res) and torch.allclose(gd, gr)
    assert torch.equal(select(feats, labels, 3, beta=5.0, soft_labels=soft, label_rate="image")[0], img)
    assert float(gi.sum()) != pytest.approx(float(gd.sum()))   # the two terms are different objectives
