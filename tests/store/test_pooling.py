"""Pooling: a store that keeps a subset of its source's label epochs, and the automatic split of a ratio."""
import json
import os

import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.errors import BudgetError, InputError
from score_codec.store.allocate import epoch_values, even_epochs

from tests import dumpgen
from tests.common import assert_ratio_met, head_like_logits, kl_rows, make_meta

N, K, C = 200, 40, 1000


@pytest.fixture(scope="module")
def teacher_rows():
    """A 1000-class store's worth of teacher-head logits: 200 images x 40 label epochs."""
    return head_like_logits(N, K, C, d=16, seed=3)


@pytest.fixture(scope="module")
def meta():
    return make_meta(N, K, batch=10)


def test_even_epochs_keep_the_first_and_spread():
    assert even_epochs(1, 10).tolist() == [0]
    assert even_epochs(3, 8).tolist() == [0, 2, 5]
    assert even_epochs(10, 10).tolist() == list(range(10))
    with pytest.raises(InputError):
        even_epochs(11, 10)


def test_pooled_store_round_trip(tmp_path):
    y = head_like_logits(12, 8, 30, d=6, seed=1)
    meta = make_meta(12, 8, batch=4, seed=2)
    st = sc.encode(y, tmp_path / "p.store", method="global", rank=12, quant="fp32", meta=meta, keep_epochs=3)
    store = sc.LabelStore(tmp_path / "p.store")
    kept = [0, 2, 5]
    assert store.kept_epochs == kept and store.source_epochs == 8 and store.ks.tolist() == [3] * 12
    assert store.pool == {"source_epochs": 8, "kept_epochs": kept}
    assert st["keep_epochs"] == 3 and st["source_epochs"] == 8 and st["source_rows"] == 12 * 8
    assert st["ratio"] == pytest.approx(st["inner_ratio"] * 8 / 3)
    assert store.manifest["format_version"] == sc.FORMAT_VERSION
    # the kept views decode to the source's kept rows within the codec's error (rank 12 of 6 + 1 directions)
    for i in range(12):
        assert kl_rows(y[i, kept], store.matrix(i)) < 1e-4
    # metadata: view j is source epoch kept[j], its crops, flips and mixing bit-exact; batches re-tiled
    src = meta.rows
    for j, e in enumerate(kept):
        a = store.aug.rows[store.aug.rows["aug"] == j]
        b = src[src["epoch"] == e]
        for f in ("image", "batch", "pos", "coords", "flip", "mix_index"):
            assert a[f].tobytes() == b[f].tobytes()
        assert (a["epoch"] == j).all()
        ba = store.aug.batches[store.aug.batches["epoch"] == j]
        bb = meta.batches[meta.batches["epoch"] == e]
        for f in ("batch", "size", "mix_type", "mix_lam", "mix_bbox"):
            assert ba[f].tobytes() == bb[f].tobytes()
    assert store.verify() == []
    # training epoch e replays kept view e mod 3
    assert [store.view_for_epoch(e) for e in range(8)] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_ratio_100_keeps_fewer_epochs_and_meets_the_budget(tmp_path, teacher_rows, meta):
    st = sc.encode(teacher_rows, tmp_path / "r100.store", ratio=100, quant="int8", meta=meta)
    budget = 2 * C * N * K / 100
    assert 1 <= st["keep_epochs"] < K
    assert st["label_bytes"] <= budget and abs(st["ratio"] / 100 - 1) <= 0.02
    assert st["kl_t1"] <= 0.01
    store = sc.LabelStore(tmp_path / "r100.store")
    assert store.kept_epochs == even_epochs(st["keep_epochs"], K).tolist()
    alloc = store.encoding["allocation"]
    assert alloc["keep_epochs"] == st["keep_epochs"]
    assert alloc["inner_ratio"] == pytest.approx(st["inner_ratio"], rel=0.05)
    # the decoded kept rows stay within the threshold on every image, not only on the probe
    kept = torch.as_tensor(store.kept_epochs)
    got = torch.stack([store.matrix(i) for i in range(0, N, 7)])
    assert kl_rows(teacher_rows[::7][:, kept], got) <= 0.01


def test_ratio_10_keeps_every_epoch_and_codes_as_before(tmp_path, teacher_rows, meta):
    st = sc.encode(teacher_rows, tmp_path / "r10.store", ratio=10, quant="int8", meta=meta)
    assert st["keep_epochs"] == K and st["kept_epochs"] is None and st["inner_ratio"] == pytest.approx(st["ratio"])
    store = sc.LabelStore(tmp_path / "r10.store")
    assert store.pool is None and store.aug.rows.tobytes() == meta.rows.tobytes()
    # the same store as the writer's own rate control codes (no allocation): same rank, same records
    with sc.StoreWriter(tmp_path / "w.store", C, ratio=10, quant="int8") as w:
        w.fit(list(teacher_rows))
        w.add(teacher_rows)
        w.set_meta(meta)
    other = sc.LabelStore(tmp_path / "w.store")
    assert np.array_equal(store.index["rank"], other.index["rank"])
    assert store.record_bytes(5) == other.record_bytes(5)


def test_no_pool_codes_every_row_and_warns_with_the_measured_kl(tmp_path, teacher_rows):
    with pytest.warns(UserWarning, match=r"KL\(T=1\) \d"):
        st = sc.encode(teacher_rows, tmp_path / "np.store", ratio=100, quant="int8", pool=False)
    assert st["keep_epochs"] == K and st["kl_t1"] > 0.01
    assert_ratio_met(st, 100)


def test_keep_epochs_is_honoured_under_a_ratio(tmp_path, teacher_rows):
    st = sc.encode(teacher_rows, tmp_path / "k.store", ratio=100, quant="int8", keep_epochs=4)
    assert st["keep_epochs"] == 4 and sc.LabelStore(tmp_path / "k.store").kept_epochs == [0, 10, 20, 30]
    assert_ratio_met(st, 100)
    assert st["inner_ratio"] == pytest.approx(st["ratio"] * 4 / K)
    assert st["inner_ratio"] <= 10.5 and st["kl_t1"] <= 0.01


def test_budgets_that_hold_no_useful_label_are_refused(tmp_path, teacher_rows):
    with pytest.raises(BudgetError, match=r"ratio 2000x leaves .* ratio of at most \d+") as info:
        sc.encode(teacher_rows, tmp_path / "b.store", ratio=2000, quant="int8")
    assert not os.path.exists(tmp_path / "b.store")
    exc = info.value
    assert str(exc) == f"{exc.reason}. {exc.advice}" and "max_kl" in exc.advice
    # the largest ratio the error names is one the encode holds, within the max_kl it was measured at
    st = sc.encode(teacher_rows, tmp_path / "m.store", ratio=exc.max_ratio * 0.99, quant="int8")
    assert st["keep_epochs"] == 1 and st["kl_t1"] <= 0.01
    # coding every row: not even a rank-0 record fits
    with pytest.raises(BudgetError, match="B per kept row"):
        sc.encode(teacher_rows, tmp_path / "b.store", ratio=2000, quant="int8", pool=False)
    with pytest.raises(BudgetError):
        sc.encode(teacher_rows, tmp_path / "b.store", target_bytes=1000, quant="int8")


@pytest.mark.parametrize("kw", [dict(keep_epochs=0), dict(keep_epochs=-2), dict(keep_epochs=2.5),
                                dict(keep_epochs=True), dict(max_kl=0), dict(max_kl=float("nan")),
                                dict(keep_epochs=2, pool=False)])
def test_nonsense_pool_options_are_refused(kw):
    with pytest.raises(InputError):
        sc.CodecOptions(**kw)


def test_keep_epochs_outside_the_source_or_on_views_that_are_not_epochs(tmp_path):
    y = head_like_logits(6, 4, 20, d=3)
    with pytest.raises(InputError, match="keep 5 of 4"):
        sc.encode(y, tmp_path / "a", rank=3, keep_epochs=5)
    with pytest.raises(InputError, match="label epochs"):
        sc.encode([y[0], y[1, :2]], tmp_path / "b", rank=3, keep_epochs=1)
    with pytest.raises(InputError, match="keep_epochs"):
        sc.StoreWriter(tmp_path / "c", 20, keep_epochs=2)
    assert epoch_values(None, np.array([4, 4])).tolist() == [0, 1, 2, 3]
    assert epoch_values(None, np.array([4, 3])) is None


def test_encode_dump_pools_both_paths_and_decode_restores_source_epoch_numbers(tmp_path):
    dump = str(tmp_path / "dump")
    truth = dumpgen.make_epoch_dump(dump, ipc=2, epochs=5, batch_size=8, mix="cutmix")
    for kw in (dict(method="global", rank=8), dict(method="svd", rank=3, residual=1)):
        dst = tmp_path / f"{kw['method']}.store"
        st = sc.encode_dump(dump, dst, keep_epochs=2, **kw)
        store = sc.LabelStore(dst)
        assert store.kept_epochs == [0, 2] and st["keep_epochs"] == 2
        if kw["method"] == "svd":   # measured on the written store against the dump's kept rows
            assert 0 <= st["kl_t1"] < 0.5
        full = sc.encode_dump(dump, tmp_path / f"{kw['method']}-all.store", **kw)
        assert full["keep_epochs"] == 5
        back = tmp_path / f"{kw['method']}-dump"
        sc.decode_dump(dst, back)
        assert sorted(os.listdir(back)) == ["epoch_0", "epoch_2"]
        # each kept epoch's batches come back with the source's image order
        for j, e in enumerate([0, 2]):
            rows = store.aug.rows[store.aug.rows["aug"] == j]
            order = np.concatenate(truth["batches"][e])
            assert rows["image"].tolist() == order.tolist()


def test_cli_pool_flags(tmp_path, capsys):
    from score_codec.cli import main

    dump = str(tmp_path / "dump")
    dumpgen.make_epoch_dump(dump, ipc=2, epochs=4, batch_size=8, mix="cutmix")
    for bad in (["--keep-epochs", "0"], ["--keep-epochs", "x"], ["--max-kl", "-1"], ["--max-kl", "inf"],
                ["--no-pool", "--keep-epochs", "2"]):
        with pytest.raises(SystemExit) as exc:
            main(["encode", dump, str(tmp_path / "bad.store"), "--quiet", *bad])
        assert exc.value.code == 2
        capsys.readouterr()
    assert not os.path.exists(tmp_path / "bad.store")
    code = main(["encode", dump, str(tmp_path / "k.store"), "--quiet", "--rank", "4", "--keep-epochs", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["keep_epochs"] == 2 and out["kept_epochs"] == [0, 2]
    # an impossible budget: exit 2 with one line that names the budget and the flags that change it
    code = main(["encode", dump, str(tmp_path / "b.store"), "--quiet", "--ratio", "5000", "--no-pool"])
    err = capsys.readouterr().err
    assert code == 2 and "5000x" in err and len(err.strip().splitlines()) == 1


def test_verify_against_the_dump_compares_the_kept_epochs(tmp_path):
    dump = str(tmp_path / "dump")
    dumpgen.make_epoch_dump(dump, ipc=2, epochs=4, batch_size=8, mix="cutmix")
    sc.encode_dump(dump, tmp_path / "p.store", method="global", rank=10, quant="fp32", keep_epochs=2)
    rep = sc.verify_store(tmp_path / "p.store", against=dump)
    assert rep["ok"] and sorted(rep["fidelity"]["per_epoch"]) == ["0", "2"]
    assert rep["fidelity"]["overall"]["kl_t1"] < 1e-6
    info = sc.store_info(tmp_path / "p.store")
    full = sc.store_info(sc.encode_dump(dump, tmp_path / "f.store", method="global", rank=10, quant="fp32")["path"])
    assert info["dump_fp16_bytes"] == full["dump_fp16_bytes"] and info["source_rows"] == full["rows"]



def test_verify_against_a_dense_array_compares_the_kept_epochs(tmp_path):
    # a .npy dump holds every epoch of an image in one file: verify keeps the kept epochs' rows of each,
    # and reports them per epoch
    y = head_like_logits(12, 6, 20, d=5, seed=3)
    np.save(tmp_path / "y.npy", y.numpy().astype(np.float16))
    sc.encode_dump(tmp_path / "y.npy", tmp_path / "p.store", method="global", rank=10, quant="fp32", keep_epochs=3)
    kept = sc.LabelStore(str(tmp_path / "p.store")).kept_epochs
    rep = sc.verify_store(tmp_path / "p.store", against=tmp_path / "y.npy")
    assert rep["ok"] and sorted(int(e) for e in rep["fidelity"]["per_epoch"]) == sorted(int(e) for e in kept)
    assert all(d["rows"] == 12 for d in rep["fidelity"]["per_epoch"].values())
    assert rep["fidelity"]["overall"]["rows"] == 36 and rep["fidelity"]["overall"]["kl_t1"] < 1e-4
    # every epoch kept: one line per epoch as well, not one line for the whole array
    sc.encode_dump(tmp_path / "y.npy", tmp_path / "f.store", method="global", rank=10, quant="fp32")
    rep = sc.verify_store(tmp_path / "f.store", against=tmp_path / "y.npy")
    assert rep["ok"] and sorted(int(e) for e in rep["fidelity"]["per_epoch"]) == list(range(6))
    # a one-image file's rows all name the same image: rows whose epochs do not line up are refused
    from types import SimpleNamespace
    from score_codec.errors import FormatError
    from score_codec.formats.fidelity import fidelity
    st = sc.LabelStore(str(tmp_path / "f.store"))
    rows = st.aug.rows.copy()
    rows["epoch"][:6] = rows["epoch"][:6][::-1]
    shifted = SimpleNamespace(aug=SimpleNamespace(attrs=st.aug.attrs, rows=rows), kept_epochs=None, rows=st.rows)
    with pytest.raises(FormatError, match="rows do not match"):
        fidelity(shifted, str(tmp_path / "y.npy"), {})