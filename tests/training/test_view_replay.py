"""The dataset's batch view path (crop into one tensor, mix in place) against the per-sample path and the
teacher's whole-batch mix, for CutMix, Mixup and no mix, with stored, no and all flips."""
import multiprocessing as mp
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from score_codec.store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from score_codec.training.augment import apply_mix, hflip, resized_crop
from score_codec.training.dataset import CompressedSoftLabelDataset
from score_codec.training.images import TensorImages, load_fashion_mnist
from score_codec.training.models import ConvNet
from score_codec.training.relabel import relabel
from score_codec.training.replay import ReplayBatchSampler, replay_mix, replay_mix_

N, EPOCHS, BATCH, SIZE = 20, 2, 8, 10


@pytest.fixture(scope="module")
def images():
    x, y = load_fashion_mnist("train")
    return TensorImages(x[:N, :, 6:20, 8:20], y[:N])


@pytest.fixture(scope="module", params=["cutmix", "mixup", "none"])
def mixed_store(request, tmp_path_factory, images):
    torch.manual_seed(0)
    teacher = ConvNet(1, 10, width=4, depth=1).eval()
    dst = str(tmp_path_factory.mktemp("views") / f"{request.param}.store")
    # N is not a multiple of BATCH: the last stored batch is short
    relabel(images, teacher, dst, EPOCHS, mix=request.param, batch_size=BATCH, rank=4, quant="fp16", seed=5,
            input_size=SIZE, progress=False)
    return request.param, dst


def teacher_batch(ds, images, ids):
    """The teacher's inputs for one stored batch: crop and flip every image, then one apply_mix."""
    plan = ds.plan()
    crops = []
    for i in ids:
        v = resized_crop(images[i][0], torch.from_numpy(plan.coords[i]), SIZE)
        crops.append(hflip(v) if plan.flip[i] else v)
    x = torch.stack(crops)
    rows, offset = ds.store.aug_reader.epoch_rows(plan.epoch)
    b = int(plan.batch[ids[0]])
    kind = int(plan.mix_type[b])
    if kind == MIX_NONE:
        return x, x
    perm = torch.as_tensor(rows["mix_index"][plan.row[ids]].astype(np.int64))
    box = tuple(int(v) for v in plan.bbox[b]) if kind == MIX_CUTMIX else None
    return apply_mix(x, kind, perm, float(plan.lam[b]), box), x


@pytest.mark.parametrize("flips", ["stored", "none", "all"])
def test_batch_views_equal_per_sample_views_and_teacher_inputs(images, mixed_store, flips):
    mix, path = mixed_store
    ds = CompressedSoftLabelDataset(images, path, epoch=1, decode_labels=False)
    plan = ds.plan()
    if flips != "stored":
        plan.flip[:] = flips == "all"
    batches = [list(b) for b in ReplayBatchSampler(path, 1)]
    assert len(batches[-1]) < BATCH
    rng = np.random.default_rng(0)
    changed = 0
    for batch in batches:
        whole = ds.views(batch)
        want, unmixed = teacher_batch(ds, images, batch)
        assert torch.equal(whole, want)
        changed += int(not torch.equal(whole, unmixed))
        # one sample at a time: each row's partner is cropped beside it
        assert torch.equal(torch.cat([ds.views([i]) for i in batch]), whole)
        # any order, a part of the batch, repeated ids
        order = rng.permutation(len(batch))
        assert torch.equal(ds.views([batch[k] for k in order]), whole[order])
        part = [0, len(batch) - 1, 0, 1]
        assert torch.equal(ds.views([batch[k] for k in part]), whole[part])
        # __getitems__ serves the same views
        got = ds.__getitems__(batch)
        assert torch.equal(torch.stack([s[0] for s in got]), whole)
        if flips != "stored":   # the flips under test are the ones replayed
            crop = resized_crop(images[batch[0]][0], torch.from_numpy(plan.coords[batch[0]]), SIZE)
            assert torch.equal(unmixed[0], crop.flip(-1) if flips == "all" else crop)
            assert not torch.equal(crop, crop.flip(-1))
    # the mixes under test really happened
    assert (changed > 0) == (mix != "none")


def _params(b, groups, seed=0):
    """Per-row mix parameters of ``b`` rows in ``groups`` (kind, lam, box) blocks."""
    rng = np.random.default_rng(seed)
    kind = np.zeros(b, np.uint8)
    lam = np.zeros(b)
    box = np.full((b, 4), -1, np.int32)
    for rows, (k, l, bx) in zip(np.array_split(np.arange(b), len(groups)), groups):
        kind[rows], lam[rows] = k, l
        if bx is not None:
            box[rows] = bx
    return kind, lam, box, rng


@pytest.mark.parametrize("extras", [0, 3])
def test_in_place_mix_equals_replay_mix(extras):
    b = 12
    groups = [(MIX_CUTMIX, 0.0, (2, 1, 7, 5)), (MIX_CUTMIX, 0.0, (0, 0, 9, 3)), (MIX_MIXUP, 0.3141, None),
              (MIX_NONE, 0.0, None)]
    kind, lam, box, rng = _params(b, groups)
    x = torch.rand(b + extras, 2, 9, 9)
    partner = np.full(b, -1, np.int64)
    for rows in np.array_split(np.arange(b), len(groups))[:3]:
        # partners within the group (a stored batch), one from outside the requested rows if any
        partner[rows] = rng.permutation(rows)
        if extras:
            partner[rows[0]] = b + rng.integers(extras)
    want = replay_mix(x[:b], x[np.maximum(partner, 0)], kind, lam, box)
    got = replay_mix_(x.clone(), partner, kind, lam, box)
    assert torch.equal(got[:b], want)
    assert torch.equal(got[b:], x[b:])
    # a contiguous whole batch is mixed without a gather of its rows (a slice): same values
    one = np.arange(b)
    perm = rng.permutation(b)
    for k, l, bx in groups[:3]:
        kk, ll, bb, _ = _params(b, [(k, l, bx)])
        assert torch.equal(replay_mix_(x[:b].clone(), perm, kk, ll, bb), apply_mix(x[:b], k, torch.as_tensor(perm), l, bx))
        assert torch.equal(replay_mix_(x[:b].clone(), -np.ones(b, np.int64), kk, ll, bb), x[:b])
        assert torch.equal(replay_mix_(x[:b].clone(), one, kk, ll, bb)[:b],
                           replay_mix(x[:b], x[:b], kk, ll, bb))


def test_in_place_mix_reads_partners_mixed_elsewhere_unmixed():
    """Arguments where a partner is mixed with other parameters (no stored batch does this) are still
    exact: the partners are read from a copy."""
    b = 8
    kind, lam, box, rng = _params(b, [(MIX_CUTMIX, 0.0, (1, 1, 6, 6)), (MIX_MIXUP, 0.25, None)])
    x = torch.rand(b, 3, 8, 8)
    partner = rng.permutation(b)
    want = replay_mix(x, x[partner], kind, lam, box)
    assert torch.equal(replay_mix_(x.clone(), partner, kind, lam, box), want)


def test_crop_box_of_one_view_equals_coords_to_box():
    """resized_crop's per-view box arithmetic in Python floats rounds exactly as coords_to_box does."""
    from score_codec.training.augment import _one_box, coords_to_box, crop_coords

    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 700, size=(4000, 2))
    coords = [torch.from_numpy(rng.random((4000, 4)).astype(np.float32)),
              torch.from_numpy(rng.random((4000, 4))),
              # halves and exact boxes: the rounding ties
              torch.from_numpy((rng.integers(0, 40, (4000, 4)) / 8.0 / sizes[:, [0, 1, 0, 1]]).astype(np.float32))]
    h, w = torch.from_numpy(sizes[:, 0]), torch.from_numpy(sizes[:, 1])
    boxes = rng.integers(0, 300, (4000, 4))
    coords.append(crop_coords(torch.from_numpy(boxes), h, w))
    ties = 0
    for c in coords:
        want = coords_to_box(c, h, w).tolist()
        for k in range(len(c)):
            assert _one_box(c[k], int(h[k]), int(w[k])) == tuple(want[k])
            assert _one_box(c[k].numpy(), int(h[k]), int(w[k])) == tuple(want[k])
        ties += int((((c.double() * torch.stack([h, w, h, w], 1)) % 1) == 0.5).sum())
    assert ties > 20
    assert _one_box(torch.tensor([float("nan"), 0, 1, 1]), 5, 5) is None
    assert _one_box(torch.tensor([0, 0, 3, 3]), 5, 5) is None    # integer boxes take the other path


def _refuse_table_builds(_worker: int) -> None:
    from score_codec.store.dense import DenseFactors

    def refuse(*_a, **_k):
        raise AssertionError("a DataLoader worker built its own decode tables")
    DenseFactors.build = refuse


def test_fork_workers_share_the_decode_tables(images, tmp_path):
    """The tables built with the dataset are used by fork-started workers, which never build their own;
    labels are the same as the main process decodes."""
    torch.manual_seed(0)
    dst = str(tmp_path / "labels.store")
    relabel(images, ConvNet(1, 10, width=4, depth=1).eval(), dst, EPOCHS, mix="cutmix", batch_size=BATCH, rank=4,
            quant="fp16", seed=5, input_size=SIZE, progress=False)
    ds = CompressedSoftLabelDataset(images, dst, epoch=1)
    sampler = ReplayBatchSampler(dst, 1)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2, worker_init_fn=_refuse_table_builds,
                        multiprocessing_context=mp.get_context("fork"))
    got = [(v, l, i) for v, l, _, i in loader]
    ids = torch.cat([i for _, _, i in got])
    assert sorted(ids.tolist()) == list(range(N))
    assert torch.equal(torch.cat([l for _, l, _ in got]), ds.labels(ids.numpy()))
    assert torch.equal(torch.cat([v for v, _, _ in got]), torch.cat([ds.views(b) for b in sampler]))
    # a spawned worker gets no tables through the pipe and builds its own
    assert pickle.loads(pickle.dumps(ds))._tables is None
