"""Original FKD per-image files and plain .npy arrays."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests import dumpgen

from score_codec.cli import main  # noqa: E402
from score_codec.errors import FormatError  # noqa: E402
from score_codec.formats import detect_format, read_dump, write_dump  # noqa: E402
from score_codec.formats.fkd import fkd_files  # noqa: E402


def load_any(p):
    return torch.load(p, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("fp16", [False, True])
def test_fkd_read_and_write_back(tmp_path, fp16):
    root = str(tmp_path / "fkd")
    truth = dumpgen.make_fkd_dump(root, ipc=3, crops=5, topk=3, fp16=fp16)
    assert detect_format(root) == "fkd"
    with read_dump(root) as c:
        assert c.num_images == 30 and c.num_classes == 10
        assert np.array_equal(c.ks, np.full(30, 5)) and np.array_equal(c.labels, truth["labels"])
        for i in (0, 17):
            coords, flip, label = load_any(os.path.join(root, truth["files"][i]))
            r = c.aug.image_rows(i)
            assert np.array_equal(r["coords"], coords.astype(np.float32)) and np.array_equal(r["flip"].astype(bool), flip)
            p = torch.softmax(torch.from_numpy(c.matrix(i)).double(), 1).numpy()
            ids = label[:, 0].astype(np.int64)
            tol = 1e-3 if fp16 else 1e-6   # fp16 top-k can sum past 1; softmax renormalises
            assert np.allclose(np.take_along_axis(p, ids, 1), label[:, 1].astype(np.float64), atol=tol)
            rest = (1 - label[:, 1].astype(np.float64).sum(1)) / 7   # FKD marginal smoothing over C - k classes
            mask = np.ones_like(p, bool)
            np.put_along_axis(mask, ids, False, 1)
            assert np.allclose(p[mask].reshape(5, 7), np.clip(rest, 0, None)[:, None], atol=tol)
        write_dump(c, str(tmp_path / "out"), "fkd")
    assert fkd_files(str(tmp_path / "out")) == truth["files"]
    for rel in truth["files"]:
        a, b = load_any(os.path.join(root, rel)), load_any(os.path.join(str(tmp_path / "out"), rel))
        assert [x.dtype for x in a] == [x.dtype for x in b]
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        pos = a[2][:, 1] > 0          # zero (fp16-underflowed) probabilities tie: their ids are arbitrary
        assert np.array_equal(a[2][:, 0][pos], b[2][:, 0][pos])          # class ids exact
        assert np.allclose(a[2][:, 1], b[2][:, 1], atol=1e-3 if fp16 else 1e-6)


def test_fkd_bad_file_refused(tmp_path):
    root = str(tmp_path / "fkd")
    truth = dumpgen.make_fkd_dump(root, ipc=1, crops=3, topk=2)
    p = os.path.join(root, truth["files"][4])
    coords, flip, label = load_any(p)
    torch.save([coords, flip[:2], label], p)
    with pytest.raises(FormatError, match=r"img00004.tar: flip must be bool \[3\]"):
        read_dump(root, "fkd")


def test_fkd_through_cli(tmp_path):
    root = str(tmp_path / "fkd")
    truth = dumpgen.make_fkd_dump(root, ipc=2, crops=6, topk=3)
    assert main(["encode", root, str(tmp_path / "s"), "--method", "svd", "--rank", "6", "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "s"), str(tmp_path / "d"), "--quiet"]) == 0
    for rel in truth["files"]:
        a, b = load_any(os.path.join(root, rel)), load_any(os.path.join(str(tmp_path / "d"), rel))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and b[2].shape == a[2].shape
        assert (a[2][:, 0, 0] == b[2][:, 0, 0]).mean() >= 0.9                  # top-1 class kept


def test_npy_round_trip(tmp_path):
    y = np.random.default_rng(0).normal(size=(12, 4, 10)).astype(np.float32)
    np.save(str(tmp_path / "y.npy"), y)
    assert detect_format(str(tmp_path / "y.npy")) == "npy"
    with read_dump(str(tmp_path / "y.npy")) as c:
        assert np.array_equal(c.matrix(3), y[3])
        write_dump(c, str(tmp_path / "z.npy"), "npy")
    assert np.array_equal(np.load(str(tmp_path / "z.npy")), y)
    with pytest.raises(FormatError, match="no batch structure"):
        with read_dump(str(tmp_path / "y.npy")) as c:
            write_dump(c, str(tmp_path / "d"), "sre2l")
    assert not os.path.exists(str(tmp_path / "d"))
    assert main(["encode", str(tmp_path / "y.npy"), str(tmp_path / "s"), "--method", "svd", "--rank", "4", "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "s"), str(tmp_path / "w.npy"), "--quiet"]) == 0
    w = np.load(str(tmp_path / "w.npy"))
    assert np.allclose(w, y - y.mean(-1, keepdims=True), atol=2e-2)   # rank 4 = K: only fp16 error remains
