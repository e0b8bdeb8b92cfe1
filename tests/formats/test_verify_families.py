"""``verify --against`` on every dump family: each file's rows meet the store's, whole or pooled."""
from __future__ import annotations

import numpy as np
import pytest

import score_codec as sc
from tests import dumpgen
from tests.common import head_like_logits


def _dump(family, root):
    if family == "fkd":
        dumpgen.make_fkd_dump(root, ipc=2, crops=4, topk=3)
        return root, {}
    if family == "lpqld":
        dumpgen.make_lpqld_dump(root, ipc=2, epochs=3, batch_size=5, topk=3)
        return root, {"num_classes": 10}
    if family == "npy":
        path = root + ".npy"
        np.save(path, head_like_logits(20, 4, 10, d=6, seed=1).numpy().astype(np.float16))
        return path, {}
    dumpgen.make_epoch_dump(root, family=family, ipc=2, epochs=4, batch_size=8, mix="cutmix")
    return root, {}


@pytest.mark.parametrize("family", ["sre2l", "lpld", "gvbsm", "edc", "fkd", "lpqld", "npy"])
def test_verify_against_the_dump_matches_every_row(tmp_path, family):
    src, opts = _dump(family, str(tmp_path / "dump"))
    st = sc.encode_dump(src, tmp_path / "s.store", method="svd", rank=10, quant="fp32", **opts)
    rep = sc.verify_store(tmp_path / "s.store", against=src, **opts)
    assert rep["ok"], rep
    fid = rep["fidelity"]
    assert fid["overall"]["rows"] == st["rows"] == sum(d["rows"] for d in fid["per_epoch"].values())
    assert fid["overall"]["kl_t1"] < 1e-3 and fid["overall"]["top1_agreement"] > 0.99


@pytest.mark.parametrize("family", ["sre2l", "gvbsm", "npy"])
def test_verify_against_the_dump_compares_a_pooled_store_on_its_kept_epochs(tmp_path, family):
    src, opts = _dump(family, str(tmp_path / "dump"))
    sc.encode_dump(src, tmp_path / "p.store", method="global", rank=10, quant="fp32", keep_epochs=2, **opts)
    kept = sc.LabelStore(str(tmp_path / "p.store")).kept_epochs
    rep = sc.verify_store(tmp_path / "p.store", against=src, **opts)
    assert rep["ok"], rep
    assert sorted(int(e) for e in rep["fidelity"]["per_epoch"]) == sorted(kept)
    assert rep["fidelity"]["overall"]["kl_t1"] < 1e-3
