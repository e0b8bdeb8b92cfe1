"""all_finite: the fast finiteness test used by every input check."""
import torch



def test_all_finite_is_exact_also_when_the_sum_overflows():
    from score_codec.codecs.base import all_finite

    x = torch.randn(64, 50)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[17, 3] = bad
        assert not all_finite(y) and not all_finite(y.half()) and not all_finite(y.double())
    big = torch.full((4, 4), 3e38)              # finite values whose float32 sum is inf
    assert all_finite(big)
    big[1, 1] = float("nan")
    assert not all_finite(big)
    assert all_finite(torch.full((1000, 100), 60000.0).half())     # an fp16 sum would overflow
    both = torch.tensor([float("inf"), -float("inf")])            # the sum is NaN, never finite
    assert not all_finite(both)
