"""Inference copies: batch norm folded into convolutions and channels-last weights give the model's outputs."""
import glob
import logging
import os

import pytest
import torch
import torch.nn as nn

from score_codec.errors import InputError
from score_codec.training.inference import channels_last_if_safe, fast_inference_model, fold_batchnorm, inference_copy
from score_codec.training.models import ConvNet, ResNet
from score_codec.training.relabel import relabel
from score_codec.training.images import TensorImages
from tests.common import assert_close_rel


def _with_bn_statistics(model: nn.Module, channels: int) -> nn.Module:
    """``model`` in eval mode with non-trivial running statistics (a few training-mode passes)."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, channels, 16, 16) * 3 + 1)
    return model.eval()


MODELS = {
    "convnet-batch": lambda: ConvNet(1, 7, width=8, depth=3, norm="batch"),
    "convnet-instance": lambda: ConvNet(1, 7, width=8, depth=3),
    "resnet": lambda: ResNet(3, 5, width=4, blocks=(1, 1)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_copy_equals_model(name):
    model = _with_bn_statistics(MODELS[name](), 3 if name == "resnet" else 1)
    fast = inference_copy(model)
    x = torch.rand(6, 3 if name == "resnet" else 1, 16, 16)
    with torch.no_grad():
        assert_close_rel(fast(x), model(x), 1e-5)
        assert_close_rel(fast.features(x), model.features(x), 1e-5)
    if name != "convnet-instance":   # every batch norm follows a conv in these architectures
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    # the original is untouched and still trainable
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (name != "convnet-instance")
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for p in fast.parameters()) and not fast.training


def test_fold_counts_pairs_and_refuses_training_mode():
    model = ResNet(3, 5, width=4, blocks=(1, 1))   # stem, 2 per block, the second block's 1x1 shortcut
    with pytest.raises(InputError, match="eval mode"):
        fold_batchnorm(model)
    assert fold_batchnorm(model.eval()) == 1 + 2 + 3
    # a batch norm that normalises by the batch's own statistics at inference has nothing fixed to fold
    model = ResNet(3, 5, width=4, blocks=(1,))
    model.stem[1] = nn.BatchNorm2d(4, track_running_stats=False)
    assert fold_batchnorm(model.eval()) == 2
    assert isinstance(model.stem[1], nn.BatchNorm2d)
    # ... nor does one left in training mode inside an eval model, or one whose conv is
    model = ResNet(3, 5, width=4, blocks=(1,)).eval()
    model.stem[1].train()
    model.stages[0].conv1.train()
    assert fold_batchnorm(model) == 1   # only the block's conv2 / bn2
    assert isinstance(model.stem[1], nn.BatchNorm2d) and isinstance(model.stages[0].bn1, nn.BatchNorm2d)


class _SharedConv(nn.Module):
    """A conv whose output feeds a batch norm *and* a skip: folding would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        if float(x.sum()) > 0:
            return self.bn(self.conv(x))
        return self.conv(x)


@pytest.mark.parametrize("cls", [_SharedConv, _Untraceable])
def test_unsafe_or_untraceable_models_are_left_unfolded(cls, caplog):
    model = _with_bn_statistics(cls(), 1)
    with caplog.at_level(logging.INFO, logger="score_codec.training.inference"):
        assert fold_batchnorm(fast := inference_copy(model, fold=False)) == 0
    assert isinstance(fast.bn, nn.BatchNorm2d)
    if cls is _Untraceable:
        assert "not traceable" in caplog.text
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert_close_rel(inference_copy(model)(x), model(x), 1e-6)


def test_relabel_fast_teacher_matches_plain_teacher(tmp_path):
    torch.manual_seed(2)
    ds = TensorImages(torch.rand(24, 1, 16, 16), torch.arange(24) % 6)
    teacher = _with_bn_statistics(ConvNet(1, 6, width=8, depth=2, norm="batch"), 1)
    dumps = {}
    for fast in (True, False):
        raw = str(tmp_path / f"raw{fast}")
        relabel(ds, teacher, str(tmp_path / f"s{fast}.store"), 3, batch_size=8, method="svd", rank=1, seed=3,
                raw_dump=raw, raw_fp16=False, progress=False, fast_teacher=fast)
        files = sorted(glob.glob(os.path.join(raw, "epoch_*", "batch_*.tar")))
        dumps[fast] = [torch.load(f, weights_only=False) for f in files]
    assert len(dumps[True]) == len(dumps[False]) == 3 * 3
    for a, b in zip(dumps[True], dumps[False]):
        # the same views (the augmentation streams do not depend on the teacher), the same logits to rounding
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and a[3] == b[3]
        assert_close_rel(a[5], b[5], 1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_channels_last_training_step_is_the_same_computation(name):
    """What train_student / train_teacher's channels_last changes: the layout, not the loss or gradients."""
    ch = 3 if name == "resnet" else 1
    torch.manual_seed(4)
    nchw = MODELS[name]().train()
    cl = MODELS[name]().train()
    cl.load_state_dict(nchw.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    x, y = torch.rand(8, ch, 16, 16), torch.arange(8) % 5
    losses = []
    for m in (nchw, cl):
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.detach())
    assert_close_rel(losses[1], losses[0], 1e-5)
    # all gradients as one vector: a conv bias before batch norm has a gradient of pure rounding noise
    grads = [torch.cat([p.grad.flatten() for p in m.parameters()]) for m in (nchw, cl)]
    assert_close_rel(grads[1], grads[0], 1e-4)


class _ViewFlatten(nn.Module):
    """The classic DC ConvNet head: ``view`` of a 2x2 feature map, which channels-last strides refuse."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        h = nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(h.view(h.shape[0], -1))


def test_hooked_and_parametrized_convs_are_not_folded():
    hooked = _with_bn_statistics(ConvNet(1, 7, width=8, depth=2, norm="batch"), 1)
    hooked.body[0].register_forward_hook(lambda m, i, o: o * 2)
    param = _with_bn_statistics(ConvNet(1, 7, width=8, depth=2, norm="batch"), 1)
    nn.utils.parametrizations.weight_norm(param.body[4])
    for model in (hooked, param):
        assert fold_batchnorm(copy := inference_copy(model, fold=False)) == 1   # only the other pair
        x = torch.rand(3, 1, 16, 16)
        with torch.no_grad():
            assert_close_rel(copy(x), model(x), 1e-5)


def test_fast_model_falls_back_when_the_copy_fails_its_probe(caplog):
    model = _with_bn_statistics(_ViewFlatten(), 1)
    x = torch.rand(4, 1, 8, 8)
    with caplog.at_level(logging.WARNING, logger="score_codec.training.inference"):
        assert fast_inference_model(model, x) is model
    assert "runs as given" in caplog.text and not model.training
    good = _with_bn_statistics(ConvNet(1, 7, width=8, depth=2, norm="batch"), 1)
    fast = fast_inference_model(good, torch.rand(4, 1, 16, 16))
    assert fast is not good and not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())


def test_channels_last_if_safe():
    model = ConvNet(1, 7, width=8, depth=2, norm="batch").train()
    assert channels_last_if_safe(model, torch.rand(2, 1, 16, 16)) is model and model.training
    assert model.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    view = _ViewFlatten().train()
    channels_last_if_safe(view, torch.rand(2, 1, 8, 8))
    assert view.conv.weight.is_contiguous() and view.training
    view(torch.rand(2, 1, 8, 8)).sum().backward()   # still trains


def test_train_teacher_channels_last_and_evaluate_without_grad():
    from score_codec.training.student import evaluate, train_teacher

    torch.manual_seed(0)
    ds = TensorImages(torch.rand(16, 1, 8, 8), torch.arange(16) % 3)
    net = train_teacher(ds, ConvNet(1, 3, width=4, depth=2, norm="batch"), epochs=1, batch_size=8, progress=False)
    assert net.body[0].weight.is_contiguous(memory_format=torch.channels_last) and not net.training
    view = train_teacher(ds, _ViewFlatten(), epochs=1, batch_size=8, progress=False)
    assert view.conv.weight.is_contiguous()

    class NoGrad(nn.Module):
        def forward(self, x):
            assert not torch.is_grad_enabled()
            return torch.zeros(x.shape[0], 3)

    assert 0.0 <= evaluate(NoGrad(), ds, 8, "cpu") <= 1.0
