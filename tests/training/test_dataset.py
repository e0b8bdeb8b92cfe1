"""CompressedSoftLabelDataset: exact view replay, DataLoader contract, decode paths, sharding."""
import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from score_codec import LabelStore
from score_codec.training.augment import apply_mix
from score_codec.training.images import ImageFolder, TensorImages, load_fashion_mnist, load_images
from score_codec.training.dataset import CompressedSoftLabelDataset, LabelDecoder
from score_codec.training.replay import ReplayBatchSampler, replay_mix
from score_codec.errors import BatchSizeMismatchError, InputError
from score_codec.store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from score_codec.training.models import ConvNet
from score_codec.training.relabel import relabel

N, EPOCHS, BATCH = 24, 3, 8


@pytest.fixture(scope="module")
def images():
    x, y = load_fashion_mnist("train")
    # 12x12 crops of the 28x28 images keep the views tiny
    return TensorImages(x[:N, :, 8:20, 8:20], y[:N])


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return ConvNet(1, 10, width=4, depth=1).eval()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, images, teacher):
    dst = str(tmp_path_factory.mktemp("ds") / "cutmix.store")
    relabel(images, teacher, dst, EPOCHS, mix="cutmix", batch_size=BATCH, rank=10, quant="fp16", seed=3,
            input_size=10, progress=False)
    return dst


def stream(ds, store_path, epochs, **loader_kw):
    """(views, labels, indices) per epoch through a DataLoader over the stored batch order."""
    sampler = ReplayBatchSampler(store_path)
    loader = DataLoader(ds, batch_sampler=sampler, **loader_kw)
    out = []
    for e in epochs:
        ds.set_epoch(e)
        sampler.set_epoch(e)
        out.append([(v, l, i) for v, l, _, i in loader])
    return out


def assert_same_stream(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb)
        for (va, la, ia), (vb, lb, ib) in zip(ea, eb):
            assert torch.equal(ia, ib) and torch.equal(va, vb) and torch.equal(la, lb)


def test_dataloader_streams_identical(images, store_path):
    ds = CompressedSoftLabelDataset(images, store_path)
    ref = stream(ds, store_path, range(EPOCHS))
    # epochs differ (otherwise the test could not see a stale epoch in persistent workers)
    assert not torch.equal(ref[0][0][1], ref[1][0][1])
    assert_same_stream(ref, stream(ds, store_path, range(EPOCHS), num_workers=2))
    assert_same_stream(ref, stream(ds, store_path, range(EPOCHS), num_workers=2, persistent_workers=True))
    spawn = stream(ds, store_path, [1, 2], num_workers=2, persistent_workers=True,
                   multiprocessing_context=mp.get_context("spawn"))
    assert_same_stream(ref[1:], spawn)


def test_epoch_must_be_set(images, store_path):
    ds = CompressedSoftLabelDataset(images, store_path)
    with pytest.raises(InputError, match="set_epoch"):
        ds[0]
    with pytest.raises(InputError, match="outside the dump's 3 epochs"):
        ds.set_epoch(EPOCHS)


def test_views_are_teacher_inputs(images, teacher, store_path):
    """The replayed mixed view through the teacher gives the stored logits (fp16 store bound)."""
    store = LabelStore(store_path)
    ds = CompressedSoftLabelDataset(images, store, epoch=2)
    ids = np.arange(N)
    with torch.no_grad():
        out = teacher(ds.views(ids))
    out = out - out.mean(-1, keepdim=True)
    lab = ds.labels(ids)
    assert (out - lab).abs().max() <= 2e-3 * out.abs().max()


def test_batched_and_single_decode_identical(images, store_path):
    ds = CompressedSoftLabelDataset(images, store_path, epoch=1)
    ids = [5, 0, 17, 3]
    batch = ds.__getitems__(ids)
    for k, i in enumerate(ids):
        v, l, c, j = ds[i]
        assert j == i and c == images.targets[i]
        assert torch.equal(v, batch[k][0]) and torch.equal(l, batch[k][1])
    store = LabelStore(store_path)
    for k, i in enumerate(ids):   # and against the per-image matrix decode
        assert torch.allclose(batch[k][1], store.matrix(i)[1], rtol=0, atol=1e-5)
    dec = LabelDecoder(store_path, device="cpu")
    assert torch.equal(dec(ids, 1), torch.stack([b[1] for b in batch]))
    assert torch.equal(dec(torch.tensor(ids), torch.ones(4, dtype=torch.long)), dec(ids, [1, 1, 1, 1]))


def test_sharding_disjoint_and_exact(images, store_path):
    ds = CompressedSoftLabelDataset(images, store_path, epoch=0)
    full = list(ReplayBatchSampler(store_path, 0))
    parts = [list(ReplayBatchSampler(store_path, 0, num_replicas=3, rank=r, pad=False)) for r in range(3)]
    for b, batch in enumerate(full):
        got = [p[b] for p in parts]
        flat = sum(got, [])
        assert sorted(flat) == sorted(batch) and len(flat) == len(set(flat))
        # a rank's rows are the same images the whole batch would give (partners loaded as needed)
        whole = ds.views(batch)
        for g in got:
            assert torch.equal(ds.views(g), whole[[batch.index(i) for i in g]])
    padded = [list(ReplayBatchSampler(store_path, 0, num_replicas=5, rank=r)) for r in range(5)]
    assert len({len(p[0]) for p in padded}) == 1


def test_replay_mix_matches_apply_mix():
    x = torch.rand(6, 2, 9, 9)
    perm = torch.randperm(6)
    for kind, lam, box in ((MIX_CUTMIX, 0.4, (2, 1, 7, 5)), (MIX_MIXUP, 0.3141, None)):
        want = apply_mix(x, kind, perm, lam, box)
        got = replay_mix(x, x[perm], np.full(6, kind), np.full(6, lam), np.tile(box or (-1,) * 4, (6, 1)))
        assert torch.equal(got, want)
    assert torch.equal(replay_mix(x, x[perm], np.full(6, MIX_NONE), np.zeros(6), np.zeros((6, 4))), x)


def test_batch_size_mismatch_refused(tmp_path, images, teacher, store_path):
    with pytest.raises(BatchSizeMismatchError, match="batch size 8"):
        ReplayBatchSampler(store_path, 0, batch_size=4)
    assert len(list(ReplayBatchSampler(store_path, 0, batch_size=8))) == 3
    plain = str(tmp_path / "nomix.store")
    relabel(images, teacher, plain, 2, mix="none", batch_size=BATCH, rank=4, progress=False)
    chunks = list(ReplayBatchSampler(plain, 1, batch_size=5))
    assert [len(c) for c in chunks] == [5] * 4 + [4]
    rows = LabelStore(plain).aug.rows
    assert sum(chunks, []) == rows["image"][rows["epoch"] == 1].tolist()


def test_image_folder_source(tmp_path, images, store_path):
    # the same pixels as PNG files in ImageFolder order give the same views
    order = []
    for i in range(N):
        d = tmp_path / f"c{int(images.targets[i]):02d}"
        d.mkdir(exist_ok=True)
        Image.fromarray(images.images[i, 0].numpy()).save(d / f"img{i:03d}.png")
        order.append((int(images.targets[i]), i))
    (tmp_path / "c00" / "notes.txt").write_text("skipped: not an image")
    folder = ImageFolder(tmp_path)
    perm = [i for _, i in sorted(order)]          # class-major, then file name
    assert [p.rsplit("/", 1)[-1] for p, _ in folder.samples] == [f"img{i:03d}.png" for i in perm]
    assert folder[0][0].shape == (1, 12, 12) and isinstance(load_images(str(tmp_path)), ImageFolder)
    reordered = TensorImages(images.images[perm], images.targets[perm])
    assert all(torch.equal(folder[k][0], reordered[k][0]) for k in range(N))
    rgb = tmp_path / "rgb" / "k"
    rgb.mkdir(parents=True)
    Image.new("RGB", (5, 4), (255, 0, 0)).save(rgb / "a.png")
    x, c = ImageFolder(tmp_path / "rgb")[0]
    assert x.shape == (3, 4, 5) and x[0].min() == 1 and x[1].max() == 0 and c == 0


def test_size_and_order_mismatch_refused(images, store_path):
    with pytest.raises(InputError, match="23 images"):
        CompressedSoftLabelDataset(TensorImages(images.images[:23], images.targets[:23]), store_path)
    rev = np.arange(N)[::-1].copy()
    with pytest.raises(InputError, match="not in the order"):
        CompressedSoftLabelDataset(TensorImages(images.images[rev], images.targets[rev]), store_path)
