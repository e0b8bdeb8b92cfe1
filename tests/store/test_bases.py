"""Version-2 shared-basis tables: every inconsistency has its named error, before any basis is used."""
from __future__ import annotations

import shutil

import h5py
import pytest
import torch

import score_codec as sc
from score_codec.errors import CorruptRecordError, IndexMismatchError, StoreError

from tests.common import reseal, teacher_like_logits


@pytest.fixture(scope="module")
def two_level(tmp_path_factory):
    path = tmp_path_factory.mktemp("bases") / "two.store"
    y = teacher_like_logits(16, 6, 20, seed=2)
    sc.encode(y, path, method="two-level", rank=3, labels=[i % 4 for i in range(16)], quant="int8",
              codec_config={"class_rank": 2})
    return path


def _damaged(src, dst, changes):
    shutil.copytree(src, dst)
    with h5py.File(dst / "index.h5", "r+") as f:
        t = f["bases/table"][()]
        for (field, j), v in changes.items():
            t[field][j] = v
        del f["bases/table"]
        f["bases"].create_dataset("table", data=t)
    reseal(dst)
    return dst


def test_composite_bases_decode_with_their_parent_and_mean(two_level):
    store = sc.LabelStore(two_level)
    t = store.basis_table
    assert t["flags"].tolist() == [1, 0, 0, 0, 0] and t["parent"].tolist() == [-1, 0, 0, 0, 0]
    assert store.basis_full_rank.tolist() == [3, 5, 5, 5, 5]
    i = 1
    rec = store.record(i)
    want = rec.a @ store.basis(rec.basis) + store.basis_mean(rec.basis)
    assert torch.allclose(store.matrix(i), want, atol=1e-5)


@pytest.mark.parametrize("changes,error,match", [
    ({("parent", 1): 3}, IndexMismatchError, "earlier basis"),
    ({("parent", 0): 0}, IndexMismatchError, "earlier basis"),
    ({("flags", 2): 1}, IndexMismatchError, "only roots hold means"),
    ({("flags", 0): 5}, StoreError, "flags"),
    ({("quant", 0): 9}, StoreError, "quantisation"),
    ({("rank", 0): 30}, IndexMismatchError, "exceeds C"),
])
def test_inconsistent_tables_are_refused_on_open(two_level, tmp_path, changes, error, match):
    with pytest.raises(error, match=match):
        sc.LabelStore(_damaged(two_level, tmp_path / "bad.store", changes))


def test_wrong_basis_length_or_bytes_are_detected_on_use(two_level, tmp_path):
    store = sc.LabelStore(_damaged(two_level, tmp_path / "short.store", {("rank", 1): 1}))
    with pytest.raises(IndexMismatchError, match="bytes"):
        store.basis(1)
    shutil.copytree(two_level, tmp_path / "flip.store")
    with h5py.File(tmp_path / "flip.store" / "index.h5", "r+") as f:
        blob = f["bases/blob"][()]
        blob[3] ^= 0x10
        f["bases/blob"][...] = blob
    reseal(tmp_path / "flip.store")
    with pytest.raises(CorruptRecordError, match="crc32"):
        sc.LabelStore(tmp_path / "flip.store").basis(0)
    assert sc.LabelStore(tmp_path / "flip.store").verify()     # verify reports it too
