"""The compressed augmentation row table (format version 4): any range of rows reads back bit-exactly from
any chunking, one epoch reads only the chunks that cover it, and real-looking metadata shrinks."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import score_codec as sc
from score_codec.store.aug_chunks import ChunkedRows, encode_rows
from score_codec.store.meta import ROW_DTYPE, AugMeta

from tests.common import make_meta, teacher_like_logits


def _reader(table, blob, reads=None):
    def read(off, n):
        if reads is not None:
            reads.append((off, n))
        return blob[off:off + n]
    return ChunkedRows("test", table, len(blob), read)


def _random_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, n * ROW_DTYPE.itemsize, dtype=np.uint8)   # any bit pattern, NaN coords too
    return raw.view(ROW_DTYPE).copy()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 700), chunk=st.integers(1, 300), seed=st.integers(0, 2**31), data=st.data())
def test_any_range_reads_back_bit_exactly(n, chunk, seed, data):
    rows = _random_rows(n, seed)
    table, blob = encode_rows(rows, chunk_rows=chunk)
    r = _reader(table, blob)
    assert len(r) == n and len(table) == -(-n // chunk)
    assert r.all().tobytes() == rows.tobytes()
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))
    assert r.rows(start, stop).tobytes() == rows[start:stop].tobytes()


def test_one_range_inflates_only_the_chunks_that_cover_it():
    rows = _random_rows(1000, 0)
    table, blob = encode_rows(rows, chunk_rows=100)
    reads = []
    got = _reader(table, blob, reads).rows(250, 420)
    assert got.tobytes() == rows[250:420].tobytes()
    assert [int(np.searchsorted(table["offset"], off)) for off, _ in reads] == [2, 3, 4]


def _crop_like_meta(n: int, k: int, seed: int = 0) -> AugMeta:
    """make_meta's tables with crop boxes as a random resized crop draws them on images of varied sizes:
    integer pixel boxes over each image's own height and width."""
    meta = make_meta(n, k, batch=64, seed=seed)
    rng = np.random.default_rng(seed)
    hw = rng.integers(200, 600, (n, 2))
    rows = meta.rows.copy()
    h, w = hw[rows["image"], 0], hw[rows["image"], 1]
    top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
    ch, cw = rng.integers(h // 4, h - top), rng.integers(w // 4, w - left)
    rows["coords"] = np.stack([top / h, left / w, ch / h, cw / w], 1).astype(np.float32)
    return AugMeta(rows=rows, batches=meta.batches, images=meta.images, attrs=meta.attrs)


def test_a_store_keeps_crop_like_metadata_in_under_half_its_table_bytes(tmp_path):
    n, k = 256, 40
    meta = _crop_like_meta(n, k)
    path = tmp_path / "s.store"
    sc.encode(teacher_like_logits(n, k, 10, seed=1), path, method="svd", rank=2, meta=meta)
    store = sc.LabelStore(path)
    assert store.aug.rows.tobytes() == meta.rows.tobytes()
    for e in (0, 17, k - 1):
        rows, offset = store.aug_reader.epoch_rows(e)
        assert rows.tobytes() == meta.rows[meta.rows["epoch"] == e].tobytes() and offset == e * n
    stats = store.stats()
    assert stats["meta_rows"] == n * k
    table_bytes = meta.rows.nbytes + meta.batches.nbytes + meta.images.nbytes
    assert stats["meta_bytes"] < 0.5 * table_bytes, (stats["meta_bytes"], table_bytes)


@pytest.mark.parametrize("chunk", [0, 2**20 + 1])
def test_a_writer_refuses_a_chunk_size_no_reader_accepts(chunk):
    with pytest.raises(ValueError, match="chunk_rows"):
        encode_rows(_random_rows(4, 0), chunk_rows=chunk)
