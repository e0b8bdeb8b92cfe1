"""Every size read from a file is checked against what the file can hold before anything is allocated, and
every failure is a named ScoreError: huge tables, huge records, zstd bombs, deep manifests, dangling links,
unreadable shards."""
import os
import struct
import tracemalloc

import h5py
import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.cli import main
from score_codec.errors import CorruptRecordError, SizeLimitError, StoreError, UnreadableFileError
from score_codec.store.aug_chunks import MAX_CHUNK_ROWS
from score_codec.store.layout import IMAGE_INDEX_DTYPE
from score_codec.store.meta import AUG_CHUNK_DTYPE
from score_codec.store.record import FLAG_ZSTD, HEADER, MAGIC, pack_record, unpack_record

from tests.common import downgrade, edit_toc, make_meta, reseal, teacher_like_logits

#: no check below may allocate more than this on its way to the error
PEAK_BYTES = 64 * 2**20


def _store(tmp_path, name="s.store", **kw):
    path = tmp_path / name
    sc.encode(teacher_like_logits(8, 4, 10, seed=3), path, method="svd", rank=2, meta=make_meta(8, 4), **kw)
    return path


def _bounded(fn, error):
    """``fn()`` raises ``error`` without allocating more than PEAK_BYTES on the way."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak {peak} bytes"
    return info.value


def _replace(path, name, **create):
    with h5py.File(path, "r+") as f:
        del f[name]
        f.create_dataset(name, **create)


def _claim_rows(n, name, itemsize):
    def edit(toc):
        toc["datasets"][name].update(shape=[n], bytes=n * itemsize)
    return edit


@pytest.mark.parametrize("single", [False, True])
def test_an_index_table_claiming_1e12_rows_is_refused(tmp_path, single):
    path = _store(tmp_path, "s.h5" if single else "s.store")
    index = path if single else path / "index.h5"
    edit_toc(index, _claim_rows(10**12, "images", IMAGE_INDEX_DTYPE.itemsize))
    reseal(path, rebuild=False)
    err = _bounded(lambda: sc.LabelStore(path), SizeLimitError)
    assert "/images" in str(err) and "can hold" in str(err)


@pytest.mark.parametrize("single", [False, True])
def test_an_unchecked_index_table_claiming_1e12_rows_is_refused(tmp_path, single):
    path = _store(tmp_path, "s.h5" if single else "s.store")
    downgrade(path)
    index = path if single else path / "index.h5"
    # HDF5 allocates chunks lazily: a 10^12-row table costs the file a few bytes
    _replace(index, "images", shape=(10**12,), dtype=IMAGE_INDEX_DTYPE, chunks=(1024,))
    reseal(path)
    err = _bounded(lambda: sc.LabelStore(path, allow_unchecked=True), SizeLimitError)
    assert "/images" in str(err) and "can hold" in str(err)


def test_an_aug_chunk_table_claiming_5e7_chunks_is_refused(tmp_path):
    path = _store(tmp_path)
    edit_toc(path / "index.h5", _claim_rows(5 * 10**7, "aug/row_chunks", AUG_CHUNK_DTYPE.itemsize))
    reseal(path, rebuild=False)
    store = sc.LabelStore(path)
    err = _bounded(lambda: store.aug, SizeLimitError)
    assert "/aug/row_chunks" in str(err) and "can hold" in str(err)
    assert any("/aug/row_chunks" in p for p in store.verify())


def _forge_chunks(path, change):
    """Rewrite the chunk table of a directory store's index as ``change(table)`` leaves it (checksums
    resealed: the reader is told exactly what the forged table says)."""
    index = path / "index.h5"
    with h5py.File(index, "r") as f:
        table = f["aug/row_chunks"][()]
    change(table)
    _replace(index, "aug/row_chunks", data=table)
    reseal(path)


@pytest.mark.parametrize("rows, error, words", [
    (2**31, SizeLimitError, "a chunk may hold"),          # one chunk past the per-chunk cap
    (MAX_CHUNK_ROWS, SizeLimitError, "inflate to"),       # ~47 MB claimed from a blob of a few hundred bytes
    (0, StoreError, "holds no rows"),
])
def test_a_forged_chunk_row_count_is_refused_before_inflating(tmp_path, rows, error, words):
    path = _store(tmp_path)
    _forge_chunks(path, lambda t: t.__setitem__("rows", rows))
    store = sc.LabelStore(path)
    err = _bounded(lambda: store.aug, error)
    assert "/aug/row_blob" in str(err) and words in str(err)


def test_a_chunk_outside_the_blob_and_a_wrong_row_count_are_named_errors(tmp_path):
    path = _store(tmp_path)
    _forge_chunks(path, lambda t: t.__setitem__("offset", 10**6))
    with pytest.raises(StoreError, match="inside the"):
        sc.LabelStore(path).aug
    path = _store(tmp_path, "b.store")
    _forge_chunks(path, lambda t: t.__setitem__("rows", t["rows"] - 1))   # the frame inflates to one row more
    with pytest.raises(CorruptRecordError, match="chunk 0"):
        sc.LabelStore(path).aug


def test_a_header_only_record_cannot_declare_a_huge_matrix():
    k, c = 65536, 32768
    buf = pack_record(torch.zeros(k, 0), torch.zeros(0, c), "fp16", zstd_level=0)
    assert len(buf) == HEADER.size
    err = _bounded(lambda: unpack_record(buf, where="record 0"), SizeLimitError)
    assert "record 0" in str(err) and "K=65536" in str(err)
    # an honest rank-0 record of an ordinary size still decodes
    small = unpack_record(pack_record(torch.zeros(300, 0), torch.zeros(0, 1000), "fp16", zstd_level=0))
    assert small.matrix().shape == (300, 1000) and float(small.matrix().abs().max()) == 0.0


def test_a_zstd_frame_declaring_gigabytes_is_refused_before_decompression():
    k = c = 16384
    rank = 16384
    raw_len = 4 * rank * (k + c)          # fp32 factors: 2 GiB
    # a zstd frame header (single segment, 8-byte content size) followed by 64 KB of junk
    frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", raw_len) + bytes(65536)
    head = HEADER.pack(MAGIC, k, c, rank, 0, FLAG_ZSTD, 0, -1, raw_len, len(frame))
    err = _bounded(lambda: unpack_record(head + frame, where="record 7"), SizeLimitError)
    assert "record 7" in str(err) and "zstd" in str(err)


def test_a_deeply_nested_manifest_is_a_named_error(tmp_path, capsys):
    path = _store(tmp_path)
    (path / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SizeLimitError, match="nested"):
        sc.LabelStore(path)
    assert main(["info", str(path)]) != 0
    err = capsys.readouterr().err
    assert "nested" in err and "Traceback" not in err


def test_a_dangling_link_inside_a_store_is_named_by_stats_and_info(tmp_path, capsys):
    path = _store(tmp_path)
    os.symlink(tmp_path / "gone", path / "extra.bin")
    store = sc.LabelStore(path)
    with pytest.raises(UnreadableFileError, match="extra.bin.*dangling"):
        store.stats()
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert "extra.bin" in err and "Traceback" not in err


def test_an_unreadable_shard_is_a_problem_in_verify(tmp_path, monkeypatch, capsys):
    path = _store(tmp_path)
    shard = str(path / "shards" / "shard-00000.h5")
    real_open = os.open

    def deny(file, *a, **kw):
        if os.fspath(file) == shard:
            raise PermissionError(13, "Permission denied", shard)
        return real_open(file, *a, **kw)

    monkeypatch.setattr(os, "open", deny)
    problems = sc.LabelStore(path).verify()
    assert problems and all("shard-00000.h5" in p and "Permission denied" in p for p in problems)
    assert main(["verify", str(path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_shard_without_read_permission_is_a_problem_in_verify(tmp_path):
    path = _store(tmp_path)
    shard = path / "shards" / "shard-00000.h5"
    os.chmod(shard, 0)
    try:
        problems = sc.LabelStore(path).verify()
    finally:
        os.chmod(shard, 0o644)
    assert problems and "shard-00000.h5" in problems[0]


def _one_chunk(frame: bytes, rows: int):
    import zlib

    from score_codec.store.aug_chunks import ChunkedRows

    table = np.array([(0, len(frame), rows, zlib.crc32(frame))], AUG_CHUNK_DTYPE)
    return ChunkedRows("blob", table, len(frame), lambda off, n: frame[off:off + n])


def test_a_chunk_frame_declaring_gigabytes_is_refused_before_decompression():
    # a frame header declaring 2 GiB of content: zstd would allocate it as declared
    frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 2**31) + bytes(65536)
    err = _bounded(lambda: _one_chunk(frame, 100).all(), CorruptRecordError)
    assert "chunk 0" in str(err) and "declares" in str(err)


def test_bytes_after_a_chunk_frame_are_refused():
    import zstandard

    from score_codec.store.aug_chunks import encode_rows

    rows = make_meta(8, 4).rows
    _, blob = encode_rows(rows)
    assert _one_chunk(blob, len(rows)).all().tobytes() == rows.tobytes()
    with pytest.raises(CorruptRecordError, match="follow the zstd frame"):
        _one_chunk(blob + zstandard.ZstdCompressor().compress(b"x"), len(rows)).all()
