"""Decoded dumps add no measurable error to the store's labels, and ``verify --against`` measures what was
written."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch

from score_codec import LabelStore
from score_codec.cli import main

from tests.dumpgen import make_epoch_dump, teacher

EPS16 = float(np.finfo(np.float16).eps)


def _run(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def _fp16_kl_bound(z: torch.Tensor) -> float:
    """Mean over rows of the KL that rounding logits ``z`` (B, C) to fp16 can cost: each logit moves by at most
    half a step (eps16 / 2 |z|), and KL(p || p') is sum_c p_c d_c^2 / 2 to second order (a factor 2 of slack)."""
    z = z.double()
    p = torch.softmax(z, -1)
    d = EPS16 / 2 * z.abs()
    return float((p * d * d).sum(-1).mean())


class _Confident(torch.nn.Module):
    """The test teacher with logits spread like a large classifier's: row means far below 0, a top logit
    tens above the mean (where fp16's step is coarse)."""

    def __init__(self):
        super().__init__()
        self.net = teacher()

    def forward(self, x):
        return 6.0 * self.net(x) - 80.0


@pytest.mark.parametrize("rank", ["2", "3"])
def test_verify_against_a_decoded_dump_reports_its_rounding_only(tmp_path, rank):
    src = tmp_path / "src"
    make_epoch_dump(str(src), "sre2l", ipc=4, epochs=3, model=_Confident())
    store, dec = str(tmp_path / "s.store"), str(tmp_path / "dec")
    assert _run(["encode", str(src), store, "--method", "svd", "--rank", rank, "--quiet"])[0] == 0
    assert _run(["decode", store, dec, "--quiet"])[0] == 0
    st = LabelStore(store)
    rows = st.aug.rows
    z = st.rows(rows["image"].astype(np.int64), rows["aug"].astype(np.int64))
    written = z - z.amax(1, keepdim=True)
    code, out = _run(["verify", store, "--against", dec, "--json", "--quiet"])
    own = json.loads(out)["fidelity"]["overall"]
    assert code == 0 and own["top1_agreement"] == 1.0 and own["rows"] == len(rows)
    # what the dump holds differs from the store by fp16 rounding of max-shifted rows, nothing more
    assert own["kl_t1"] <= _fp16_kl_bound(written)
    # and that rounding is far below the codec's own error, so the dump is as good as the store
    code, out = _run(["verify", store, "--against", str(src), "--json", "--quiet"])
    codec = json.loads(out)["fidelity"]["overall"]
    assert own["kl_t1"] < 0.01 * codec["kl_t1"]
