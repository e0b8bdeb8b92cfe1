"""Teachers by name (torchvision:/timm:), weights files, and input normalisation replayed exactly.

torchvision and timm are not importable in the test environment (and timm imports torchvision), so the
named-model path runs against stand-in ``torchvision.models`` / ``timm`` modules put into ``sys.modules``:
``get_model(name, weights=None, num_classes=...)`` builds a small network with torchvision's layout (a trunk
and a final ``fc``, no ``features`` method) and ``create_model(name, pretrained=False, num_classes=...)`` builds
score's own ResNet.  What this checks is score's side: spec parsing, the calls into the libraries, weights
files, key prefixes, head inference, errors, normalisation and replay.  It does not check that a real
torchvision or timm release accepts these calls.
"""
import argparse
import json
import os
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from score_codec import LabelStore
from score_codec.cli import main as cli_main
from score_codec.errors import InputError, WeightsMismatchError
from score_codec.training.dataset import CompressedSoftLabelDataset
from score_codec.training.images import ImageFolder, TensorImages
from score_codec.training.models import ResNet
from score_codec.training.normalize import (IMAGENET_MEAN, IMAGENET_STD, normalize_views,
                                            resolve_normalization)
from score_codec.training.relabel import relabel
from score_codec.training.replay import ReplayBatchSampler
from score_codec.training.teachers import load_teacher, named_model, penultimate_features, read_state_dict

N, SIZE, BATCH = 24, 16, 8


def centred(z):
    return z - z.mean(-1, keepdim=True)


class TVNet(nn.Module):
    """torchvision's layout: conv1 / bn1 / ... / fc, no features() method."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn1(self.conv1(x))), 1).flatten(1))


CALLS = []


def _get_model(name, weights=None, **kw):
    CALLS.append(("torchvision", name, weights, dict(kw)))
    if name != "resnet18":
        raise ValueError(f"Unknown model {name}")
    return TVNet(**kw)


def _create_model(name, pretrained=False, num_classes=1000, in_chans=3):
    CALLS.append(("timm", name, pretrained, dict(num_classes=num_classes)))
    if name != "resnet18":
        raise RuntimeError(f"Unknown model ({name})")
    return ResNet(in_chans, num_classes, width=4, blocks=(1, 1))


@pytest.fixture
def registry(monkeypatch):
    """Stand-in torchvision.models and timm modules (see the module docstring)."""
    tv = types.ModuleType("torchvision")
    tvm = types.ModuleType("torchvision.models")
    tvm.get_model = _get_model
    tv.models = tvm
    timm = types.ModuleType("timm")
    timm.create_model = _create_model
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.models", tvm)
    monkeypatch.setitem(sys.modules, "timm", timm)
    CALLS.clear()
    return CALLS


def _randomised(model, seed=0):
    """Weights and batch-norm statistics away from their initial values, so loading is visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.1)
    return model.eval()

def _png_folder(root, per_class: int, size: int, seed: int, classes: int = 2):
    """An ImageFolder of random RGB PNGs (``classes`` folders c0, c1, ... of ``per_class`` images)."""
    from PIL import Image

    g = np.random.default_rng(seed)
    for c in range(classes):
        os.makedirs(root / f"c{c}")
        for i in range(per_class):
            Image.fromarray(g.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root



@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(N, 3, 20, 20, generator=g) * 255).round().byte()
    return TensorImages(x, torch.arange(N) % 4)


def test_named_torchvision_checkpoint_dict(tmp_path, registry):
    src = _randomised(TVNet(10))
    path = str(tmp_path / "ckpt.pth.tar")
    # a training script's checkpoint: DDP "module." keys, optimizer-free extras and an argparse Namespace
    torch.save({"epoch": 3, "arch": "resnet18", "args": argparse.Namespace(lr=0.1),
                "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    model = load_teacher("torchvision:resnet18", weights=path)
    # num_classes came from the checkpoint's fc (10 rows), not torchvision's default 1000
    assert registry[-1] == ("torchvision", "resnet18", None, {"num_classes": 10})
    assert isinstance(model, TVNet) and not model.training
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)


def test_named_timm_safetensors_and_num_classes(tmp_path, registry):
    from safetensors.torch import save_file

    src = _randomised(ResNet(3, 7, width=4, blocks=(1, 1)), seed=1)
    path = str(tmp_path / "w.safetensors")
    save_file({"_orig_mod." + k: v.contiguous() for k, v in src.state_dict().items()}, path)
    model = load_teacher("timm:resnet18", weights=path, num_classes=7)
    assert registry[-1] == ("timm", "resnet18", False, {"num_classes": 7})
    x = torch.rand(2, 3, 12, 12)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    # no weights: the library default class count, nothing loaded
    assert named_model("timm:resnet18").classifier.out_features == 1000


def test_weights_mismatch_is_named(tmp_path, registry):
    path = str(tmp_path / "w.pth")
    state = _randomised(TVNet(10)).state_dict()
    state["extra.weight"] = torch.zeros(3)
    del state["bn1.running_mean"]
    torch.save({"model": state}, path)
    with pytest.raises(WeightsMismatchError) as err:
        load_teacher("torchvision:resnet18", weights=path)
    msg = str(err.value)
    assert "1 missing from the file" in msg and "bn1.running_mean" in msg
    assert "1 not in the model" in msg and "extra.weight" in msg and path in msg
    # an explicit num_classes that disagrees with the checkpoint: shapes listed
    torch.save(_randomised(TVNet(10)).state_dict(), path)
    with pytest.raises(WeightsMismatchError, match=r"fc.weight: file \(10, 8\), model \(5, 8\)"):
        load_teacher("torchvision:resnet18", weights=path, num_classes=5)


def test_bad_weights_files(tmp_path, registry):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="junk.pth: not a readable torch.save file"):
        read_state_dict(str(junk))
    nostate = str(tmp_path / "nostate.pth")
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, nostate)
    with pytest.raises(InputError, match="expected a state dict .* found a dict with keys \\['epoch', 'optimizer'\\]"):
        read_state_dict(nostate)
    unsafe = str(tmp_path / "unsafe.pth")
    torch.save({"state_dict": TVNet(3).state_dict(), "obj": types.SimpleNamespace(a=1)}, unsafe)
    with pytest.raises(InputError, match="weights_only=True"):
        read_state_dict(unsafe)
    with pytest.raises(InputError, match="does not exist"):
        read_state_dict(str(tmp_path / "missing.pth"))


def test_missing_library_names_pip(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.models", None)   # import raises ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(InputError, match="`pip install torchvision`"):
        load_teacher("torchvision:resnet18")
    with pytest.raises(InputError, match="`pip install timm`"):
        load_teacher("timm:resnet18")


def test_unknown_names_refused(registry):
    with pytest.raises(InputError, match="torchvision cannot build 'resnet9000'"):
        load_teacher("torchvision:resnet9000")
    with pytest.raises(InputError, match="timm cannot build 'nope'"):
        load_teacher("timm:nope")
    with pytest.raises(InputError, match="expected 'timm:NAME'"):
        load_teacher("timm:")


def test_penultimate_features(registry):
    tv = _randomised(TVNet(5))
    x = torch.rand(3, 3, 10, 10)
    want = F.adaptive_avg_pool2d(F.relu(tv.bn1(tv.conv1(x))), 1).flatten(1)
    assert torch.equal(penultimate_features(tv, x), want)   # the input of fc, found by a hook
    assert not tv.fc._forward_pre_hooks                     # and the hook is gone again
    r = _randomised(ResNet(3, 5, width=4, blocks=(1,)))
    assert torch.equal(penultimate_features(r, x), r.features(x))


def test_resolve_normalization():
    assert resolve_normalization("imagenet") == (IMAGENET_MEAN, IMAGENET_STD)
    assert resolve_normalization(None) is None and resolve_normalization("none") is None
    assert resolve_normalization(mean=[0.5]) == ((0.5,), (1.0,))
    assert resolve_normalization({"mean": [0.1, 0.2], "std": [2, 4]}) == ((0.1, 0.2), (2.0, 4.0))
    for bad in (dict(normalize="imagenet", mean=[0.5]), dict(normalize="cifar"), dict(mean=[0, 0], std=[1, 1, 1]),
                dict(std=[0.0]), dict(mean=[float("nan")])):
        with pytest.raises(InputError):
            resolve_normalization(**bad)


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_replayed_views_equal_teacher_inputs(tmp_path, images, mix):
    """The tensors the teacher received (a forward pre-hook during relabel) equal the dataset's views."""
    torch.manual_seed(0)
    teacher = _randomised(TVNet(4))
    seen = []
    teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    dst = str(tmp_path / "n.store")
    # the plain teacher: the hook sits on this module, not on a folded copy of it
    relabel(images, teacher, dst, 3, mix=mix, batch_size=BATCH, input_size=SIZE, normalize="imagenet", rank=4,
            seed=11, progress=False, fast_teacher=False)
    store = LabelStore(dst)
    assert store.aug.attrs["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    ds = CompressedSoftLabelDataset(images, dst)
    assert ds.normalization == (IMAGENET_MEAN, IMAGENET_STD)
    raw = CompressedSoftLabelDataset(images, dst, normalize=False)
    sampler = ReplayBatchSampler(dst)
    k = 0
    for e in range(3):
        ds.set_epoch(e)
        raw.set_epoch(e)
        sampler.set_epoch(e)
        for ids in sampler:
            got = ds.views(ids)
            assert torch.equal(got, seen[k]), (e, k)
            # the same through __getitems__ (what a DataLoader calls)
            assert torch.equal(torch.stack([s[0] for s in ds.__getitems__(ids)]), seen[k])
            # normalize=False: [0, 1] views, the normalisation undone by the user's own step
            plain = raw.views(ids)
            assert float(plain.min()) >= 0 and float(plain.max()) <= 1
            assert torch.equal(normalize_views(plain, ds.normalization), got)
            k += 1
    assert k == len(seen) == 3 * 3
    assert any(float(v.min()) < 0 for v in seen)   # the teacher really saw normalised inputs


def test_cli_relabel_named_teacher_image_folder(tmp_path, registry, capsys):
    """``score-codec relabel FOLDER torchvision:resnet18 --weights w.pth --normalize imagenet`` (and timm)."""
    from PIL import Image

    root = tmp_path / "imgs"
    g = np.random.default_rng(0)
    for c in range(3):
        os.makedirs(root / f"c{c}")
        for i in range(4):   # JPEGs of varied sizes, as an ImageNet folder has
            arr = g.integers(0, 256, (18 + 3 * i, 22 + 2 * c, 3), dtype=np.uint8)
            img = Image.fromarray(arr)
            # one grayscale JPEG among the colour ones, as ImageNet has: read as RGB like the rest
            (img.convert("L") if (c, i) == (1, 2) else img).save(root / f"c{c}" / f"{i}.jpg", quality=90)
    folder = ImageFolder(str(root))
    assert [folder[k][0].shape[0] for k in range(12)] == [3] * 12
    assert Image.open(folder.samples[6][0]).mode == "L"
    src = _randomised(TVNet(3), seed=5)
    w = str(tmp_path / "w.pth")
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, w)
    dst = str(tmp_path / "tv.store")
    rc = cli_main(["relabel", str(root), "torchvision:resnet18", dst, "--weights", w, "--normalize", "imagenet",
                   "--input-size", "16", "--epochs", "2", "--batch-size", "4", "--quant", "fp32", "--quiet"])
    assert rc == 0
    ds = CompressedSoftLabelDataset(str(root), dst)
    assert ds.input_size == 16 and ds.normalization == (IMAGENET_MEAN, IMAGENET_STD)
    ds.set_epoch(1)
    ids = np.arange(12)
    with torch.no_grad():
        want = src(ds.views(ids))
    got = ds.labels(ids)
    # full-rank store of fp16 scratch rows: the teacher's logits on the replayed (normalised) views
    # (stores keep logits up to a per-row shift: softmax ignores it)
    assert float((centred(got) - centred(want)).abs().max()) <= 2e-3 * float(want.abs().max())

    from safetensors.torch import save_file

    tsrc = _randomised(ResNet(3, 3, width=4, blocks=(1, 1)), seed=6)
    save_file({k: v.contiguous() for k, v in tsrc.state_dict().items()}, str(tmp_path / "t.safetensors"))
    dst2 = str(tmp_path / "timm.store")
    rc = cli_main(["relabel", str(root), "timm:resnet18", dst2, "--weights", str(tmp_path / "t.safetensors"),
                   "--mean", "0.5,0.5,0.5", "--std", "0.25", "--input-size", "16", "--epochs", "1",
                   "--batch-size", "4", "--mix", "none", "--quant", "fp32", "--quiet"])
    assert rc == 0
    assert LabelStore(dst2).aug.attrs["normalize"] == {"mean": [0.5, 0.5, 0.5], "std": [0.25]}
    ds2 = CompressedSoftLabelDataset(str(root), dst2)
    with torch.no_grad():
        want = tsrc(ds2.views(ids))
    assert float((centred(ds2.labels(ids)) - centred(want)).abs().max()) <= 2e-3 * float(want.abs().max())
    # a mismatched checkpoint exits 2 with the named error
    rc = cli_main(["relabel", str(root), "timm:resnet18", str(tmp_path / "x.store"), "--weights", w,
                   "--epochs", "1", "--quiet"])
    assert rc == 2 and "do not fit ResNet" in capsys.readouterr().err


def test_normalisation_channels_checked(tmp_path):
    x = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(InputError, match="mean has 3 values but the images have 1 channels"):
        relabel(TensorImages(x, [0, 1, 0, 1]), ResNet(1, 2, width=4, blocks=(1,)), str(tmp_path / "s.store"), 1,
                normalize="imagenet", progress=False)


def test_store_without_normalisation_serves_unit_views(tmp_path, images):
    dst = str(tmp_path / "plain.store")
    relabel(images, _randomised(TVNet(4)), dst, 1, batch_size=BATCH, input_size=SIZE, rank=4, progress=False)
    assert "normalize" not in LabelStore(dst).aug.attrs
    ds = CompressedSoftLabelDataset(images, dst)
    v = ds.views(np.arange(N))
    assert ds.normalization is None and float(v.min()) >= 0 and float(v.max()) <= 1


def test_train_student_named_arch_and_normalised_eval(tmp_path, images, registry, monkeypatch):
    """train-student builds a named student; its evaluation normalises test images as the views were."""
    from score_codec.training import student
    from score_codec.training.augment import resized_crop
    from score_codec.training.student import evaluate

    dst = str(tmp_path / "s.store")
    relabel(images, _randomised(TVNet(4)), dst, 2, batch_size=BATCH, input_size=SIZE, normalize="imagenet",
            rank=4, progress=False)
    model = _randomised(TVNet(4))
    # evaluate(normalize=...) scores the model on normalised whole images
    x = torch.stack([resized_crop(images[i][0], (0, 0, 20, 20), SIZE) for i in range(N)])
    with torch.no_grad():
        pred = model(normalize_views(x, (IMAGENET_MEAN, IMAGENET_STD))).argmax(1)
    want = float((pred == torch.as_tensor(images.targets)).float().mean())
    assert evaluate(model, images, SIZE, "cpu", normalize=(IMAGENET_MEAN, IMAGENET_STD)) == want

    seen = {}

    def spy(model, test, size, dev, normalize=None):
        seen["normalize"] = normalize
        return 0.0

    monkeypatch.setattr(student, "evaluate", spy)
    res = student.train_student(dst, images, images, lambda: named_model("torchvision:resnet18", 4), epochs=2,
                                device="cpu", progress=False)
    assert isinstance(res["model"], TVNet) and res["steps"] == 2 * 3 and np.isfinite(res["final_loss"])
    assert registry[-1] == ("torchvision", "resnet18", None, {"num_classes": 4})
    assert seen["normalize"] == (IMAGENET_MEAN, IMAGENET_STD)


def test_score_select_named_teacher(tmp_path, registry):
    """score-select's feature pass: a named teacher with weights and normalisation; features are the fc input."""
    from score_select.cli import main as select_main
    from score_select.features import load_features

    root = _png_folder(tmp_path / "pool", per_class=4, size=12, seed=1)
    src = _randomised(TVNet(2), seed=7)
    w = str(tmp_path / "w.pth")
    torch.save({"model": src.state_dict()}, w)
    out = tmp_path / "sel"
    rc = select_main([str(root), "torchvision:resnet18", str(out), "--ipc", "1", "--method", "random", "--views", "0",
                      "--weights", w, "--normalize", "imagenet", "--quiet"])
    assert rc == 0
    data, meta = load_features(str(out / "features.safetensors"))
    assert meta["normalize"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)} and meta["weights"] == w
    folder = ImageFolder(str(root))
    x = normalize_views(torch.stack([folder[i][0] for i in range(8)]), (IMAGENET_MEAN, IMAGENET_STD))
    with torch.no_grad():
        want = penultimate_features(src, x)
        # the pass runs a batch-norm-folded copy: equal up to float32 rounding
        assert float((data["features"] - want).abs().max()) <= 1e-5 * float(want.abs().max())
        assert float((data["logits"] - src(x)).abs().max()) <= 1e-5 * float(src(x).abs().max())
    assert len(json.load(open(out / "selection.json"))["indices"]) == 2


def test_cli_named_arch_teacher_then_student(tmp_path, registry, capsys):
    """train-teacher --arch torchvision:NAME saves a state dict that relabel takes as --weights; train-student
    builds its student by name too."""

    root = _png_folder(tmp_path / "imgs", per_class=6, size=16, seed=2)
    w = str(tmp_path / "teacher.safetensors")
    assert cli_main(["train-teacher", str(root), w, "--arch", "torchvision:resnet18", "--epochs", "1",
                     "--device", "cpu", "--quiet"]) == 0
    assert registry[-1] == ("torchvision", "resnet18", None, {"num_classes": 2})
    assert set(read_state_dict(w)) == set(TVNet(2).state_dict())
    capsys.readouterr()
    dst = str(tmp_path / "s.store")
    assert cli_main(["relabel", str(root), "torchvision:resnet18", dst, "--weights", w, "--normalize", "imagenet",
                     "--epochs", "2", "--batch-size", "4", "--quiet"]) == 0
    assert registry[-1] == ("torchvision", "resnet18", None, {"num_classes": 2})   # classes from the weights
    capsys.readouterr()
    assert cli_main(["train-student", str(root), dst, "--arch", "timm:resnet18", "--epochs", "2", "--device", "cpu",
                     "--test", str(root), "--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert registry[-1] == ("timm", "resnet18", False, {"num_classes": 2}) and res["steps"] == 2 * 3
    with pytest.raises(SystemExit):
        cli_main(["train-student", str(root), dst, "--arch", "keras:resnet"])
