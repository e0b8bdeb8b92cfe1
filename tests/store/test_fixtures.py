"""Stores written by released format versions must keep decoding (docs/FORMAT.md section 8)."""
import os

import numpy as np
import pytest

import score_codec as sc

from tests.common import assert_float32_decode_equal, make_meta

HERE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "v1")
NAMES = ["svd_int8_residual.store", "shared_fp16.h5", "rpca_bf16_mean.store"]


@pytest.mark.parametrize("name", NAMES)
def test_v1_fixture_decodes_to_its_saved_logits(name):
    store = sc.LabelStore(os.path.join(HERE, name))
    want = np.load(os.path.join(HERE, name.split(".")[0] + ".expected.npy"))
    got = np.stack([store.matrix(i).numpy() for i in range(len(store))])
    # the same bytes decode to the same values up to float32 summation order (BLAS-dependent)
    assert_float32_decode_equal(got, want, terms=int(store.index["rank"].max()) + 2)
    assert store.verify() == []
    meta = make_meta(12, 6, batch=4)
    assert store.aug.rows.tobytes() == meta.rows.tobytes()
    assert store.manifest["format_version"] == 1


def test_v1_fixtures_stay_close_to_the_source_logits():
    y = np.load(os.path.join(HERE, "source_logits.npy"))
    yc = y - y.mean(-1, keepdims=True)
    store = sc.LabelStore(os.path.join(HERE, "rpca_bf16_mean.store"))
    got = np.stack([store.matrix(i).numpy() for i in range(len(store))])
    # keep_mean: the absolute logits come back, not the centred ones
    assert np.abs(got - y).max() < np.abs(got - yc).max()
