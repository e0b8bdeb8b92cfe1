"""benchmarks/gpu_step: the three label paths of a training step, at toy size on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks.gpu_step.run import MODES, main, render, student


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_step")
    main(["--device", "cpu", "--steps", "3", "--image-size", "32", "--batch-size", "16", "--warmup", "1",
          "--rounds", "1", "--workers", "1", "--out", str(out)])
    with open(out / "gpu_step.json") as fh:
        res = json.load(fh)
    return res, (out / "gpu_step.md").read_text()


def test_reports_every_mode_with_its_steps_and_overhead(result):
    res, md = result
    c = res["config"]
    assert (c["device"], c["batch_size"], c["image_size"], c["steps"], c["amp"]) == ("cpu", 16, 32, 3, False)
    assert res["device"] and res["torch"] == torch.__version__
    for m in MODES:
        r = res["results"][m]
        assert len(r["step"]["all_ms"]) == 3 and len(r["label"]["all_ms"]) == 3
        assert r["step"]["p10_ms"] <= r["step"]["median_ms"] <= r["step"]["p90_ms"]
        assert r["images_per_s"] == pytest.approx(1e3 * 16 / r["step"]["median_ms"])
        assert r["overhead_vs_raw"] == pytest.approx(r["step"]["median_ms"] / res["results"]["raw"]["step"]["median_ms"] - 1)
    assert res["results"]["raw"]["overhead_vs_raw"] == 0.0
    assert md == render(res)
    assert all(line.count("|") == 7 for line in md.splitlines() if line.startswith("|"))


def test_the_three_modes_train_on_the_same_labels_within_codec_error(result):
    k = result[0]["label_check"]
    # both decodes return the reader's rows for the same (image, epoch) pairs ...
    assert k["device_vs_workers"] < 1e-4
    assert k["device_vs_raw"] == pytest.approx(k["codec_error"], abs=1e-3)
    assert k["workers_vs_raw"] == pytest.approx(k["codec_error"], abs=1e-3)
    # ... and the comparison can tell rows apart: other images' rows are further away than the codec error
    assert k["other_rows_vs_raw"] > k["codec_error"]


def test_resnet18_student_has_the_imagenet_stem():
    model = student("resnet18", 1000)
    n = sum(p.numel() for p in model.parameters())
    assert n == pytest.approx(11_689_512, rel=1e-6)      # torchvision's resnet18 parameter count
    with torch.no_grad():
        assert model.stem(torch.zeros(1, 3, 224, 224)).shape == (1, 64, 56, 56)
