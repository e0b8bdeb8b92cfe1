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


def test_to_float32_widens_every_input_and_copies_only_what_it_must():
    import numpy as np
    import torch

    from score_codec.codecs.base import to_float32

    h = (np.random.default_rng(0).standard_normal((5, 7)) * 9).astype(np.float16)
    want = torch.from_numpy(h.astype(np.float32))              # float16 -> float32 is exact
    for x in (h, h[:, ::-1][:, ::-1], np.asfortranarray(h), torch.from_numpy(h)):
        got = to_float32(x)
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(to_float32(h[:, ::-1]), want.flip(1))   # negative strides
    f = h.astype(np.float32)
    assert to_float32(f).data_ptr() == f.ctypes.data           # nothing to convert: shared
    f.setflags(write=False)
    ro = to_float32(f)
    assert torch.equal(ro, want) and ro.data_ptr() != f.ctypes.data   # read-only input: copied, not aliased


def test_to_float32_keeps_the_device_unless_told_and_reads_any_byte_order():
    import numpy as np
    import torch

    from score_codec.codecs.base import to_float32

    big = np.arange(6, dtype=">f4").reshape(2, 3)
    assert torch.equal(to_float32(big), torch.arange(6.0).reshape(2, 3))
    t = torch.arange(4, dtype=torch.float16)
    assert to_float32(t).device == t.device and to_float32(t, "cpu").dtype == torch.float32
