"""relabel: seeded teacher pass -> compressed store + optional SRe2L raw dump, replayed exactly."""
import os

import numpy as np
import pytest
import torch

from score_codec import LabelStore
from score_codec.cli import main as cli_main
from score_codec.training.images import TensorImages, load_fashion_mnist
from score_codec.training.dataset import CompressedSoftLabelDataset
from score_codec.errors import InputError
from score_codec.store.meta import MIX_CUTMIX, MIX_MIXUP
from score_codec.training.models import ConvNet, save_model
from score_codec.training.relabel import relabel
from tests.common import assert_close_rel

N, EPOCHS, BATCH = 40, 4, 8


def centred(z):
    return z - z.mean(-1, keepdim=True)


@pytest.fixture(scope="module")
def images():
    x, y = load_fashion_mnist("train")
    return TensorImages(x[:N], y[:N])


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(1)
    return ConvNet(1, 10, width=8, depth=2).eval()


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_replay_fidelity(tmp_path, images, teacher, mix):
    dst, raw = str(tmp_path / "s.store"), str(tmp_path / "raw")
    relabel(images, teacher, dst, EPOCHS, mix=mix, batch_size=BATCH, rank=10, quant="fp16", seed=7,
            raw_dump=raw, raw_fp16=False, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["raw", "s.store"]          # scratch file removed
    store = LabelStore(dst)
    meta = store.aug
    assert meta.attrs["input_size"] == 28 and meta.attrs["mix"] == mix and meta.attrs["batch_size"] == BATCH
    assert len(meta.rows) == N * EPOCHS and len(meta.batches) == EPOCHS * 5
    assert set(meta.batches["mix_type"]) == {MIX_CUTMIX if mix == "cutmix" else MIX_MIXUP}
    ds = CompressedSoftLabelDataset(images, store)
    rows = meta.rows
    for e, b in [(0, 0), (1, 3), (3, 4), (2, 1)]:
        coords, flip, perm, lam, bbox, logits = torch.load(f"{raw}/epoch_{e}/batch_{b}.tar", weights_only=False)
        sel = rows[(rows["epoch"] == e) & (rows["batch"] == b)]
        # the raw dump follows the SRe2L 6-item types
        assert coords.dtype == torch.float32 and coords.shape == (BATCH, 4) and flip.dtype == torch.bool
        assert perm.dtype == torch.int64 and isinstance(lam, float)
        assert (bbox is None) == (mix == "mixup")
        if bbox is not None:
            assert all(isinstance(v, np.int64) for v in bbox)
        assert torch.equal(coords, torch.from_numpy(np.ascontiguousarray(sel["coords"]))) and torch.equal(perm, torch.from_numpy(np.ascontiguousarray(sel["mix_index"])).long())
        ds.set_epoch(e)
        with torch.no_grad():
            out = centred(teacher(ds.views(sel["image"])))
        assert (out - centred(logits)).abs().max() <= 1e-5
        # compressed store: full rank, fp16 scratch and fp16 factors
        assert (out - ds.labels(sel["image"])).abs().max() <= 2e-3 * out.abs().max()


def test_seeded_and_sampler_order(tmp_path, images, teacher):
    a, b = str(tmp_path / "a.store"), str(tmp_path / "b.store")
    for p in (a, b):
        relabel(images, teacher, p, 2, mix="cutmix", batch_size=16, rank=2, seed=5, progress=False)
    ma, mb = LabelStore(a).aug, LabelStore(b).aug
    assert np.array_equal(ma.rows, mb.rows) and ma.batches.tobytes() == mb.batches.tobytes()
    assert torch.equal(LabelStore(a).rows(np.arange(N), np.ones(N, int)), LabelStore(b).rows(np.arange(N), np.ones(N, int)))
    # the dump order is torch's seeded RandomSampler / BatchSampler(drop_last=False), re-iterated per epoch
    g = torch.Generator().manual_seed(5)
    bs = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(N), generator=g), 16, drop_last=False)
    want = [i for _ in range(2) for batch in bs for i in batch]
    assert ma.rows["image"].tolist() == want
    assert ma.batches["size"].tolist() == [16, 16, 8] * 2


def test_cli_relabel(tmp_path, images, teacher, monkeypatch):
    model = tmp_path / "t.safetensors"
    save_model(teacher, model)
    dst = tmp_path / "cli.store"
    import score_codec.training.images as data
    monkeypatch.setattr(data, "load_fashion_mnist", lambda split="train", root=None: (images.images, torch.as_tensor(images.targets)))
    rc = cli_main(["relabel", "fashion-mnist:train", str(model), str(dst), "--epochs", "2", "--batch-size", "8",
                   "--rank", "3", "--quiet"])
    assert rc == 0
    store = LabelStore(str(dst))
    assert len(store) == N and store.ks.tolist() == [2] * N and store.aug.attrs["seed"] == 42
    assert store.labels.tolist() == images.targets.tolist()
    assert cli_main(["relabel", "fashion-mnist:train", str(model), str(dst), "--epochs", "2", "--quiet"]) == 2
    # --plain-teacher runs the module as given; by default a batch-norm teacher runs folded: the same
    # labels up to rounding
    bn = ConvNet(1, 10, width=8, depth=2, norm="batch")
    with torch.no_grad():
        bn(images.images[:16].float() / 255)   # running statistics of real images (training mode)
    save_model(bn.eval(), model)
    args = ["relabel", "fashion-mnist:train", str(model), "--epochs", "2", "--batch-size", "8", "--rank", "3", "--quant", "fp16",
            "--quiet"]
    fast, plain = tmp_path / "fast.store", tmp_path / "plain.store"
    assert cli_main(args[:3] + [str(fast)] + args[3:]) == 0
    assert cli_main(args[:3] + [str(plain)] + args[3:] + ["--plain-teacher"]) == 0
    a, b = LabelStore(str(fast)).matrix(5), LabelStore(str(plain)).matrix(5)
    assert (a - b).abs().max() <= 5e-3 * b.abs().max()   # fp16 factors of each store round differently


def test_bad_arguments(tmp_path, images, teacher):
    with pytest.raises(InputError, match="mix type"):
        relabel(images, teacher, str(tmp_path / "x"), 1, mix="blend", progress=False)
    with pytest.raises(InputError, match="epochs"):
        relabel(images, teacher, str(tmp_path / "x"), 0, progress=False)


def test_train_student_refuses_batch_size_and_is_seeded(tmp_path, images, teacher):
    from score_codec.training.student import train_student
    from score_codec.errors import BatchSizeMismatchError

    dst = str(tmp_path / "s.store")
    relabel(images, teacher, dst, 2, mix="cutmix", batch_size=BATCH, rank=4, progress=False)
    fn = lambda: ConvNet(1, 10, width=4, depth=1)  # noqa: E731
    with pytest.raises(BatchSizeMismatchError):
        train_student(dst, images, None, fn, epochs=1, batch_size=4, device="cpu", progress=False)
    runs = [train_student(dst, images, images, fn, epochs=3, seed=1, device="cpu", progress=False) for _ in range(2)]
    assert runs[0]["final_loss"] == runs[1]["final_loss"] and runs[0]["top1"] == runs[1]["top1"]
    assert runs[0]["steps"] == 3 * 5 and 0.0 <= runs[0]["top1"] <= 1.0
    for a, b in zip(runs[0]["model"].parameters(), runs[1]["model"].parameters()):
        assert torch.equal(a, b)
    # the channels-last default trains the same student as the NCHW layout, up to float rounding
    assert runs[0]["model"].body[0].weight.is_contiguous(memory_format=torch.channels_last)
    nchw = train_student(dst, images, images, fn, epochs=3, seed=1, device="cpu", progress=False, channels_last=False)
    assert nchw["model"].body[0].weight.is_contiguous()
    assert abs(nchw["final_loss"] - runs[0]["final_loss"]) <= 1e-3 * abs(runs[0]["final_loss"])
    for a, b in zip(runs[0]["model"].parameters(), nchw["model"].parameters()):
        assert_close_rel(a, b, 1e-2)   # Adam's step turns rounding in near-zero gradients into ~lr-sized moves


def test_train_teacher_cli_reports_accuracy_and_refuses_to_overwrite(tmp_path, capsys):
    import json

    out = str(tmp_path / "t.safetensors")
    assert cli_main(["train-teacher", "fashion-mnist:train:600", out, "--test", "fashion-mnist:test:300",
                     "--epochs", "8", "--width", "16", "--depth", "2", "--norm", "batch", "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["teacher"] == out and 0.2 < res["test_top1"] <= 1.0 and os.path.isfile(out)   # 2x chance after 40 steps
    before = os.path.getmtime(out)
    assert cli_main(["train-teacher", "fashion-mnist:train:600", out, "--epochs", "1", "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err and os.path.getmtime(out) == before
