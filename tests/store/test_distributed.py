"""Distributed encode with torchrun (2 gloo ranks) equals a single-process run."""
import os
import shutil
import subprocess

import numpy as np
import pytest

import score_codec as sc
from score_codec.store.distributed import block_of, merge_stores

from tests.common import assert_stores_close, make_meta, teacher_like_logits

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _decoded(path):
    st = sc.LabelStore(path)
    return np.stack([st.matrix(i).numpy() for i in range(len(st))])


def test_blocks_partition_the_images():
    for n in (0, 1, 7, 30):
        for w in (1, 2, 3, 5):
            got = [i for r in range(w) for i in block_of(n, r, w)]
            assert got == list(range(n))


@pytest.mark.parametrize("method", ["svd", "shared"])
def test_merge_equals_single_process(tmp_path, method):
    y = teacher_like_logits(30, 8, 10, seed=31)
    labels = [i % 3 for i in range(30)]
    sc.encode(y, tmp_path / "one", method=method, rank=3, labels=labels)
    for r, blk in enumerate([range(0, 15), range(15, 30)]):
        sc.encode(y[list(blk)], tmp_path / f"p{r}", method=method, rank=3, labels=[labels[i] for i in blk], shard_bytes=2000)
    parts = np.concatenate([_decoded(tmp_path / "p0"), _decoded(tmp_path / "p1")])
    merge_stores([str(tmp_path / "p0"), str(tmp_path / "p1")], str(tmp_path / "merged"), make_meta(30, 8))
    merged = sc.LabelStore(tmp_path / "merged")
    assert merged.verify() == [] and merged.labels.tolist() == labels
    assert np.array_equal(_decoded(tmp_path / "merged"), parts)  # shifted basis ids still resolve
    if method == "svd":  # per-image codecs do not depend on how images are split, up to float32 rounding
        assert_stores_close(tmp_path / "merged", tmp_path / "one")


@pytest.mark.parametrize("method", ["svd", "shared", "global", "two-level"])
def test_torchrun_two_gloo_ranks(tmp_path, method):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    path = tmp_path / "dist.store"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.dist_encode_job", str(path), method],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = sc.LabelStore(path)
    assert len(store) == 30 and store.verify() == []
    assert len(os.listdir(path / "shards")) >= 2 and not (tmp_path / "dist.store.dist-parts").exists()
    y = teacher_like_logits(30, 8, 10, seed=31)
    labels = [i % 3 for i in range(30)]
    ref = tmp_path / "ref.store"
    if method in ("global", "two-level"):
        # store-scope bases are fitted once on rank 0 over everything: the store equals a one-process run
        sc.encode(y, ref, method=method, rank=3, labels=labels, meta=make_meta(30, 8))
        one = sc.LabelStore(ref)
        assert store.basis_table.tobytes() == one.basis_table.tobytes()         # one copy of each basis
        # rows are fitted in other batches on each rank: equal up to one step of the coefficients' grid
        assert_stores_close(path, ref)
        return
    p0, p1 = tmp_path / "r0", tmp_path / "r1"
    sc.encode(y[:15], p0, method=method, rank=3, labels=labels[:15])
    sc.encode(y[15:], p1, method=method, rank=3, labels=labels[15:])
    merge_stores([str(p0), str(p1)], str(ref), make_meta(30, 8))
    assert_stores_close(path, ref)
    assert store.aug.rows.tobytes() == make_meta(30, 8).rows.tobytes()


def _raw_logits(raw, store):
    """(N, K, C) float64 logits of an SRe2L raw dump, in the store's (image, view) order."""
    import torch

    rows = store.aug.rows
    out = np.zeros((len(store), store.aug.rows["aug"].max() + 1, store.num_classes))
    for e in np.unique(rows["epoch"]):
        for b in np.unique(rows["batch"][rows["epoch"] == e]):
            logits = torch.load(raw / f"epoch_{e}" / f"batch_{b}.tar", weights_only=False)[5].double().numpy()
            sel = rows[(rows["epoch"] == e) & (rows["batch"] == b)]
            out[sel["image"], sel["aug"]] = logits[sel["pos"]]
    return out


def _kl(p_logits, q_logits):
    p = torch_log_softmax(p_logits)
    return float((np.exp(p) * (p - torch_log_softmax(q_logits))).sum())


def torch_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x - x.max()
    return m - np.log(np.exp(m).sum())


def test_torchrun_relabel_equals_one_process(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    from score_codec.training.relabel import relabel

    from tests.dist_relabel_job import setup

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    dist_store, dist_raw = tmp_path / "dist.store", tmp_path / "dist_raw"
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "tests.dist_relabel_job",
                           str(dist_store), str(dist_raw)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    images, teacher = setup()
    one, one_raw = tmp_path / "one.store", tmp_path / "one_raw"
    relabel(images, teacher, str(one), 3, mix="cutmix", batch_size=8, rank=3, seed=5, input_size=10, progress=False,
            raw_dump=str(one_raw))
    a, b = sc.LabelStore(dist_store), sc.LabelStore(one)
    # the teacher runs in other processes (other kernels where the CPU differs) and its logits are kept in
    # fp16: inputs agree to one fp16 step, and the coefficients fitted from them to about one quantisation step
    t_dist, t_one = _raw_logits(dist_raw, a), _raw_logits(one_raw, b)
    eps16 = float(np.finfo(np.float16).eps)
    assert np.all(np.abs(t_dist - t_one) <= eps16 * np.maximum(np.abs(t_one), 2.0 ** -14))
    # the KL fit's line search picks one of a few step lengths by comparing float32 objectives (KL plus a
    # penalty of weight ``penalty`` on the distance from the projection): where the candidates tie, either
    # one may be kept, and the two rows then fit the teacher equally well up to that penalty term
    penalty = b.encoding["codec"]["penalty"]
    rounding = b.num_classes * 64 * float(np.finfo(np.float32).eps) + 4 * eps16 * float(np.abs(t_one).max())

    def equally_good(i, v, got, want):
        kg, kw = _kl(t_one[i, v], got.numpy()), _kl(t_one[i, v], want.numpy())
        return abs(kg - kw) <= penalty * max(kg, kw) + rounding

    assert_stores_close(dist_store, one, input_rel=eps16, explained=equally_good)
    for name in ("rows", "batches", "images"):
        assert getattr(a.aug, name).tobytes() == getattr(b.aug, name).tobytes()
    files = sorted(str(p.relative_to(one_raw)) for p in one_raw.rglob("*.tar"))
    assert files == sorted(str(p.relative_to(dist_raw)) for p in dist_raw.rglob("*.tar")) and len(files) == 12
    assert not list(tmp_path.glob("*scratch*"))


def test_merge_refuses_single_file_destinations_and_corrupt_parts(tmp_path):
    y = teacher_like_logits(10, 4, 10, seed=3)
    sc.encode(y[:5], tmp_path / "a", method="shared", rank=2, labels=[0] * 5)
    sc.encode(y[5:], tmp_path / "b", method="shared", rank=2, labels=[0] * 5)
    with pytest.raises(sc.InputError, match="directory"):
        merge_stores([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m.h5"))
    import h5py

    st = sc.LabelStore(tmp_path / "b")
    with h5py.File(tmp_path / "b" / "shards" / "shard-00000.h5", "r+") as f:
        pos = int(st.index["offset"][2]) + 40
        f["records"][pos] ^= 1
    with pytest.raises(sc.CorruptRecordError, match="record 2"):
        merge_stores([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "m"))
