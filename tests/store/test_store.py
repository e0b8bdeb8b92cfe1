"""Store round trips, rate control, metadata, integrity errors and fork safety."""
import json
import multiprocessing as mp
import os

import h5py
import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.store.dense import dense_bytes
from score_codec.errors import (BudgetError, CorruptRecordError, IncompleteStoreError, IndexMismatchError, InputError,
                                MissingShardError, StoreVersionError, TruncatedFileError)

from tests.common import assert_close_rel, assert_ratio_met, centred, make_meta, teacher_like_logits

METHODS = ["svd", "rsvd", "cur", "rpca", "shared"]


@pytest.fixture(scope="module")
def logits():
    return teacher_like_logits(24, 16, 10, seed=5)


@pytest.mark.parametrize("single", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_round_trips_through_the_store(tmp_path, logits, method, single):
    path = tmp_path / ("s.h5" if single else "s.store")
    labels = [i % 3 for i in range(len(logits))]
    sc.encode(logits, path, method=method, rank=10, quant="fp32", labels=labels)
    store = sc.LabelStore(path)
    want = centred(logits)
    assert len(store) == 24 and store.num_classes == 10 and store.labels.tolist() == labels
    for i in range(len(store)):
        assert_close_rel(store.matrix(i), want[i], 1e-5)
    ids, augs = torch.tensor([0, 3, 23, 3]), torch.tensor([0, 15, 7, 2])
    assert_close_rel(store.rows(ids, augs), want[ids, augs], 1e-5)
    dense = store.factors().matrices(torch.arange(24))
    assert_close_rel(dense, want, 1e-5)
    assert store.verify() == []


@pytest.mark.parametrize("quant,rel", [("fp16", 2e-3), ("bf16", 1.6e-2), ("int8", 2e-2)])
def test_full_rank_error_is_within_the_quantisation_bound(tmp_path, logits, quant, rel):
    sc.encode(logits, tmp_path / "q", method="svd", rank=10, quant=quant)
    store = sc.LabelStore(tmp_path / "q")
    for i in range(len(store)):
        assert_close_rel(store.matrix(i), centred(logits[i]), rel)


def test_batched_rows_equal_per_image_decode(tmp_path, logits):
    sc.encode(logits, tmp_path / "r", rank=3, residual=2, quant="int8")
    store = sc.LabelStore(tmp_path / "r")
    ids = torch.randint(0, 24, (200,))
    augs = torch.randint(0, 16, (200,))
    per = torch.stack([store.matrix(int(i))[int(a)] for i, a in zip(ids, augs)])
    assert torch.allclose(store.rows(ids, augs), per, atol=1e-5)


def test_keep_mean_restores_the_logits_themselves(tmp_path, logits):
    sc.encode(logits, tmp_path / "m", rank=10, quant="fp32", keep_mean=True)
    assert_close_rel(sc.LabelStore(tmp_path / "m").matrix(4), logits[4], 1e-5)
    assert_close_rel(sc.LabelStore(tmp_path / "m").rows([4], [3])[0], logits[4, 3], 1e-5)


def test_residual_lowers_error(tmp_path, logits):
    errs = []
    for s in (0, 2):
        sc.encode(logits, tmp_path / f"res{s}", rank=1, residual=s, quant="fp32")
        st = sc.LabelStore(tmp_path / f"res{s}")
        errs.append(sum(float((st.matrix(i) - centred(logits[i])).norm()) for i in range(len(st))))
    assert errs[1] < errs[0]


def test_images_may_have_different_k(tmp_path):
    mats = [teacher_like_logits(1, k, 7, seed=k)[0] for k in (3, 9, 9, 1, 20)]
    sc.encode(mats, tmp_path / "k", method="svd", rank=7, quant="fp32")
    store = sc.LabelStore(tmp_path / "k")
    assert store.ks.tolist() == [3, 9, 9, 1, 20]
    for i, m in enumerate(mats):
        assert_close_rel(store.matrix(i), centred(m), 1e-5)


@pytest.mark.parametrize("ratio", [2.0, 4.0, 8.0])
def test_ratio_target_is_met_and_reported_exactly(tmp_path, ratio):
    # 40 classes: at ratio 8 a row has 10 bytes, enough for a rank >= 1 basis (a rank-0 store is refused)
    y = teacher_like_logits(64, 40, 40, seed=6)
    stats = sc.encode(y, tmp_path / "x", ratio=ratio, quant="fp16")
    store = sc.LabelStore(tmp_path / "x")
    stored = int(store.index["length"].sum()) + int(store.basis_table["length"].sum())
    assert stats["label_bytes"] == stored
    assert stats["ratio"] == pytest.approx(2 * 40 * 64 * 40 / stored)
    assert_ratio_met(stats, ratio)
    assert int(store.basis_table["rank"][0]) >= 1


def test_ratio_allocation_beats_uniform_rank_at_equal_bytes(tmp_path):
    y = torch.cat([teacher_like_logits(16, 40, 10, rank=1, seed=7), teacher_like_logits(16, 40, 10, rank=6, seed=8)])
    uni = sc.encode(y, tmp_path / "u", method="svd", rank=3, quant="fp32", zstd_level=0)
    alloc = sc.encode(y, tmp_path / "a", method="svd", target_bytes=uni["label_bytes"], quant="fp32", zstd_level=0)
    assert alloc["label_bytes"] <= uni["label_bytes"]

    def err(p):
        st = sc.LabelStore(p)
        return sum(float((st.matrix(i) - centred(y[i])).pow(2).sum()) for i in range(len(st)))

    assert err(tmp_path / "a") < err(tmp_path / "u")


def test_energy_keeps_the_requested_share(tmp_path, logits):
    sc.encode(logits, tmp_path / "e", method="svd", energy=0.99, quant="fp32")
    store = sc.LabelStore(tmp_path / "e")
    for i in range(len(store)):
        s = torch.linalg.svdvals(centred(logits[i]).double()).pow(2)
        r = int(store.index["rank"][i])
        assert s[:r].sum() / s.sum() >= 0.99 and (r == 1 or s[: r - 1].sum() / s.sum() < 0.99)


def test_unreachable_budget_is_refused(tmp_path, logits):
    with pytest.raises(BudgetError):
        sc.encode(logits, tmp_path / "b", target_bytes=100, residual=3)
    assert not os.path.exists(tmp_path / "b")


def test_metadata_round_trips_bit_exactly(tmp_path):
    y = teacher_like_logits(10, 5, 10, seed=9)
    meta = make_meta(10, 5)
    sc.encode(y, tmp_path / "meta", rank=2, meta=meta)
    store = sc.LabelStore(tmp_path / "meta")
    for name in ("rows", "batches", "images"):
        assert getattr(store.aug, name).tobytes() == getattr(meta, name).tobytes()
    assert store.aug.attrs == meta.attrs
    rows = store.meta(3)
    assert rows["aug"].tolist() == list(range(5)) and (rows["image"] == 3).all()


@pytest.mark.parametrize("bad,match", [
    (torch.full((2, 3, 4), float("nan")), "non-finite"),
    (torch.zeros(2, 0, 4), "zero rows"),
])
@pytest.mark.parametrize("method", ["svd", "global"])
def test_bad_input_is_refused_and_nothing_is_left(tmp_path, bad, match, method):
    with pytest.raises(InputError, match=match):
        sc.encode(bad, tmp_path / "bad", method=method)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", [torch.full((3, 10), float("inf")), torch.zeros(0, 10), torch.zeros(3, 9)])
def test_store_wide_fit_names_the_bad_matrix(tmp_path, logits, bad):
    # StoreWriter.fit reads its matrices lazily, so it validates them itself (not via encode's check)
    with pytest.raises(InputError, match="fit: matrix 2"):
        with sc.StoreWriter(tmp_path / "f", 10, method="global", rank=3) as w:
            w.fit([logits[0], logits[1], bad])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("method", ["svd", "global"])
def test_wrong_class_count_and_existing_destination(tmp_path, logits, method):
    with pytest.raises(InputError, match="C=10"):
        sc.encode([logits[0], logits[1][:, :9]], tmp_path / "w", method=method)
    sc.encode(logits, tmp_path / "w")
    with pytest.raises(InputError, match="exists"):
        sc.encode(logits, tmp_path / "w")
    sc.encode(logits, tmp_path / "w", overwrite=True)


def _store(tmp_path, logits, name="c"):
    sc.encode(logits, tmp_path / name, rank=3)
    return tmp_path / name


def test_checksum_catches_a_flipped_byte(tmp_path, logits):
    path = _store(tmp_path, logits)
    store = sc.LabelStore(path)
    e = store.index[7]
    shard = path / "shards" / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:
        ds = f["records"]
        pos = int(e["offset"]) + int(e["length"]) - 1
        ds[pos] = ds[pos] ^ 0x01
    store = sc.LabelStore(path)
    with pytest.raises(CorruptRecordError, match="record 7 .*crc32"):
        store.matrix(7)
    problems = store.verify()
    assert len(problems) == 1 and "record 7" in problems[0]
    store.matrix(6)  # neighbours are unaffected


def test_missing_manifest_means_incomplete(tmp_path, logits):
    path = _store(tmp_path, logits)
    os.remove(path / "manifest.json")
    with pytest.raises(IncompleteStoreError):
        sc.LabelStore(path)


def test_missing_and_truncated_shards_are_named(tmp_path, logits):
    path = _store(tmp_path, logits)
    shard = path / "shards" / "shard-00000.h5"
    data = shard.read_bytes()
    os.remove(shard)
    with pytest.raises(MissingShardError, match="shard-00000"):
        sc.LabelStore(path).matrix(0)
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match="shard-00000"):
        sc.LabelStore(path).matrix(0)


def test_index_disagreeing_with_manifest(tmp_path, logits):
    path = _store(tmp_path, logits)
    m = json.loads((path / "manifest.json").read_text())
    m["num_images"] = 3
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="3 images"):
        sc.LabelStore(path)
    m["num_images"] = 24
    m["shards"][0]["bytes"] = 10
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexMismatchError, match="extend past"):
        sc.LabelStore(path)


def test_unknown_version_is_refused(tmp_path, logits):
    path = _store(tmp_path, logits)
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreVersionError, match="99"):
        sc.LabelStore(path)


def test_shards_split_at_the_size_limit(tmp_path, logits):
    sc.encode(logits, tmp_path / "sh", method="svd", rank=3, shard_bytes=1000)
    store = sc.LabelStore(tmp_path / "sh")
    assert len(os.listdir(tmp_path / "sh" / "shards")) > 2
    for i in range(len(store)):
        store.matrix(i)


def _read_in_child(args):
    store, ids = args
    return torch.stack([store.matrix(i) for i in ids]).numpy(), store.rows(ids, [1] * len(ids)).numpy()


@pytest.mark.parametrize("ctx", ["fork", "spawn"])
def test_forked_and_spawned_workers_read_the_store(tmp_path, logits, ctx):
    path = _store(tmp_path, logits)
    store = sc.LabelStore(path)
    parent = torch.stack([store.matrix(i) for i in range(24)]).numpy()
    store.rows([0], [0])  # parent opened handles and built caches before forking
    with mp.get_context(ctx).Pool(2) as pool:
        out = pool.map(_read_in_child, [(store, list(range(0, 12))), (store, list(range(12, 24)))])
    got = np.concatenate([o[0] for o in out])
    assert np.array_equal(got, parent)
    assert np.array_equal(np.concatenate([o[1] for o in out]), parent[:, 1])


@pytest.mark.parametrize("method", ["svd", "shared", "global", "two-level"])
@pytest.mark.parametrize("keep_mean", [False, True])
def test_record_decode_path_equals_the_dense_path(tmp_path, logits, method, keep_mean):
    sc.encode(logits, tmp_path / "p", method=method, rank=3, residual=2, keep_mean=keep_mean,
              labels=[i % 3 for i in range(len(logits))])
    dense = sc.LabelStore(tmp_path / "p")
    lean = sc.LabelStore(tmp_path / "p", max_dense_bytes=0)  # too large for the tables: decode records
    g = torch.Generator().manual_seed(1)
    ids, augs = torch.randint(0, 24, (300,), generator=g), torch.randint(0, 16, (300,), generator=g)
    assert_close_rel(lean.rows(ids, augs), dense.rows(ids, augs), 1e-5)   # GEMMs of other shapes: not bit-equal
    assert lean._dense == {} and dense._dense != {}
    with pytest.raises(IndexError):
        lean.rows([0], [16])


def _held_bytes(f) -> int:
    """Bytes of every tensor a DenseFactors holds."""
    out = 0
    for v in vars(f).values():
        for t in (v if isinstance(v, list) else [v]):
            if isinstance(t, torch.Tensor):
                out += t.numel() * t.element_size()
    return out


@pytest.mark.parametrize("method,quant", [("svd", "int8"), ("shared", "fp16"), ("global", "int8"), ("two-level", "fp32")])
@pytest.mark.parametrize("residual", [0, 3])
def test_dense_size_estimate_bounds_what_the_tables_hold(tmp_path, logits, method, quant, residual):
    # the estimate decides dense tables against per-record decode: it must not undercount, and it must not
    # count a record's residual entries once per row (16 rows x 3 entries would read as 48 per row)
    sc.encode(logits, tmp_path / "e", method=method, rank=3, residual=residual, quant=quant, keep_mean=True,
              labels=[i % 3 for i in range(len(logits))])
    store = sc.LabelStore(tmp_path / "e")
    held, est = _held_bytes(store.factors()), dense_bytes(store)
    assert held <= est <= 1.1 * held
    assert int(store.index["nnz"].sum()) == 24 * 16 * residual


@pytest.mark.parametrize("field,value,match", [
    ("mix_index", 9, "mix partner"), ("flip", 3, "flip"), ("aug", 7, "outside image"), ("image", 99, "image ids"),
])
def test_inconsistent_metadata_is_refused_before_anything_is_written(tmp_path, field, value, match):
    y = teacher_like_logits(8, 2, 10, seed=9)
    meta = make_meta(8, 2, batch=4)
    meta.rows[field][3] = value
    with pytest.raises(InputError, match=match):
        sc.encode(y, tmp_path / "m", rank=2, meta=meta)
    assert os.listdir(tmp_path) == []
