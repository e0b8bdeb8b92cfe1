"""encode_dump with the global codec reads every dump file once: rows parked in a scratch file beside the
store, the basis fitted on files spread over it, the scratch coded and then removed."""
from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch

import score_codec as sc
import score_codec.formats.convert as convert
from score_codec.formats import read_dump, scan_dump
from score_codec.formats.contents import ScratchRows
from score_codec.formats.sre2l import epoch_layout
from score_codec.store.allocate import kl_t1
from score_codec.store.rowwise import encode_rows
from tests import dumpgen

IPC, EPOCHS, BATCH = 8, 6, 8          # 80 images, 10 files per epoch, 60 files of 8 rows
FIT_ROWS = 40                          # a sample of some files, not all of them
GLOBAL = dict(method="global", rank=4, quant="int8", codec_config={"fit_rows": FIT_ROWS})


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("one_pass") / "sre2l")
    dumpgen.make_epoch_dump(root, ipc=IPC, epochs=EPOCHS, batch_size=BATCH, mix="cutmix")
    return root


def _decoded(path) -> torch.Tensor:
    st = sc.LabelStore(str(path))
    return torch.stack([st.matrix(i) for i in range(len(st))])


def _source(dump) -> torch.Tensor:
    with read_dump(dump) as c:
        return torch.stack([torch.as_tensor(c.matrix(i)) for i in range(c.num_images)])


def _two_pass(dump, dst) -> None:
    """The encode before the one-pass path: a scan for metadata and the basis sample, then a second read of
    every file coded as it streams."""
    scan = scan_dump(dump, sample_rows=FIT_ROWS)
    rows = scan.aug.rows
    with sc.StoreWriter(dst, scan.num_classes, **GLOBAL) as w:
        encode_rows(w, scan.logits(), rows["image"].astype(np.int64), rows["aug"].astype(np.int64), scan.ks,
                    scan.labels, fit_on=scan.sample)
        w.set_meta(scan.aug)


def test_the_basis_sample_is_the_two_pass_scan_sample(dump):
    scan = scan_dump(dump, sample_rows=FIT_ROWS)
    with read_dump(dump) as c:
        sample = c.spread_sample(FIT_ROWS)
        assert 1 < len(sample) < len(c.file_rows)              # some files, spread: not all of them
        assert len(sample) == len(scan.sample)
        for a, b in zip(sample, scan.sample):
            assert np.array_equal(np.asarray(a), b)


def test_one_pass_writes_the_two_pass_store(dump, tmp_path):
    one, two = tmp_path / "one.store", tmp_path / "two.store"
    sc.encode_dump(dump, one, **GLOBAL)
    _two_pass(dump, two)
    a, b = sc.LabelStore(str(one)), sc.LabelStore(str(two))
    assert np.array_equal(a.ks, b.ks) and np.array_equal(a.aug.rows, b.aug.rows)
    ya, yb = _decoded(one), _decoded(two)
    assert torch.allclose(ya, yb, rtol=1e-3, atol=1e-3 * float(yb.abs().max()))
    src = _source(dump)
    c = src.shape[-1]
    src = src - src.mean(-1, keepdim=True)
    kl_one, kl_two = kl_t1(src.reshape(-1, c), ya.reshape(-1, c)), kl_t1(src.reshape(-1, c), yb.reshape(-1, c))
    assert kl_one == pytest.approx(kl_two, rel=0.02)


@pytest.mark.parametrize("kw", [GLOBAL, dict(method="global", ratio=1.5, quant="int8", pool=False),
                                dict(GLOBAL, keep_epochs=3)])
def test_each_batch_file_is_read_once(dump, tmp_path, monkeypatch, kw):
    reads, maps = collections.Counter(), collections.Counter()
    load = torch.load

    def counting(f, *a, **k):
        (maps if k.get("mmap") else reads)[os.path.abspath(os.fspath(f))] += 1
        return load(f, *a, **k)

    monkeypatch.setattr(torch, "load", counting)
    sc.encode_dump(dump, tmp_path / "s.store", **kw)
    files = [os.path.abspath(f) for _, fs in epoch_layout(dump) for f in fs]
    assert reads == collections.Counter(files)             # every file's tensors read exactly once
    # the layout peeks (family detection, batch size) map the first and last file of epoch 0 without reading
    # their tensors
    assert set(maps) <= {files[0], files[len(files) // EPOCHS - 1]} and sum(maps.values()) <= 3


def test_rows_are_coded_from_a_scratch_file_beside_the_store_and_removed(dump, tmp_path, monkeypatch):
    seen = {}

    def spy(w, rows, *a, **k):
        seen["rows"] = rows
        seen["files"] = sorted(os.listdir(tmp_path))
        seen["some"] = rows[5:77]
        return encode_rows(w, rows, *a, **k)

    monkeypatch.setattr(convert, "encode_rows", spy)
    sc.encode_dump(dump, tmp_path / "s.store", **GLOBAL)
    rows = seen["rows"]
    # memory stays bounded: the rows are read from a file on the store's disk, a slice at a time
    assert isinstance(rows, ScratchRows) and os.path.dirname(os.path.dirname(rows.filename)) == str(tmp_path)
    assert rows.dtype == np.float16 and rows.shape == (IPC * 10 * EPOCHS, 10)
    with read_dump(dump) as c:
        assert np.array_equal(seen["some"], c.row_logits[5:77])
    assert any(f.startswith(".score-scratch-") for f in seen["files"])
    assert sorted(os.listdir(tmp_path)) == ["s.store"]


def test_a_failed_encode_removes_the_scratch_and_the_store(dump, tmp_path, monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(convert, "encode_rows", fail)
    with pytest.raises(RuntimeError, match="disk gone"):
        sc.encode_dump(dump, tmp_path / "s.store", **GLOBAL)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_global_encode_resumes(dump, tmp_path, monkeypatch):
    ref, dst = tmp_path / "ref.store", tmp_path / "dst.store"
    sc.encode_dump(dump, ref, shard_bytes=600, **GLOBAL)
    calls = {"n": 0}
    append = sc.StoreWriter.append_encoded

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return append(self, *a, **k)

    # records go out 16 images at a time; the third batch of records never arrives
    monkeypatch.setattr(convert, "encode_rows", lambda *a, **k: encode_rows(*a, images_per_record_chunk=16, **k))
    monkeypatch.setattr(sc.StoreWriter, "append_encoded", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sc.encode_dump(dump, dst, shard_bytes=600, **GLOBAL)
    monkeypatch.undo()
    assert os.path.isdir(f"{dst}.partial")
    assert sorted(os.listdir(tmp_path)) == ["dst.store.partial", "ref.store"]    # no scratch left behind
    st = sc.encode_dump(dump, dst, shard_bytes=600, resume=True, **GLOBAL)
    assert st["images"] == IPC * 10 and not os.path.exists(f"{dst}.partial")
    ya, yb = _decoded(dst), _decoded(ref)
    assert torch.allclose(ya, yb, rtol=1e-3, atol=1e-3 * float(yb.abs().max()))
    assert sorted(os.listdir(tmp_path)) == ["dst.store", "ref.store"]


def test_scratch_rows_reads_slices_and_runs_of_rows(tmp_path):
    a = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float16)
    a.tofile(tmp_path / "x.bin")
    rows = ScratchRows(np.memmap(tmp_path / "x.bin", dtype=np.float16, mode="r", shape=a.shape))
    assert rows.shape == a.shape and len(rows) == 1000
    for key in (slice(3, 17), slice(990, 2000), slice(5, 5), slice(None)):
        assert np.array_equal(rows[key], a[key])
    pick = np.sort(np.random.default_rng(1).choice(1000, 300, replace=False))
    for idx in (np.arange(10, 20), np.array([5, 6, 7, 100, 101, 3, 999]), np.zeros(0, np.int64), pick):
        assert np.array_equal(rows[idx], a[idx])
    with pytest.raises(IndexError):
        rows[np.array([3, 1000])]
