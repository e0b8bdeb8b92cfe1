"""Codec properties: registry, exact full-rank round trips, monotone error, RPCA recovery."""
import pytest
import torch

from score_codec.codecs import codec_from_config, get_codec, registered_codecs
from score_codec.codecs.rpca import rpca
from score_codec.errors import CodecError, UnknownCodecError

from tests.common import assert_close_rel, planted_low_rank_sparse, teacher_like_logits

METHODS = ["svd", "rsvd", "cur", "rpca", "shared"]


def test_every_method_is_registered():
    assert set(METHODS) <= set(registered_codecs())


@pytest.mark.parametrize("method", METHODS)
def test_config_round_trip(method):
    codec = get_codec(method)
    again = codec_from_config(codec.get_config())
    assert type(again) is type(codec) and again.get_config() == codec.get_config()


def test_unknown_codec_names_the_choices():
    with pytest.raises(UnknownCodecError, match="svd"):
        get_codec("wavelet")


@pytest.mark.parametrize("method", METHODS)
def test_full_rank_is_exact(method):
    y = teacher_like_logits(5, 30, 12, seed=1).double()
    f = get_codec(method).encode(y, torch.full((5,), 12))
    assert_close_rel(torch.bmm(f.a, f.b), y, 1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_error_never_grows_with_rank(method):
    y = teacher_like_logits(4, 40, 10, rank=5, seed=2).double()
    codec = get_codec(method)
    errs = []
    for r in range(11):
        f = codec.encode(y, torch.full((4,), r))
        errs.append(torch.linalg.matrix_norm(torch.bmm(f.a, f.b) - y))
    errs = torch.stack(errs)  # (ranks, images)
    assert (errs[1:] <= errs[:-1] * (1 + 1e-9) + 1e-9).all(), errs


@pytest.mark.parametrize("method", ["svd", "rsvd"])
def test_svd_recovers_exact_rank(method):
    y = teacher_like_logits(3, 50, 20, rank=3, seed=3).double()
    y = y - y.mean(1, keepdim=True)  # drop the per-image base row: rank exactly 3 (+ noise)
    f = get_codec(method).encode(y, torch.full((3,), 3))
    rel = torch.linalg.matrix_norm(torch.bmm(f.a, f.b) - y) / torch.linalg.matrix_norm(y)
    assert (rel < 0.02).all()


def test_rpca_recovers_planted_low_rank_and_support():
    low, sparse, mask = planted_low_rank_sparse(3, 80, 60, rank=3, density=0.05, seed=0)
    l_hat, s_hat, iters = rpca(low + sparse, tol=1e-7)
    rel = torch.linalg.matrix_norm(l_hat - low) / torch.linalg.matrix_norm(low)
    assert (rel < 1e-4).all(), rel
    assert torch.linalg.matrix_rank(l_hat, rtol=1e-6).tolist() == [3, 3, 3]
    assert torch.equal(s_hat.abs() > 1e-3, mask)
    assert (iters < 100).all()


def test_ranks_outside_range_are_refused():
    with pytest.raises(CodecError, match="ranks"):
        get_codec("svd").encode(torch.randn(2, 5, 4), torch.tensor([1, 5]))


def test_rsvd_is_deterministic_and_leaves_global_rng_alone():
    y = teacher_like_logits(3, 40, 16, seed=4)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    f1 = get_codec("rsvd").encode(y, torch.full((3,), 4))
    after = torch.rand(1)
    f2 = get_codec("rsvd").encode(y, torch.full((3,), 4))
    assert torch.equal(f1.a, f2.a) and torch.equal(before, after)
