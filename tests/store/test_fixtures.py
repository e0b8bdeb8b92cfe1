"""Stores written by every format version must keep decoding (docs/FORMAT.md section 8)."""
import os

import numpy as np
import pytest
import torch

import score_codec as sc

from tests.common import assert_float32_decode_equal, make_meta

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures")
CASES = [("v1", n) for n in ("svd_int8_residual.store", "shared_fp16.h5", "rpca_bf16_mean.store")] + \
        [("v2", n) for n in ("svd_int8_residual.store", "shared_fp16.h5", "global_int8_residual.store",
                             "twolevel_fp16_mean.h5", "sealed_global_int8.store", "sealed_svd_fp16.h5")] + \
        [(v, n) for v in ("v3", "v4", "v5") for n in ("svd_int8_residual.store", "shared_fp16.h5", "global_int8_residual.store",
                                                "twolevel_fp16_mean.h5", "sealed_global_int8.store", "sealed_svd_fp16.h5")]
#: stores (version 3 on) that keep 3 of the 6 label epochs (docs/FORMAT.md section 4, ``pool``)
POOLED = [(v, n) for v in ("v3", "v4", "v5") for n in ("pooled_global_int8.store", "pooled_svd_fp16.h5")]


def test_every_version_up_to_the_current_has_fixtures():
    assert os.path.isdir(os.path.join(HERE, f"v{sc.FORMAT_VERSION}"))
    assert {v for v, _ in CASES} == {f"v{i}" for i in range(1, sc.FORMAT_VERSION + 1)}


@pytest.mark.parametrize("version,name", CASES)
def test_fixture_decodes_to_its_saved_logits(version, name):
    store = sc.LabelStore(os.path.join(HERE, version, name), allow_unchecked=version in ("v1", "v2"))
    want = np.load(os.path.join(HERE, version, name.split(".")[0] + ".expected.npy"))
    got = np.stack([store.matrix(i).numpy() for i in range(len(store))])
    # the same bytes decode to the same values up to float32 summation order (BLAS-dependent)
    rank = int(max(store.index["rank"].max(), store.basis_full_rank.max() if len(store.basis_table) else 0))
    assert_float32_decode_equal(got, want, terms=rank + 3)
    rows = store.rows(np.arange(len(store)), np.arange(len(store)) % 6).numpy()
    assert_float32_decode_equal(rows, want[np.arange(len(store)), np.arange(len(store)) % 6], terms=rank + 3)
    assert store.verify() == []
    meta = make_meta(12, 6, batch=4)
    assert store.aug.rows.tobytes() == meta.rows.tobytes()
    assert store.manifest["format_version"] == int(version[1:])
    # stores written since the integrity members (FORMAT.md 2.1) carry them; older ones open without
    path = os.path.join(HERE, version, name)
    sealed = ("index" in store.manifest) if os.path.isdir(path) else open(path, "rb").read(8) == b"SCORELS\x00"
    assert sealed == (name.startswith("sealed_") or version not in ("v1", "v2"))


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4", "v5"])
def test_fixtures_stay_close_to_the_source_logits(version):
    y = np.load(os.path.join(HERE, version, "source_logits.npy"))
    yc = y - y.mean(-1, keepdims=True)
    name = "rpca_bf16_mean.store" if version == "v1" else "twolevel_fp16_mean.h5"
    store = sc.LabelStore(os.path.join(HERE, version, name), allow_unchecked=True)
    got = np.stack([store.matrix(i).numpy() for i in range(len(store))])
    # keep_mean: the absolute logits come back, not the centred ones
    assert np.abs(got - y).max() < np.abs(got - yc).max()


@pytest.mark.parametrize("version,name", POOLED)
def test_pooled_fixture_decodes_its_kept_epochs(version, name):
    path = os.path.join(HERE, version, name)
    store = sc.LabelStore(path)
    want = np.load(os.path.join(HERE, version, name.split(".")[0] + ".expected.npy"))
    assert want.shape == (12, 3, 10) and store.kept_epochs == [0, 2, 4] and store.source_epochs == 6
    got = np.stack([store.matrix(i).numpy() for i in range(len(store))])
    rank = int(max(store.index["rank"].max(), store.basis_full_rank.max() if len(store.basis_table) else 0))
    assert_float32_decode_equal(got, want, terms=rank + 3)
    assert store.verify() == []
    # the kept views are the source's epochs 0, 2 and 4: their metadata rows, renumbered, and their logits
    meta = make_meta(12, 6, batch=4)
    for j, e in enumerate(store.kept_epochs):
        a, b = store.aug.rows[store.aug.rows["aug"] == j], meta.rows[meta.rows["epoch"] == e]
        assert a["coords"].tobytes() == b["coords"].tobytes() and a["image"].tolist() == b["image"].tolist()
    src = np.load(os.path.join(HERE, version, "source_logits.npy"))[:, store.kept_epochs]
    p = torch.log_softmax(torch.as_tensor(src, dtype=torch.float64), -1)
    q = torch.log_softmax(torch.as_tensor(got, dtype=torch.float64), -1)
    assert float((p.exp() * (p - q)).sum(-1).mean()) < 0.5
    assert [store.view_for_epoch(e) for e in range(6)] == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("version,one", [("v4", False), ("v5", True)])
def test_global_int8_records_carry_one_scale_from_version_5(version, one):
    """Version 5's global codec writes int8 coefficients with one scale per record (flag 16): the record's
    coefficient block is 4 + r K bytes where version 4's was 4 r + r K."""
    from score_codec.store.record import FLAG_ONE_SCALE, HEADER

    for name in ("global_int8_residual.store", "sealed_global_int8.store", "pooled_global_int8.store"):
        store = sc.LabelStore(os.path.join(HERE, version, name))
        for i in range(len(store)):
            _, k, c, rank, _, flags, nnz, _, raw_len, _ = HEADER.unpack_from(store.record_bytes(i))
            assert bool(flags & FLAG_ONE_SCALE) == one, (name, i)
            rest = (4 * k if flags & 1 else 0) + ((1 * k + 1 * nnz + 2 * nnz) if nnz else 0)   # C = 10: u1 indices
            assert raw_len == (4 if one else 4 * rank) + rank * k + rest, (name, i)
