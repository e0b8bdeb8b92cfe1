"""LPQLD flat dumps: full logits and MR-k top-k."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests import dumpgen
from tests.formats.test_sre2l import assert_same_item, load_any  # noqa: E402

from score_codec.cli import main  # noqa: E402
from score_codec.errors import FormatError, InputError  # noqa: E402
from score_codec.formats.lpqld import epochs_of_batches  # noqa: E402
from score_codec.formats import detect_format, read_dump, write_dump  # noqa: E402


@pytest.mark.parametrize("topk", [None, 4])
def test_lpqld_round_trip(tmp_path, topk):
    root = str(tmp_path / "q")
    truth = dumpgen.make_lpqld_dump(root, ipc=4, epochs=2, batch_size=8, topk=topk)
    assert detect_format(root) == "lpqld"
    with read_dump(root, num_classes=10) as c:
        assert c.num_classes == 10 and c.num_images == 40
        for br in c.aug.batches:
            sl = c.aug.rows[br["row_start"]:br["row_start"] + br["size"]]
            assert sl["image"].tolist() == truth["index"][str(int(br["batch"]))]
        write_dump(c, str(tmp_path / "out"), "lpqld")
    files = sorted(os.listdir(root))
    assert sorted(os.listdir(tmp_path / "out")) == files
    for f in files:
        if f.endswith(".json"):
            assert json.load(open(os.path.join(root, f))) == json.load(open(tmp_path / "out" / f))
            continue
        a, b = load_any(os.path.join(root, f)), load_any(str(tmp_path / "out" / f))
        assert len(a) == len(b)
        for k in range(len(a)):
            assert_same_item(a[k], b[k], f"{f}[{k}]")   # lossless source: even top-k ids and values agree


def test_mrk_needs_num_classes(tmp_path):
    root = str(tmp_path / "q")
    dumpgen.make_lpqld_dump(root, ipc=1, epochs=1, batch_size=5, topk=3)
    with pytest.raises(InputError, match="pass --num-classes"):
        read_dump(root)


def test_mrk_through_cli(tmp_path):
    root = str(tmp_path / "q")
    dumpgen.make_lpqld_dump(root, ipc=2, epochs=2, batch_size=5, topk=3)
    assert main(["encode", root, str(tmp_path / "s"), "--num-classes", "10", "--method", "svd", "--rank", "2", "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "s"), str(tmp_path / "d"), "--quiet"]) == 0
    a, b = load_any(os.path.join(root, "batch_1.tar")), load_any(str(tmp_path / "d" / "batch_1.tar"))
    for k in range(5):
        assert_same_item(a[k], b[k], f"batch_1[{k}]")
    assert b[5].dtype == torch.float16 and b[6].dtype == torch.int16 and b[6].shape == a[6].shape
    assert (a[6][:, 0] == b[6][:, 0]).float().mean() >= 0.8


def test_mrk_verify_against(tmp_path, capsys):
    root = str(tmp_path / "q")
    dumpgen.make_lpqld_dump(root, ipc=2, epochs=2, batch_size=5, topk=3)
    assert main(["encode", root, str(tmp_path / "s"), "--num-classes", "10", "--rank", "3", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s"), "--against", root, "--json", "--quiet"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["fidelity"]["overall"]["rows"] == 20 * 2 // 5 * 5


@pytest.mark.parametrize("topk", [None, 3])
def test_randaugment_dumps_are_named_as_such(tmp_path, topk):
    root = str(tmp_path / "q")
    dumpgen.make_lpqld_dump(root, ipc=1, epochs=1, batch_size=5, topk=topk, randaugment=True)
    with pytest.raises(FormatError, match="RandAugment"):
        with read_dump(root, num_classes=10) as c:
            list(c.matrices())


@pytest.mark.parametrize("drop_last, keep", [(False, None), (True, 13), (False, 11)])
def test_epochs_are_numbered_by_the_sampler_not_by_batch_count(tmp_path, capsys, drop_last, keep):
    # 40 images in batches of 12: 4 batches an epoch with a short last one (drop_last=False) or 3 (True);
    # keep cuts the dump inside its last epoch
    root = str(tmp_path / "q")
    truth = dumpgen.make_lpqld_dump(root, ipc=4, epochs=4, batch_size=12, drop_last=drop_last, keep=keep)
    per = 3 if drop_last else 4
    want = [g // per for g in range(len(truth["index"]))]
    assert epochs_of_batches([truth["index"][str(g)] for g in range(len(want))], 40) == want
    assert main(["encode", root, str(tmp_path / "s"), "--method", "svd", "--rank", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "s"), "--against", root, "--json", "--quiet"]) == 0
    per_epoch = json.loads(capsys.readouterr().out)["fidelity"]["per_epoch"]
    rows = {str(e): sum(len(truth["index"][str(g)]) for g in range(len(want)) if want[g] == e) for e in set(want)}
    assert {e: d["rows"] for e, d in per_epoch.items()} == rows


def test_mrk_ratio_is_reported_against_the_dump_itself(tmp_path, capsys):
    root = str(tmp_path / "q")
    dumpgen.make_lpqld_dump(root, ipc=2, epochs=2, batch_size=5, topk=3)
    assert main(["encode", root, str(tmp_path / "s"), "--num-classes", "10", "--method", "svd", "--rank", "2",
                 "--json", "--quiet"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["source_label_bytes"] == st["rows"] * 3 * (2 + 2)        # k fp16 values + k int16 ids per row
    assert st["ratio_vs_source"] == pytest.approx(st["source_label_bytes"] / st["label_bytes"])
    assert st["ratio_vs_source"] < st["ratio"]
    assert main(["info", str(tmp_path / "s")]) == 0
    assert "the dump's top-k labels" in capsys.readouterr().out
