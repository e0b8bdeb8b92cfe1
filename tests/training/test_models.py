"""Models: shapes at several resolutions, safetensors round trip, load errors."""
import pytest
import torch

from score_codec.errors import InputError
from score_codec.training.models import ARCHITECTURES, ConvNet, ResNet, load_model, save_model


@pytest.mark.parametrize("res", [7, 28, 33])
def test_features_and_logits_shapes(res):
    conv = ConvNet(in_channels=1, num_classes=10, width=8, depth=3)
    res_net = ResNet(in_channels=3, num_classes=5, width=4, blocks=(1, 1))
    x1, x3 = torch.rand(2, 1, res, res), torch.rand(2, 3, res, res)
    assert conv.features(x1).shape == (2, 8) and conv(x1).shape == (2, 10)
    assert res_net.features(x3).shape == (2, 8) and res_net(x3).shape == (2, 5)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_save_load_identical_outputs(tmp_path, arch):
    cfg = dict(in_channels=1, num_classes=4, width=4, **({"depth": 2} if arch == "convnet" else {"blocks": [1, 1]}))
    m = ARCHITECTURES[arch](**cfg)
    if arch == "resnet":   # non-trivial BN statistics so the buffers matter
        m.train()
        m(torch.rand(8, 1, 12, 12))
    m.eval()
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    m2 = load_model(str(path))
    assert type(m2) is type(m) and m2.config == m.config and not m2.training
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
        assert torch.equal(m.features(x), m2.features(x))


def make_tiny():  # factory used through the "module:factory" spec
    return ConvNet(1, 3, width=4, depth=1)


def test_factory_spec():
    m = load_model("tests.training.test_models:make_tiny")
    assert isinstance(m, ConvNet) and m.config["num_classes"] == 3


def test_bad_specs(tmp_path):
    with pytest.raises(InputError, match="expected an existing"):
        load_model(str(tmp_path / "missing.safetensors"))
    with pytest.raises(InputError, match="cannot import"):
        load_model("no_such_module_xyz:factory")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="bad.safetensors"):
        load_model(str(bad))
