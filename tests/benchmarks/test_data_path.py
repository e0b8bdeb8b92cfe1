"""benchmarks/data_path: the three label sources serve the same inputs, and the report holds what it claims."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from benchmarks.data_path.run import MODES, main, render
from benchmarks.data_path.sources import SRe2LBatchSampler, SRe2LDumpDataset, TimedStoreDataset
from score_codec import LabelStore
from score_codec.training.images import ImageFolder

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "benchmarks", "data_path", "results")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("out")
    main(["--preset", "quick", "--cache", str(cache), "--out", str(out)])
    with open(out / "data_path.json") as fh:
        res = json.load(fh)
    return res, (out / "data_path.md").read_text(), cache


def test_quick_preset_reports_every_source(quick):
    res, md, _ = quick
    c = res["config"]
    assert (c["images"], c["workers"], c["input_size"], c["num_classes"]) == (40, [0], 224, 1000)
    assert {"cpu", "cpu_count", "torch"} <= set(res["machine"]) and res["machine"]["torch"] == torch.__version__
    r = res["results"]["0"]
    for m in MODES:
        s = r[m]
        assert all(run["images"] == 40 for run in r["runs"][m])
        assert s["images_per_s"] == pytest.approx(40 / s["epoch_s"])
        assert s["over_none"] == pytest.approx(s["epoch_s"] / r["none"]["epoch_s"] - 1)
        assert 0 <= s["label_cpu_share"] < 1
        assert all(len(run["label_ms_batches"]) == 5 for run in r["runs"][m])     # 40 images, batch 8
        assert 0 <= s["label_ms_median"] <= s["label_ms_max"]
    assert r["none"]["label_cpu_share"] == 0 and r["raw"]["label_cpu_share"] > 0 and r["store"]["label_cpu_share"] > 0
    assert r["store_over_raw"] == pytest.approx(r["store"]["epoch_s"] / r["raw"]["epoch_s"] - 1)
    assert md == render(res)


def test_sources_serve_the_same_batches_and_views(quick):
    check = quick[0]["check"]
    assert check["same_batches"] and check["same_views"]


def test_each_source_serves_its_own_rows_of_the_same_batch(quick):
    res, _, cache = quick
    (img_dir,) = [p for p in cache.iterdir() if p.name.startswith("jpeg-")]
    (lab_dir,) = [p for p in cache.iterdir() if p.name.startswith("labels-")]
    folder, store = ImageFolder(str(img_dir)), str(lab_dir / "labels.store")
    bs = res["config"]["batch_size"]
    raw = SRe2LDumpDataset(folder, str(lab_dir / "sre2l"), bs, 224)
    ours = TimedStoreDataset(folder, store)
    batches = SRe2LBatchSampler(len(folder), bs).batches(0)
    b = 1
    got_raw, got_ours = raw.__getitems__(batches[b]), ours.__getitems__(batches[b])
    dumped = torch.load(lab_dir / "sre2l" / "epoch_0" / f"batch_{b}.tar", weights_only=False)[5]
    assert got_raw[1].dtype == torch.float16 and torch.equal(got_raw[1], dumped)
    ids = np.asarray(batches[b])
    assert torch.equal(got_ours[1], LabelStore(store).rows(ids, np.zeros_like(ids)))
    assert torch.equal(got_raw[3], torch.as_tensor(ids)) and torch.equal(got_ours[3], torch.as_tensor(ids))
    assert torch.equal(got_raw[0], got_ours[0])
    assert got_ours[4] >= got_ours[5] > 0


def test_committed_results_render_to_the_committed_table():
    path = os.path.join(RESULTS, "data_path.json")
    if not os.path.isfile(path):
        pytest.skip("no committed data_path results")
    with open(path) as fh:
        res = json.load(fh)
    with open(os.path.join(RESULTS, "data_path.md")) as fh:
        assert fh.read() == render(res)
    assert res["check"]["same_batches"] and res["check"]["same_views"]
    assert set(res["results"]) == {str(w) for w in res["config"]["workers"]}
