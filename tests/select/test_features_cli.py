"""Feature extraction, the safetensors cache and the score-select CLI end to end."""
import json
import os

import pytest
import torch
import torch.nn as nn

from score_codec.errors import InputError
from score_select.cli import main
from score_select.features import augment_views, extract, load_features, save_features


class Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6, classes)

    def features(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))

    def forward(self, x):
        return self.head(self.features(x))


def pool(n=14, size=12):
    return [(torch.rand(3, size, size), i % 3) for i in range(n)]


def test_extract_matches_the_model_batch_for_batch():
    model, data = Tiny().eval(), pool()
    out = extract(model, data, batch_size=4, num_views=3, progress=False)
    x = torch.stack([d[0] for d in data])
    with torch.no_grad():
        torch.testing.assert_close(out["features"], model.features(x))
        torch.testing.assert_close(out["logits"], model(x))
    assert out["labels"].tolist() == [d[1] for d in data]
    assert out["soft_labels"].shape == (14, 3, 3) and out["soft_labels"].dtype == torch.float16
    again = extract(model, data, batch_size=5, num_views=3, progress=False)
    torch.testing.assert_close(out["soft_labels"], again["soft_labels"], atol=2e-3, rtol=0)  # batch-independent
    other = extract(model, data, batch_size=4, num_views=3, seed=1, progress=False)
    assert not torch.equal(out["soft_labels"], other["soft_labels"])


def test_fast_extract_equals_the_plain_model_and_feature_fn_sees_the_model():
    from score_codec.training.models import ConvNet

    torch.manual_seed(0)
    model = ConvNet(3, 3, width=6, depth=2, norm="batch")
    with torch.no_grad():
        model(torch.rand(16, 3, 12, 12))   # running statistics
    data = pool()
    fast = extract(model, data, batch_size=4, num_views=2, progress=False)   # folded, channels-last copy
    plain = extract(model, data, batch_size=4, num_views=2, progress=False, fast=False)
    for k in ("features", "logits"):
        torch.testing.assert_close(fast[k], plain[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast["soft_labels"], plain["soft_labels"], rtol=2e-3, atol=2e-3)   # fp16
    seen = []
    extract(model, data, batch_size=4, progress=False, feature_fn=lambda m, x: seen.append(m) or m.features(x))
    assert all(m is model for m in seen)   # a feature_fn gets the model itself unless fast=True is asked for


def test_feature_fn_and_resizing_and_missing_features_method():
    model = Tiny()
    data = [(torch.rand(3, 10, 10), 0), (torch.rand(1, 14, 14), 1)]
    out = extract(model, data, image_size=8, feature_fn=lambda m, x: m.conv(x).amax((2, 3)), progress=False)
    assert out["features"].shape == (2, 6)
    with pytest.raises(InputError, match="different shapes"):
        extract(model, data, progress=False)
    with pytest.raises(InputError, match="features"):
        extract(nn.Linear(3, 3), data, progress=False)


def test_augment_views_keeps_identity_at_full_scale_without_flip():
    x = torch.rand(2, 3, 8, 8)
    v = augment_views(x, 2, torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    torch.testing.assert_close(v, x.repeat_interleave(2, 0), atol=1e-5, rtol=0)


def test_cache_round_trip(tmp_path):
    data = {"features": torch.randn(5, 4), "labels": torch.arange(5), "soft_labels": torch.randn(5, 2, 3).half()}
    p = tmp_path / "f.safetensors"
    save_features(p, data, {"paths": ["a", "b"], "views": 2})
    back, meta = load_features(p)
    assert all(torch.equal(back[k], v) for k, v in data.items())
    assert meta == {"paths": ["a", "b"], "views": 2}
    with pytest.raises(InputError):
        load_features(tmp_path / "missing.safetensors")


@pytest.fixture
def image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    g = torch.Generator().manual_seed(0)
    for c, name in enumerate(["cat", "dog", "fox"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            arr = (torch.rand(16, 16, 3, generator=g) * 255).byte().numpy()
            Image.fromarray(arr).save(root / name / f"img{i}.png")
    return root


@pytest.fixture
def teacher(tmp_path):
    models = pytest.importorskip("score_codec.training.models")
    m = models.ResNet(in_channels=3, num_classes=3, width=4)
    path = tmp_path / "teacher.safetensors"
    models.save_model(m, path)
    return path


def test_cli_selects_copies_and_reuses_the_cache(image_folder, teacher, tmp_path, capsys):
    out = tmp_path / "sel"
    rc = main([str(image_folder), str(teacher), str(out), "--ipc", "2", "--views", "3", "--copy", "--json",
               "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    sel = json.loads((out / "selection.json").read_text())
    assert summary["selected"] == 6 and len(sel["indices"]) == len(sel["paths"]) == len(sel["gains"]) == 6
    assert sel["objective_nats"] == pytest.approx(sum(sel["gains"]))
    for p, lab in zip(sel["paths"], sel["labels"]):
        assert os.path.basename(os.path.dirname(p)) == ["cat", "dog", "fox"][lab]
        assert (out / "images" / ["cat", "dog", "fox"][lab] / os.path.basename(p)).is_file()
    assert sorted(os.listdir(out / "images")) == ["cat", "dog", "fox"]
    # the cache lets a second run change beta without the teacher
    out2 = tmp_path / "sel2"
    rc = main([str(image_folder), "-", str(out2), "--ipc", "2", "--beta", "0", "--quiet",
               "--features", str(out / "features.safetensors")])
    assert rc == 0
    sel2 = json.loads((out2 / "selection.json").read_text())
    assert sel2["beta"] == 0 and sorted(sel2["labels"]) == [0, 0, 1, 1, 2, 2]


def test_cli_label_term_is_the_residual_by_default_and_the_papers_with_a_paper_preset(image_folder, teacher,
                                                                                       tmp_path):
    """selection.json records the label term: the residual by default, the paper's with ``--preset`` (its
    beta was tuned for that term), and an explicit ``--label-rate`` wins."""
    feats = tmp_path / "f.safetensors"
    runs = {"default": [], "preset": ["--preset", "imagenette"],
            "named": ["--preset", "imagenette", "--label-rate", "residual"]}
    got = {}
    for name, extra in runs.items():
        src = str(teacher) if not feats.exists() else "-"
        assert main([str(image_folder), src, str(tmp_path / name), "--ipc", "2", "--views", "3", "--quiet",
                     "--features", str(feats), *extra]) == 0
        got[name] = json.loads((tmp_path / name / "selection.json").read_text())["label_rate"]
    assert got == {"default": "residual", "preset": "image", "named": "residual"}


def test_cli_exits_2_with_one_line_on_bad_input(image_folder, teacher, tmp_path, capsys):
    rc = main([str(image_folder), str(teacher), str(tmp_path / "o"), "--ipc", "99", "--views", "0", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("score-select: error:") and "\n" not in err
    rc = main([str(tmp_path / "nowhere"), str(teacher), str(tmp_path / "o2"), "--ipc", "1", "--quiet"])
    assert rc == 2
    rc = main([str(image_folder), "-", str(tmp_path / "o3"), "--ipc", "1", "--quiet"])
    assert rc == 2
    rc = main([str(image_folder), str(teacher), str(tmp_path / "o4"), "--ipc", "1", "--method", "nope",
               "--views", "0", "--quiet"])
    assert rc == 2 and "unknown selection method" in capsys.readouterr().err


def test_missing_teacher_leaves_no_output_directory(tmp_path, capsys):
    from score_select.cli import main

    out = tmp_path / "sel"
    assert main(["fashion-mnist:train:50", str(tmp_path / "no_teacher.safetensors"), str(out), "--ipc", "1"]) == 2
    assert not out.exists()
    assert "error" in capsys.readouterr().err
