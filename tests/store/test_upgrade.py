"""``score-codec upgrade`` and the opt-in for stores without a table of contents (docs/FORMAT.md 2.2, 8)."""
import os
import shutil

import numpy as np
import pytest

import score_codec as sc
from score_codec.cli import main
from score_codec.errors import CorruptRecordError, UncheckedStoreError
from score_codec.store.upgrade import upgrade_store

from tests.common import make_meta, teacher_like_logits

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
LEGACY = [("v1", n) for n in ("svd_int8_residual.store", "shared_fp16.h5", "rpca_bf16_mean.store")] + \
         [("v2", n) for n in ("svd_int8_residual.store", "shared_fp16.h5", "global_int8_residual.store",
                              "twolevel_fp16_mean.h5", "sealed_global_int8.store", "sealed_svd_fp16.h5")] + \
         [("v3", n) for n in ("svd_int8_residual.store", "twolevel_fp16_mean.h5", "pooled_global_int8.store",
                              "pooled_svd_fp16.h5")] + \
         [("v4", n) for n in ("global_int8_residual.store", "pooled_global_int8.store", "sealed_svd_fp16.h5")]


def _decoded(store):
    return [store.matrix(i).numpy() for i in range(len(store))]


@pytest.mark.parametrize("version,name", LEGACY)
@pytest.mark.parametrize("kind", [".store", ".h5"])
def test_upgrade_copies_every_record_unchanged(tmp_path, version, name, kind):
    src = os.path.join(HERE, version, name)
    dst = tmp_path / ("up" + kind)
    out = upgrade_store(src, str(dst))
    assert out["from_version"] == int(version[1:]) and out["to_version"] == sc.FORMAT_VERSION and out["changed"]
    old, new = sc.LabelStore(src, allow_unchecked=True), sc.LabelStore(dst)
    assert new.manifest["format_version"] == sc.FORMAT_VERSION
    assert [old.record_bytes(i) for i in range(len(old))] == [new.record_bytes(i) for i in range(len(new))]
    # the same bytes, bases and code path: the same floats in the same process
    assert all(np.array_equal(a, b) for a, b in zip(_decoded(old), _decoded(new)))
    assert new.aug.rows.tobytes() == old.aug.rows.tobytes() and new.aug.attrs == old.aug.attrs
    assert new.encoding == old.encoding and new.verify() == []
    assert new.stats()["label_bytes"] == old.stats()["label_bytes"]


def test_upgrade_in_place_and_through_the_cli(tmp_path, capsys):
    work = tmp_path / "old.store"
    shutil.copytree(os.path.join(HERE, "v2", "global_int8_residual.store"), work)
    want = _decoded(sc.LabelStore(work, allow_unchecked=True))
    # without the opt-in the CLI refuses with the error that names both ways out
    assert main(["info", str(work)]) == 2
    err = capsys.readouterr().err
    assert "--allow-unchecked" in err and "score-codec upgrade" in err and "Traceback" not in err
    assert main(["info", str(work), "--allow-unchecked"]) == 0
    assert main(["verify", str(work), "--allow-unchecked", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["upgrade", str(work)]) == 0
    assert "format version 2" in capsys.readouterr().out
    store = sc.LabelStore(work)
    assert store.manifest["format_version"] == sc.FORMAT_VERSION
    assert all(np.array_equal(a, b) for a, b in zip(want, _decoded(store)))
    assert sorted(os.listdir(tmp_path)) == ["old.store", "old.store.lock"] or sorted(os.listdir(tmp_path)) == ["old.store"]
    assert main(["upgrade", str(work)]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["info", str(work)]) == 0


def test_without_the_opt_in_a_legacy_store_is_refused_by_name():
    path = os.path.join(HERE, "v2", "shared_fp16.h5")
    with pytest.raises(UncheckedStoreError) as info:
        sc.LabelStore(path)
    assert isinstance(info.value, sc.StoreVersionError)
    assert "allow_unchecked=True" in str(info.value) and f"score-codec upgrade {path}" in str(info.value)


def test_a_damaged_legacy_store_is_not_upgraded(tmp_path):
    work = tmp_path / "old.store"
    shutil.copytree(os.path.join(HERE, "v2", "svd_int8_residual.store"), work)
    store = sc.LabelStore(work, allow_unchecked=True)
    e = store.index[3]
    shard = work / "shards" / f"shard-{int(e['shard']):05d}.h5"
    import h5py

    with h5py.File(shard, "r+") as f:
        f["records"][int(e["offset"]) + 40] ^= 0xFF
    with pytest.raises(CorruptRecordError, match="not upgraded"):
        upgrade_store(str(work), str(tmp_path / "new.store"))
    assert not (tmp_path / "new.store").exists() and not (tmp_path / "new.store.partial").exists()


def test_a_current_store_copies_to_the_other_kind(tmp_path):
    y = teacher_like_logits(6, 4, 10, seed=5)
    sc.encode(y, tmp_path / "a.store", method="svd", rank=2, meta=make_meta(6, 4))
    upgrade_store(str(tmp_path / "a.store"), str(tmp_path / "a.h5"))
    a, b = sc.LabelStore(tmp_path / "a.store"), sc.LabelStore(tmp_path / "a.h5")
    assert all(np.array_equal(x, z) for x, z in zip(_decoded(a), _decoded(b)))
    assert b.aug.rows.tobytes() == a.aug.rows.tobytes()
