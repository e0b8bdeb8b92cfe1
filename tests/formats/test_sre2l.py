"""SRe2L / LPLD readers and writers on real-structure dumps (tests/dumpgen.py)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from tests import dumpgen

from score_codec.errors import FormatError, InputError, UnsafePickleError  # noqa: E402
from score_codec.formats import detect_format, read_dump, write_dump  # noqa: E402
from score_codec.formats.sampler import sampler_batches  # noqa: E402
from score_codec.store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE  # noqa: E402

IPC, E, B = 8, 3, 8


def load_any(path):
    """Our own test files are trusted: load them fully to compare with what the writers produce."""
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_item(a, b, where):
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same_item(x, y, f"{where}[{k}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, float):
        assert np.float64(a).tobytes() == np.float64(b).tobytes(), where
    else:
        assert a == b and np.asarray(a).dtype == np.asarray(b).dtype, where


def assert_same_dump(src, dst, logits_exact=True):
    names = sorted(os.listdir(src))
    assert sorted(os.listdir(dst)) == names
    for e in [n for n in names if n.startswith("epoch_")]:
        files = sorted(os.listdir(os.path.join(src, e)))
        assert sorted(os.listdir(os.path.join(dst, e))) == files
        for f in files:
            a, b = load_any(os.path.join(src, e, f)), load_any(os.path.join(dst, e, f))
            assert len(a) == len(b)
            for k in range(len(a)):
                if k == 5 and not logits_exact:
                    assert a[5].dtype == b[5].dtype and a[5].shape == b[5].shape
                    continue
                assert_same_item(a[k], b[k], f"{e}/{f}[{k}]")


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    root = tmp_path_factory.mktemp("sre2l")
    out = {}
    for mix in ("cutmix", "mixup", "none"):
        out[mix] = (str(root / mix), dumpgen.make_epoch_dump(str(root / mix), ipc=IPC, epochs=E, batch_size=B, mix=mix))
    return out


def test_sampler_replay_matches_torch_and_old_torch():
    g = torch.Generator()
    g.manual_seed(42)
    bs = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(37), generator=g), 8, drop_last=False)
    ref = [[list(b) for b in bs] for _ in range(4)]
    assert [[b.tolist() for b in ep] for ep in sampler_batches(37, 8, 4)] == ref
    old = dumpgen.old_torch_batches(37, 8, 4, 42)
    assert [[b.tolist() for b in ep] for ep in sampler_batches(37, 8, 4, draws=1)] == old
    assert old[0] == ref[0] and old[1] != ref[1]  # the hazard: only epoch 0 agrees


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
def test_read_maps_rows_exactly_and_keeps_fields(dumps, mix):
    root, truth = dumps[mix]
    assert detect_format(root) == "sre2l"
    with read_dump(root) as c:
        assert c.num_images == IPC * 10 and c.num_classes == 10
        assert np.array_equal(c.ks, np.full(IPC * 10, E))
        assert np.array_equal(c.labels, np.arange(IPC * 10) // IPC)
        rows, batches = c.aug.rows, c.aug.batches
        assert len(batches) == E * (IPC * 10 // B)
        for br in batches:
            e, b = int(br["epoch"]), int(br["batch"])
            sl = rows[br["row_start"]:br["row_start"] + br["size"]]
            assert sl["image"].tolist() == truth["batches"][e][b]
            assert (sl["aug"] == e).all()             # every image once per epoch: aug = epoch
            f = load_any(os.path.join(root, f"epoch_{e}", f"batch_{b}.tar"))
            assert np.array_equal(sl["coords"].view(np.uint32), f[0].numpy().view(np.uint32))
            assert np.array_equal(sl["flip"].astype(bool), f[1].numpy())
            assert br["mix_type"] == {"cutmix": MIX_CUTMIX, "mixup": MIX_MIXUP, "none": MIX_NONE}[mix]
            if mix != "none":
                assert np.array_equal(sl["mix_index"], f[2].numpy()) and br["mix_lam"] == f[3]
            if mix == "cutmix":
                assert br["mix_bbox"].tolist() == [int(v) for v in f[4]]
            # logits reach the per-image matrices unchanged (fp16 -> fp32 is exact)
            got = c.rows(sl["image"], sl["aug"]).numpy()
            assert np.array_equal(got, f[5].float().numpy())
        m = c.matrix(5)
        assert m.shape == (E, 10)
        mats = [x for chunk in c.matrices(chunk_images=7) for x in chunk]
        assert all(np.array_equal(a, c.matrix(i)) for i, a in enumerate(mats))


@pytest.mark.parametrize("mix", ["cutmix", "mixup", "none"])
def test_write_back_is_bit_exact(dumps, mix, tmp_path):
    root, _ = dumps[mix]
    with read_dump(root) as c:
        write_dump(c, str(tmp_path / "out"), "sre2l")
    assert_same_dump(root, str(tmp_path / "out"))


def sre2l_loader_stream(root, epochs, train_batch_size):
    """A reader written to SRe2L's loader rules: epoch count from listdir,
    batch size from batch_0, the run refuses a different batch size; img2batch map from a seed-42
    sampler replay; training batches from a fresh seed-42 RandomSampler/BatchSampler; coords and flip
    consumed sequentially.  Yields (image, coords bits, flip, mix_index, lam, bbox) per row."""
    max_epoch = len(os.listdir(root))
    first = load_any(os.path.join(root, "epoch_0", "batch_0.tar"))
    batch_size = first[1].size(0)
    if train_batch_size != batch_size:
        raise RuntimeError("use --gradient-accumulation-steps to control batch size")
    if epochs > max_epoch:
        raise RuntimeError("more epochs than dumped")
    n = IPC * 10  # the loader's ImageFolder size
    g = torch.Generator()
    g.manual_seed(42)
    bs = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n), generator=g), batch_size, False)
    img2batch = [{b[0]: i for i, b in enumerate(bs)} for _ in range(max_epoch)]
    g2 = torch.Generator()
    g2.manual_seed(42)
    loader = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n), generator=g2), batch_size, False)
    for e in range(epochs):
        for idx in loader:
            cfg = load_any(os.path.join(root, f"epoch_{e}", f"batch_{img2batch[e][idx[0]]}.tar"))
            assert cfg[1].shape[0] == len(idx)
            for r, i in enumerate(idx):
                bbox = None if cfg[4] is None else [int(v) for v in cfg[4]]
                mi = None if cfg[2] is None else int(cfg[2][r])
                yield (i, cfg[0][r].numpy().tobytes(), bool(cfg[1][r]), mi, cfg[3], bbox)


def test_written_dump_passes_sre2l_loader_rules(dumps, tmp_path):
    root, _ = dumps["cutmix"]
    with read_dump(root) as c:
        write_dump(c, str(tmp_path / "out"), "sre2l")
    a = list(sre2l_loader_stream(root, E, B))
    b = list(sre2l_loader_stream(str(tmp_path / "out"), E, B))
    assert len(a) == E * IPC * 10 and a == b
    with pytest.raises(RuntimeError, match="gradient-accumulation"):
        next(sre2l_loader_stream(str(tmp_path / "out"), E, B * 2))


def test_old_torch_dump_needs_sampler_draws_1(tmp_path):
    root = str(tmp_path / "old")
    truth = dumpgen.make_epoch_dump(root, ipc=IPC, epochs=E, batch_size=B, mix="cutmix", draws=1)
    with pytest.raises(InputError, match="--sampler-draws 1") as exc:
        read_dump(root)
    assert "torch-version sampler hazard" in str(exc.value)
    with read_dump(root, sampler_draws=1) as c:
        for br in c.aug.batches:
            sl = c.aug.rows[br["row_start"]:br["row_start"] + br["size"]]
            assert sl["image"].tolist() == truth["batches"][int(br["epoch"])][int(br["batch"])]
        assert c.aug.attrs["sampler_draws"] == 1


def test_wrong_seed_is_caught(dumps):
    root, _ = dumps["cutmix"]
    with pytest.raises(InputError, match="rows do not match their images"):
        read_dump(root, seed=7)


def test_mapping_check_needs_no_trained_teacher(tmp_path):
    """A dump made by an untrained network passes (its classes are at chance), and a wrong seed still fails."""
    torch.manual_seed(5)
    untrained = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 128), torch.nn.ReLU(),
                                    torch.nn.Linear(128, 10)).eval()
    root = str(tmp_path / "untrained")
    truth = dumpgen.make_epoch_dump(root, ipc=IPC, epochs=E, batch_size=B, mix="cutmix", model=untrained)
    with read_dump(root) as c:
        check = c.aug.attrs["sampler_check"]
        assert check["z"] >= 4 and check["auc"] > 0.58
        first = c.aug.rows[: c.aug.batches[0]["size"]]
        assert first["image"].tolist() == truth["batches"][0][0]
    with pytest.raises(InputError, match="rows do not match their images"):
        read_dump(root, seed=7)


def test_trust_order_skips_the_check_with_a_warning(dumps, caplog):
    root, _ = dumps["cutmix"]
    with caplog.at_level("WARNING"):
        with read_dump(root, seed=7, check_mapping=False) as c:
            assert "sampler_check" not in c.aug.attrs
    assert "not checked (--trust-order)" in caplog.text


def test_pair_auc_separates_views_of_one_image_from_strangers():
    from score_codec.formats.order_check import pair_auc

    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 50))
    auc, z = pair_auc(base + 0.5 * rng.normal(size=base.shape), base + 0.5 * rng.normal(size=base.shape))
    assert auc > 0.95 and z > 20
    auc0, z0 = pair_auc(rng.normal(size=(300, 50)), rng.normal(size=(300, 50)))
    assert abs(auc0 - 0.5) < 0.05 and abs(z0) < 4


def test_lpld_full_and_pruned(tmp_path):
    for name, ratio in (("full", None), ("pruned", 0.5)):
        root = str(tmp_path / name)
        truth = dumpgen.make_epoch_dump(root, family="lpld", ipc=5, epochs=3, batch_size=8, prune_ratio=ratio)
        assert detect_format(root) == "lpld"
        with read_dump(root) as c:
            got = {}
            for br in c.aug.batches:
                sl = c.aug.rows[br["row_start"]:br["row_start"] + br["size"]]
                got.setdefault(int(br["epoch"]), []).append(sl["image"].tolist())
            assert [got[e] for e in sorted(got)] == truth["batches"]
            if ratio:
                assert len(set(c.ks.tolist())) > 1  # pruning leaves images with different K
            write_dump(c, str(tmp_path / (name + "_out")), "lpld")
        assert_same_dump(root, str(tmp_path / (name + "_out")))
        with open(os.path.join(root, "sampler_indices_epoch.json")) as a, \
                open(str(tmp_path / (name + "_out") / "sampler_indices_epoch.json")) as b:
            assert json.load(a) == json.load(b)


# -- refusals: one named error per failure ---------------------------------------------------------
def _copy(dumps, tmp_path, mix="cutmix"):
    dst = str(tmp_path / "d")
    shutil.copytree(dumps[mix][0], dst)
    return dst


def test_truncated_file_is_a_format_error(dumps, tmp_path):
    root = _copy(dumps, tmp_path)
    p = os.path.join(root, "epoch_1", "batch_2.tar")
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(FormatError, match="epoch_1/batch_2.tar.*truncated"):
        read_dump(root)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unsafe_pickle_is_refused(dumps, tmp_path):
    root = _copy(dumps, tmp_path)
    p = os.path.join(root, "epoch_2", "batch_0.tar")
    items = load_any(p)
    items[3] = _Evil()
    torch.save(items, p)
    with pytest.raises(UnsafePickleError, match=r"batch_0.tar.*system"):
        read_dump(root)


def test_missing_batch_and_missing_dir(dumps, tmp_path):
    root = _copy(dumps, tmp_path)
    os.remove(os.path.join(root, "epoch_1", "batch_3.tar"))
    with pytest.raises(FormatError, match="batch_3.tar is missing"):
        read_dump(root, "sre2l")
    with pytest.raises(InputError, match="no such dump"):
        read_dump(str(tmp_path / "nope"))


def test_nan_logits_wrong_classes_and_mixed_items(dumps, tmp_path):
    root = _copy(dumps, tmp_path)
    p = os.path.join(root, "epoch_1", "batch_1.tar")
    items = load_any(p)
    items[5][3, 2] = float("nan")
    torch.save(items, p)
    with pytest.raises(InputError, match=r"batch_1.tar: row 3, class 2: logit is nan"):
        read_dump(root)
    with pytest.raises(InputError, match="expected 5 classes"):
        read_dump(dumps["cutmix"][0], num_classes=5)
    items[5][3, 2] = 0.0
    torch.save(items + [torch.zeros(B, dtype=torch.int64)], p)
    with pytest.raises(FormatError, match="expected a list of 6 items.*found a list of 7"):
        read_dump(root, "sre2l")


def test_extra_entries_are_ignored_not_counted(dumps, tmp_path):
    root = _copy(dumps, tmp_path)
    open(os.path.join(root, "README.txt"), "w").write("notes")
    os.makedirs(os.path.join(root, "epoch_x"))
    open(os.path.join(root, "epoch_0", "batch_0.tar.bak"), "w").write("x")
    with read_dump(root) as c:
        assert c.aug.attrs["epochs"] == E and len(c.aug.batches) == E * IPC * 10 // B


def test_scratch_is_deleted(dumps, tmp_path):
    c = read_dump(dumps["none"][0], scratch_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 1
    c.close()
    assert os.listdir(tmp_path) == []


def test_safe_load_maps_zip_archives_and_reads_legacy_pickles_whole(tmp_path):
    from score_codec.formats.safe_load import safe_torch_load

    items = [torch.rand(4, 2), torch.tensor([1, 0, 1, 1]), (torch.randn(4, 7) * 5).half()]
    for legacy in (False, True):
        p = str(tmp_path / f"b{int(legacy)}.tar")
        torch.save(items, p, _use_new_zipfile_serialization=not legacy)
        for mmap in (False, True):
            got = safe_torch_load(p, mmap=mmap)
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, items))
