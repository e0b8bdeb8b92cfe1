"""train_teacher's schedule and views options, and kd_loss on probability targets."""
from __future__ import annotations

import pytest
import torch

from score_codec.errors import InputError
from score_codec.training.images import TensorImages
from score_codec.training.models import ConvNet
from score_codec.training.student import kd_loss, train_teacher


def _data():
    g = torch.Generator().manual_seed(0)
    return TensorImages(torch.rand(24, 1, 8, 8, generator=g), torch.arange(24) % 3)


def _net():
    torch.manual_seed(0)
    return ConvNet(1, 3, width=4, depth=2, norm="batch")


def test_kd_loss_on_probabilities_is_the_loss_on_the_logits_they_come_from():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) * 3
    for T in (1.0, 4.0, 20.0):
        assert torch.allclose(kd_loss(s, torch.softmax(t / T, 1), T, probs=True), kd_loss(s, t, T), atol=1e-6)
    p = torch.zeros(6, 5)
    p[:, 0] = 1.0                                           # targets with zeros have no logits: still finite
    assert torch.isfinite(kd_loss(s, p, 4.0, probs=True))


def test_views_replace_the_augmentation_and_see_every_batch_with_the_generator():
    calls = []

    def views(x, g):
        assert isinstance(g, torch.Generator) and x.dtype == torch.float32 and float(x.max()) <= 1.0
        calls.append(tuple(x.shape))
        return x

    train_teacher(_data(), _net(), epochs=2, batch_size=8, progress=False, channels_last=False, views=views)
    assert calls == [(8, 1, 8, 8)] * 6                      # 2 epochs x 3 batches, shapes kept


def test_schedule_changes_the_training_and_is_checked():
    kw = dict(epochs=1, batch_size=8, progress=False, channels_last=False, bf16=False)
    cos = train_teacher(_data(), _net(), **kw)
    one = train_teacher(_data(), _net(), schedule="one-cycle", **kw)
    again = train_teacher(_data(), _net(), schedule="one-cycle", **kw)
    w = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])
    assert not torch.allclose(w(cos), w(one))
    assert torch.allclose(w(one), w(again))                 # same seed, same schedule: same weights
    with pytest.raises(InputError, match="schedule 'linear'"):
        train_teacher(_data(), _net(), schedule="linear", **kw)
