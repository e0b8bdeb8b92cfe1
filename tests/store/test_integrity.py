"""Whole-file integrity members (docs/FORMAT.md section 2.1): damaged HDF5 files are refused before libhdf5
parses them, with the error that names the file and the expected versus found value."""
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import score_codec as sc
from score_codec.errors import CorruptRecordError, StoreError, TruncatedFileError
from score_codec.store.integrity import HDF5_SIGNATURE, PREFIX_MAGIC, USERBLOCK_BYTES

from tests.common import damage_file, make_meta, teacher_like_logits

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    y = teacher_like_logits(12, 6, 10, seed=41)
    sc.encode(y, root / "d.store", rank=3, residual=1, meta=make_meta(12, 6), labels=[i % 3 for i in range(12)],
              shard_bytes=300)
    sc.encode(y, root / "s.h5", method="shared", rank=3, labels=[i % 3 for i in range(12)])
    return root, y


def _copy(src, dst):
    shutil.copytree(src, dst) if os.path.isdir(src) else shutil.copy(src, dst)
    return dst


def test_manifest_describes_every_hdf5_file(stores):
    root, _ = stores
    m = json.loads((root / "d.store" / "manifest.json").read_text())
    assert m["index"]["bytes"] == os.path.getsize(root / "d.store" / "index.h5")
    assert len(m["shards"]) > 1
    for e in m["shards"]:
        fn = root / "d.store" / "shards" / e["name"]
        assert e["file_bytes"] == os.path.getsize(fn)
        with h5py.File(fn, "r") as f:     # the recorded offset is where HDF5 keeps the records
            assert e["data_offset"] == f["records"].id.get_offset()
            data = f["records"][()].tobytes()
        assert fn.read_bytes()[e["data_offset"]:e["data_offset"] + e["bytes"]] == data


def test_single_file_store_starts_with_the_prefix_and_stays_plain_hdf5(stores):
    root, y = stores
    head = (root / "s.h5").read_bytes()[:USERBLOCK_BYTES + 8]
    assert head[:8] == PREFIX_MAGIC and head[USERBLOCK_BYTES:USERBLOCK_BYTES + 8] == HDF5_SIGNATURE
    with h5py.File(root / "s.h5", "r") as f:    # any HDF5 reader skips the user block
        assert json.loads(f.attrs["manifest"])["num_images"] == 12
    assert sc.LabelStore(root / "s.h5").matrix(3).shape == y[3].shape


def test_the_index_damage_that_made_libhdf5_loop_is_refused(stores, tmp_path):
    # found by the fuzz test: 26 zero bytes at 11.9 % of index.h5 made h5py's attribute read spin forever;
    # run in a child so that a regression fails on the timeout instead of hanging the suite
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    damage_file(str(work / "index.h5"), 0.11890389478474583, "zero", 26)
    code = ("import score_codec as sc, sys\n"
            "try:\n    sc.LabelStore(sys.argv[1])\n"
            "except sc.CorruptRecordError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(work)], capture_output=True, text=True, timeout=120, cwd=HERE)
    assert "refused:" in out.stdout and "index.h5" in out.stdout and "crc32" in out.stdout, out.stderr


@pytest.mark.parametrize("mode,error,match", [
    ("flip", CorruptRecordError, "index file fails its crc32 check: expected"),
    ("truncate", TruncatedFileError, "index file is .* bytes, the manifest says"),
])
def test_damaged_index_file(stores, tmp_path, mode, error, match):
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    damage_file(str(work / "index.h5"), 0.5, mode, 4)
    with pytest.raises(error, match=match):
        sc.LabelStore(work)


def test_damaged_shard_structure_is_refused_before_hdf5_opens_it(stores, tmp_path):
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    shard = work / "shards" / "shard-00001.h5"
    damage_file(str(shard), 0.0, "flip", 16)              # the HDF5 superblock
    store = sc.LabelStore(work)
    first = int(np.flatnonzero(store.index["shard"] == 1)[0])
    with pytest.raises(CorruptRecordError, match="shard-00001.h5: the shard's HDF5 structure .* crc32"):
        store.matrix(first)
    store.matrix(0)                                       # other shards are unaffected
    with open(shard, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(TruncatedFileError, match="shard-00001.h5: shard file is .* bytes, the manifest says"):
        sc.LabelStore(work).matrix(first)


def test_malformed_integrity_members(stores, tmp_path):
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    m = json.loads((work / "manifest.json").read_text())
    m["index"] = {"bytes": "12"}
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="index member is malformed"):
        sc.LabelStore(work)
    m = json.loads((stores[0] / "d.store" / "manifest.json").read_text())
    m["shards"][0]["data_offset"] = m["shards"][0]["file_bytes"]
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="entry for this shard is malformed"):
        sc.LabelStore(work).matrix(0)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("index"), "the index member is missing"),
    (lambda m: m["shards"][1].pop("file_bytes"), "shard 1 has only some of"),
    (lambda m: [e.pop(k) for e in m["shards"][2:] for k in ("file_bytes", "data_offset", "meta_crc32")], "shard 2 lacks"),
    (lambda m: m.__setitem__("indfx", m.pop("index")), "the index member is missing"),   # a one-byte change
])
def test_partly_sealed_manifest_is_not_read_as_a_legacy_store(stores, tmp_path, edit, match):
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    m = json.loads((work / "manifest.json").read_text())
    assert len(m["shards"]) >= 3
    edit(m)
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="integrity members are incomplete"):
        sc.LabelStore(work)
    with pytest.raises(StoreError, match=match):
        sc.LabelStore(work)


@pytest.mark.parametrize("pos,mode,error,match", [
    (0.6, "flip", CorruptRecordError, "file content fails its crc32 check: expected"),
    (0.6, "truncate", TruncatedFileError, "bytes, its prefix says"),
    (0.0, "zero", StoreError, "not a label store"),
])
def test_damaged_single_file_store(stores, tmp_path, pos, mode, error, match):
    work = _copy(stores[0] / "s.h5", tmp_path / "s.h5")
    damage_file(str(work), pos, mode, 4)
    with pytest.raises(error, match=match):
        sc.LabelStore(work)


def test_damaged_prefix_is_refused(stores, tmp_path):
    work = _copy(stores[0] / "s.h5", tmp_path / "s.h5")
    data = bytearray(work.read_bytes())
    data[16] ^= 0x01                                      # the recorded file size
    work.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match="integrity prefix fails its crc32 check"):
        sc.LabelStore(work)


def test_single_file_content_check_can_be_skipped(stores, tmp_path):
    root, y = stores
    work = _copy(root / "s.h5", tmp_path / "s.h5")
    store = sc.LabelStore(work)
    e = store.index[5]
    with h5py.File(work, "r") as f:
        at = f["shards/shard-00000.h5"].id.get_offset() + int(e["offset"]) + int(e["length"]) - 1
    want = store.matrix(4)
    data = bytearray(work.read_bytes())
    data[at] ^= 0xFF                                      # the last byte of record 5
    work.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match="file content fails its crc32 check"):
        sc.LabelStore(work)
    # verify_checksums=False (trusted media) reads the size, not the whole file: the store opens
    trusting = sc.LabelStore(work, verify_checksums=False)
    assert np.array_equal(trusting.matrix(4).numpy(), want.numpy())


def test_index_crc_can_be_skipped_but_not_its_size(stores, tmp_path):
    work = _copy(stores[0] / "d.store", tmp_path / "d.store")
    m = json.loads((work / "manifest.json").read_text())
    m["index"]["crc32"] ^= 1                              # the file is intact; its recorded CRC is not
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptRecordError, match="index file fails its crc32 check"):
        sc.LabelStore(work)
    assert len(sc.LabelStore(work, verify_checksums=False)) == 12
    m["index"]["bytes"] += 1
    (work / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(TruncatedFileError, match="index file is .* bytes, the manifest says"):
        sc.LabelStore(work, verify_checksums=False)


def test_files_written_before_the_integrity_members_open_unchecked():
    for path in ("tests/fixtures/v2/shared_fp16.h5", "tests/fixtures/v2/svd_int8_residual.store"):
        path = os.path.join(HERE, path)
        if os.path.isfile(path):
            assert open(path, "rb").read(8) == HDF5_SIGNATURE
        else:
            assert "index" not in json.load(open(os.path.join(path, "manifest.json")))
        assert len(sc.LabelStore(path)) > 0


def test_merge_does_not_reseal_a_damaged_part(tmp_path):
    from score_codec.store.distributed import merge_stores

    y = teacher_like_logits(10, 4, 10, seed=3)
    sc.encode(y[:5], tmp_path / "a", method="shared", rank=2, labels=[0] * 5)
    sc.encode(y[5:], tmp_path / "b", method="shared", rank=2, labels=[0] * 5)
    before = [sc.LabelStore(tmp_path / "a").matrix(i) for i in range(5)]
    damage_file(str(tmp_path / "b" / "shards" / "shard-00000.h5"), 0.0, "flip", 8)
    with pytest.raises(CorruptRecordError, match="b/shards/shard-00000.h5: the shard's HDF5 structure"):
        merge_stores([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.merging").exists()
    # the healthy part was already taken into the merge when b was refused: it must be intact
    a = sc.LabelStore(tmp_path / "a")
    assert a.verify() == [] and all(bool((a.matrix(i) == before[i]).all()) for i in range(5))
