"""Record serialisation: exact round trips and validation of damaged bytes."""
import struct

import pytest
import torch
from hypothesis import given, settings, strategies as st

from score_codec.errors import CorruptRecordError
from score_codec.codecs.quantize import QUANT_CODES, dequantize, quantize, roundtrip
from score_codec.store.record import FLAG_ONE_SCALE, HEADER, pack_record, unpack_record


def _parts(k=12, c=9, r=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b, mean = torch.randn(k, r, generator=g), torch.randn(r, c, generator=g), torch.randn(k, generator=g)
    res = torch.zeros(k, c)
    mask = torch.rand(k, c, generator=g) < 0.2
    res[mask] = torch.randn(int(mask.sum()), generator=g).half().float()
    return a, b, mean, res


@pytest.mark.parametrize("quant", list(QUANT_CODES))
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("zstd_level", [0, 3])
@pytest.mark.parametrize("shared", [False, True])
def test_pack_unpack_is_exact_after_quantisation(quant, shuffle, zstd_level, shared):
    a, b, mean, res = _parts()
    buf = pack_record(a, None if shared else b, quant, mean=mean, residual=res, basis=2 if shared else -1,
                      zstd_level=zstd_level, shuffle=shuffle, c=9)
    rec = unpack_record(buf)
    bq = roundtrip(b, quant)
    want = roundtrip(a.T, quant).T @ bq + mean[:, None] + res
    assert torch.equal(rec.matrix(bq if shared else None), want)
    assert rec.basis == (2 if shared else -1) and rec.res_vals.numel() == int((res != 0).sum())


@pytest.mark.parametrize("quant", list(QUANT_CODES))
def test_quantize_matches_its_torch_roundtrip(quant):
    x = torch.randn(6, 33) * 10
    got, n = dequantize(memoryview(quantize(x, quant)), quant, 6, 33)
    assert torch.equal(got, roundtrip(x, quant)) and n == len(quantize(x, quant))


def test_int8_error_is_at_most_half_a_step():
    x = torch.randn(5, 50)
    step = x.abs().amax(-1, keepdim=True) / 127
    assert ((roundtrip(x, "int8") - x).abs() <= step / 2 + 1e-7).all()


@pytest.mark.parametrize("c,itemsize", [(255, 1), (256, 2), (70000, 4)])
def test_residual_index_width_follows_the_class_count(c, itemsize):
    res = torch.zeros(2, c)
    res[0, c - 1] = 1.5
    res[1, 3] = -2.0
    buf = pack_record(torch.zeros(2, 0), torch.zeros(0, c), "fp16", residual=res, zstd_level=0)
    assert len(buf) == HEADER.size + itemsize * (2 + 2) + 2 * 2
    rec = unpack_record(buf)
    assert rec.res_cols.tolist() == [c - 1, 3] and rec.res_vals.tolist() == [1.5, -2.0]


def test_wide_class_counts_use_32_bit_indices():
    c = 70000
    res = torch.zeros(2, c)
    res[0, 69999] = 1.5
    res[1, 3] = -2.0
    rec = unpack_record(pack_record(torch.zeros(2, 0), torch.zeros(0, c), "fp16", residual=res))
    assert rec.res_cols.tolist() == [69999, 3] and rec.res_vals.tolist() == [1.5, -2.0]


def test_header_fields_are_validated():
    a, b, mean, res = _parts()
    buf = bytearray(pack_record(a, b, "fp16", residual=res))
    with pytest.raises(CorruptRecordError, match="magic"):
        unpack_record(b"XXXX" + bytes(buf[4:]))
    with pytest.raises(CorruptRecordError, match="shorter"):
        unpack_record(bytes(buf[:10]))
    with pytest.raises(CorruptRecordError, match="body"):
        unpack_record(bytes(buf[:-1]))
    bad = bytearray(buf)
    struct.pack_into("<H", bad, 12, 200)  # rank > min(K, C)
    with pytest.raises(CorruptRecordError, match="out of range"):
        unpack_record(bytes(bad))


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0, 3e38])
def test_int8_scales_no_writer_produces_are_refused(scale, raw):
    a, b, mean, res = _parts()
    buf = bytearray(pack_record(a, b, "int8", zstd_level=0, shuffle=False))   # body stored as is
    struct.pack_into("<f", buf, HEADER.size, scale)        # the first row scale of A's block
    with pytest.raises(CorruptRecordError, match="row scale of"):
        unpack_record(bytes(buf), raw=raw)


@pytest.mark.parametrize("shuffle,zstd_level", [(False, 0), (True, 3)])
def test_one_scale_records_hold_one_scale_and_decode_to_their_rounding(shuffle, zstd_level):
    """ONE_SCALE: 4 bytes of scale per record instead of 4 r; the decoded coefficients are the int8 rounding
    with one step for the whole (r, K) block, within half that step of the coefficients."""
    a = torch.randn(12, 5, generator=torch.Generator().manual_seed(3)) * torch.tensor([3.0, 1.0, 0.5, 0.2, 0.1])
    one = pack_record(a, None, "int8", basis=0, zstd_level=0, c=9, one_scale=True)
    per = pack_record(a, None, "int8", basis=0, zstd_level=0, c=9)
    assert len(per) - len(one) == 4 * (5 - 1) and HEADER.unpack_from(one)[5] & FLAG_ONE_SCALE
    rec = unpack_record(pack_record(a, None, "int8", basis=0, zstd_level=zstd_level, shuffle=shuffle, c=9, one_scale=True))
    step = a.abs().max() / 127
    assert torch.equal(rec.a, roundtrip(a, "int8", one_scale=True))
    assert (rec.a - a).abs().max() <= step / 2 + 1e-6
    raw = unpack_record(one, raw=True)
    assert raw.a.dtype == torch.int8 and raw.a_scale.shape == (5,) and (raw.a_scale == raw.a_scale[0]).all()
    assert torch.equal(raw.dequantized().a, rec.a)


def test_one_scale_applies_to_int8_shared_records_only():
    from score_codec.errors import CodecError

    a, b, _, _ = _parts()
    with pytest.raises(CodecError, match="shared-basis"):
        pack_record(a, b, "int8", one_scale=True)
    # other quantisations have no scales: the flag is not written
    assert not HEADER.unpack_from(pack_record(a, None, "fp16", basis=0, c=9, one_scale=True))[5] & FLAG_ONE_SCALE
    for quant, shared in (("fp16", True), ("int8", False)):
        buf = bytearray(pack_record(a, None if shared else b, quant, basis=0 if shared else -1, c=9, zstd_level=0))
        buf[15] |= FLAG_ONE_SCALE
        with pytest.raises(CorruptRecordError, match="one-scale flag"):
            unpack_record(bytes(buf))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300), st.integers(0, 400), st.integers(0, 255), st.booleans())
def test_fuzzed_records_raise_only_corrupt_record_error(tail, pos, val, one_scale):
    a, b, mean, res = _parts(seed=1)
    buf = bytearray(pack_record(a, None if one_scale else b, "int8", mean=mean, residual=res, zstd_level=3,
                                basis=0 if one_scale else -1, c=9, one_scale=one_scale))
    if pos < len(buf):
        buf[pos] = val
    for candidate in (bytes(buf), bytes(buf[: pos % (len(buf) + 1)]) + tail, HEADER.pack(b"SLR1", 3, 4, 1, 1, 0, 0, -1, 14, 14) + tail):
        try:
            unpack_record(candidate)
        except CorruptRecordError:
            pass


@pytest.mark.parametrize("quant", ["fp32", "fp16", "bf16", "int8"])
@pytest.mark.parametrize("with_mean", [False, True])
@pytest.mark.parametrize("shuffle,zstd_level", [(False, 0), (False, 3), (True, 3)])
def test_batched_coefficient_records_are_the_per_image_records(quant, with_mean, shuffle, zstd_level):
    """pack_coefficient_records quantises a batch at once; each record is byte for byte pack_record's."""
    from score_codec.store.record import pack_coefficient_records

    g = torch.Generator().manual_seed(7)
    a = torch.randn(5, 6, 3, generator=g) * torch.tensor([1.0, 30.0, 1e-3])
    a[2, :, 1] = 0.0                                   # a zero component: int8 scale 0
    means = torch.randn(5, 6, generator=g) if with_mean else None
    got = pack_coefficient_records(a, quant, c=10, means=means, basis=0, zstd_level=zstd_level, shuffle=shuffle)
    want = [pack_record(a[i], None, quant, mean=None if means is None else means[i], basis=0,
                        zstd_level=zstd_level, shuffle=shuffle, c=10) for i in range(5)]
    assert got == want
    rec = unpack_record(got[3])
    assert rec.k == 6 and rec.rank == 3 and rec.basis == 0


def test_one_scale_records_are_refused_in_stores_before_version_5(tmp_path):
    """The flag exists from format version 5: a store that says it is older and holds such a record is damaged."""
    import score_codec as sc
    from score_codec.errors import CorruptRecordError as Corrupt
    from tests.common import teacher_like_logits

    sc.encode(teacher_like_logits(4, 3, 12, seed=2), str(tmp_path / "s"), rank=3, progress=False)
    store = sc.LabelStore(str(tmp_path / "s"))
    assert HEADER.unpack_from(store.record_bytes(0))[5] & FLAG_ONE_SCALE and store.record(0).rank == 3
    store.manifest["format_version"] = 4
    with pytest.raises(Corrupt, match="one-scale flag.*format version 4"):
        store.record(0)
