"""G-VBSM (7-item) and EDC (8-item) dumps: stored indices, exact write-back."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from tests import dumpgen
from tests.formats.test_sre2l import assert_same_dump, load_any  # noqa: E402

from score_codec.errors import FormatError  # noqa: E402
from score_codec.formats import detect_format, read_dump, write_dump  # noqa: E402


@pytest.mark.parametrize("family", ["gvbsm", "edc"])
def test_indexed_dump_round_trip(family, tmp_path):
    root = str(tmp_path / family)
    truth = dumpgen.make_epoch_dump(root, family=family, ipc=3, epochs=3, batch_size=8)
    assert detect_format(root) == family
    if family == "edc":  # a non-zero shuffle block must survive too
        p = os.path.join(root, "epoch_1", "batch_2.tar")
        items = load_any(p)
        items[7][1] = torch.tensor([[1, 0], [0, 1]])
        torch.save(items, p)
    with read_dump(root) as c:
        assert c.aug.attrs["mapping"] == "stored" and c.num_images == 30
        for br in c.aug.batches:
            sl = c.aug.rows[br["row_start"]:br["row_start"] + br["size"]]
            assert sl["image"].tolist() == truth["batches"][int(br["epoch"])][int(br["batch"])]
        assert np.array_equal(c.labels, np.arange(30) // 3)
        write_dump(c, str(tmp_path / "out"), family)
    assert_same_dump(root, str(tmp_path / "out"))


def test_bad_index_item_is_refused(tmp_path):
    root = str(tmp_path / "g")
    dumpgen.make_epoch_dump(root, family="gvbsm", ipc=2, epochs=1, batch_size=8)
    p = os.path.join(root, "epoch_0", "batch_1.tar")
    items = load_any(p)
    items[6] = items[6][:3]
    torch.save(items, p)
    with pytest.raises(FormatError, match=r"batch_1.tar: item 6 \(index\) must be an int64 tensor \[8\]"):
        read_dump(root)
