"""A pooled store replays, for every training epoch, exactly the kept source epoch's crops, flips and mixes."""
import pytest
import torch

import score_codec as sc
from score_codec.errors import InputError
from score_codec.training.dataset import CompressedSoftLabelDataset
from score_codec.training.images import TensorImages, load_fashion_mnist
from score_codec.training.models import ConvNet
from score_codec.training.relabel import relabel
from score_codec.training.replay import ReplayBatchSampler

N, EPOCHS, BATCH = 24, 6, 8


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    x, y = load_fashion_mnist("train")
    images = TensorImages(x[:N, :, 8:20, 8:20], y[:N])
    torch.manual_seed(0)
    teacher = ConvNet(1, 10, width=4, depth=1).eval()
    root = tmp_path_factory.mktemp("pool")
    kw = dict(mix="cutmix", batch_size=BATCH, rank=10, quant="fp16", seed=3, input_size=10, progress=False)
    relabel(images, teacher, str(root / "all.store"), EPOCHS, **kw)
    stats = relabel(images, teacher, str(root / "pooled.store"), EPOCHS, keep_epochs=2, **kw)
    return images, str(root / "all.store"), str(root / "pooled.store"), stats


def test_relabel_keeps_the_asked_epochs(stores):
    _, _, pooled, stats = stores
    store = sc.LabelStore(pooled)
    assert store.kept_epochs == [0, 3] and store.source_epochs == EPOCHS and stats["keep_epochs"] == 2
    assert stats["source_rows"] == N * EPOCHS and store.ks.tolist() == [2] * N


def test_every_training_epoch_replays_its_kept_source_epoch(stores):
    images, full, pooled, _ = stores
    a = CompressedSoftLabelDataset(images, full)
    p = CompressedSoftLabelDataset(images, pooled)
    assert p.epochs == EPOCHS
    kept = sc.LabelStore(pooled).kept_epochs
    for e in range(EPOCHS):
        src = kept[e % len(kept)]
        p.set_epoch(e)
        a.set_epoch(src)
        sp, sa = ReplayBatchSampler(pooled, epoch=e), ReplayBatchSampler(full, epoch=src)
        assert list(sp) == list(sa)
        for batch in sa:
            assert torch.equal(p.views(batch), a.views(batch))
            # the labels are the same teacher rows, coded on another basis (rank C: near exact)
            assert torch.allclose(p.labels(batch), a.labels(batch), atol=2e-2)
    with pytest.raises(InputError, match="outside"):
        p.set_epoch(EPOCHS)
