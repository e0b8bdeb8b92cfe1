"""encode_dump / decode_dump: the library calls behind ``score-codec encode`` / ``decode`` write what the CLI writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import score_codec as sc
from tests import dumpgen
from tests.common import assert_ratio_met
from tests.formats.test_sre2l import B, E, IPC, assert_same_dump, load_any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("convert") / "sre2l_cutmix")
    dumpgen.make_epoch_dump(root, ipc=IPC, epochs=E, batch_size=B, mix="cutmix")
    return root


def _cli(*argv: str) -> subprocess.CompletedProcess:
    """``score-codec`` in a fresh process that imports this tree."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    return subprocess.run([sys.executable, "-c", "import sys; from score_codec.cli import main; sys.exit(main())", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def _decoded(path) -> torch.Tensor:
    st = sc.LabelStore(str(path))
    return torch.stack([st.matrix(i) for i in range(len(st))])


def _assert_same_store(a, b) -> None:
    """Same images, metadata and encoding; decoded logits equal up to float rounding of another process."""
    sa, sb = sc.LabelStore(str(a)), sc.LabelStore(str(b))
    assert len(sa) == len(sb) and sa.num_classes == sb.num_classes
    assert np.array_equal(sa.ks, sb.ks) and np.array_equal(sa.labels, sb.labels)
    assert np.array_equal(sa.index["rank"], sb.index["rank"])
    ma, mb = sa.aug, sb.aug
    assert np.array_equal(ma.rows, mb.rows) and np.array_equal(ma.images, mb.images)
    assert len(ma.batches) == len(mb.batches)
    for name in ma.batches.dtype.names:   # mix_lam is NaN where a batch does not mix
        assert np.array_equal(ma.batches[name], mb.batches[name], equal_nan=True), name
    assert ma.attrs == mb.attrs
    assert {k: v for k, v in sa.encoding.items()} == {k: v for k, v in sb.encoding.items()}
    ya, yb = _decoded(a), _decoded(b)
    assert torch.allclose(ya, yb, rtol=1e-3, atol=1e-3 * float(yb.abs().max()))


@pytest.mark.parametrize("argv,kw", [
    # the global codec without a residual streams the dump's files (every row coded: 10 classes and 3 rows per
    # image hold no useful label at 1.5x, which the default would refuse)
    (["--method", "global", "--ratio", "1.5", "--quant", "int8", "--no-pool"],
     dict(method="global", ratio=1.5, quant="int8", pool=False)),
    # every other codec goes through the scratch copy, image by image
    (["--method", "svd", "--rank", "3", "--residual", "1"], dict(method="svd", rank=3, residual=1)),
])
def test_encode_dump_writes_the_store_score_codec_encode_writes(dump, tmp_path, argv, kw):
    cli_store, lib_store = tmp_path / "cli.store", tmp_path / "lib.store"
    r = _cli("encode", dump, str(cli_store), "--json", "--quiet", *argv)
    assert r.returncode == 0, r.stderr
    cli_stats = json.loads(r.stdout)
    stats = sc.encode_dump(dump, lib_store, **kw)
    _assert_same_store(cli_store, lib_store)
    assert stats["source_format"] == cli_stats["source_format"] == "sre2l"
    for key in ("images", "rows", "num_classes", "method", "quant", "rank_min", "rank_max"):
        assert stats[key] == cli_stats[key], key
    assert stats["ratio"] == pytest.approx(cli_stats["ratio"], rel=0.02)
    if "ratio" in kw:
        assert_ratio_met(stats, kw["ratio"])   # the target is met by the whole store
    assert sorted(os.listdir(tmp_path)) == ["cli.store", "lib.store"]   # no scratch or partial files left


def test_options_object_and_keywords_write_the_same_store(dump, tmp_path):
    opts = sc.CodecOptions(method="svd", rank=2, quant="fp16")
    a = sc.encode_dump(dump, tmp_path / "a.store", opts, ipc=IPC)
    b = sc.encode_dump(dump, tmp_path / "b.store", method="svd", rank=2, quant="fp16", dump_options=sc.DumpOptions(ipc=IPC))
    c = sc.encode_dump(dump, tmp_path / "c.store", opts.replace(rank=5), rank=2, ipc=IPC)   # keywords win
    assert a["label_bytes"] == b["label_bytes"] == c["label_bytes"]
    assert torch.equal(_decoded(tmp_path / "a.store"), _decoded(tmp_path / "b.store"))
    with pytest.raises(TypeError, match="rnak"):
        sc.encode_dump(dump, tmp_path / "d.store", rnak=3)
    with pytest.raises(sc.InputError, match="at most one"):
        sc.CodecOptions(rank=3, ratio=10)


def test_encode_dump_refuses_an_existing_destination_and_a_head_for_image_codecs(dump, tmp_path):
    sc.encode_dump(dump, tmp_path / "s.store", method="svd", rank=2)
    with pytest.raises(sc.InputError, match="overwrite=True"):
        sc.encode_dump(dump, tmp_path / "s.store", method="svd", rank=2)
    st = sc.encode_dump(dump, tmp_path / "s.store", method="svd", rank=3, overwrite=True)
    assert st["rank_max"] == 3
    with pytest.raises(sc.InputError, match="global basis"):
        sc.encode_dump(dump, tmp_path / "h.store", method="svd", head=(torch.eye(10), None))
    assert sorted(os.listdir(tmp_path)) == ["s.store"]


def test_encode_dump_target_bytes_meets_the_budget(dump, tmp_path):
    full = sc.encode_dump(dump, tmp_path / "full.store", method="svd", rank=10, quant="fp32", zstd_level=0)
    budget = full["label_bytes"] // 3
    st = sc.encode_dump(dump, tmp_path / "t.store", method="svd", target_bytes=budget, quant="fp32", zstd_level=0)
    assert st["label_bytes"] <= budget


def test_encode_dump_resumes_an_interrupted_run(dump, tmp_path):
    ref = tmp_path / "ref.store"
    sc.encode_dump(dump, ref, method="svd", rank=3, shard_bytes=2000)
    with sc.formats.read_dump(dump) as c:
        mats = [c.matrix(i) for i in range(c.num_images)]
        labels = c.labels
    dst = tmp_path / "dst.store"
    with pytest.raises(KeyboardInterrupt):
        with sc.StoreWriter(dst, 10, method="svd", rank=3, shard_bytes=2000) as w:
            w.add(mats[:40], labels=labels[:40].tolist())
            raise KeyboardInterrupt
    assert os.path.isdir(f"{dst}.partial")
    st = sc.encode_dump(dump, dst, method="svd", rank=3, shard_bytes=2000, resume=True)
    assert st["images"] == len(mats) and not os.path.exists(f"{dst}.partial")
    assert torch.equal(_decoded(dst), _decoded(ref))
    _assert_same_store(dst, ref)


def test_decode_dump_writes_the_dump_score_codec_decode_writes(dump, tmp_path):
    store = tmp_path / "s.store"
    sc.encode_dump(dump, store, method="svd", rank=10, quant="fp32", keep_mean=True)
    r = _cli("decode", str(store), str(tmp_path / "cli_dump"), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    out = sc.decode_dump(store, tmp_path / "lib_dump")
    assert out["format"] == json.loads(r.stdout)["format"] == "sre2l"
    assert out["images"] == IPC * 10 and out["rows"] == IPC * 10 * E
    # every non-logit field exact in both; logits of a full-rank fp32 store with its means are the dump's
    assert_same_dump(dump, str(tmp_path / "lib_dump"), logits_exact=False)
    assert_same_dump(str(tmp_path / "cli_dump"), str(tmp_path / "lib_dump"), logits_exact=False)
    for epoch in sorted(n for n in os.listdir(dump) if n.startswith("epoch_")):
        for f in sorted(os.listdir(os.path.join(dump, epoch))):
            src, cli, lib = (load_any(os.path.join(d, epoch, f))[5].float()
                             for d in (dump, str(tmp_path / "cli_dump"), str(tmp_path / "lib_dump")))
            assert torch.allclose(lib, cli, rtol=1e-3, atol=1e-3), f"{epoch}/{f}"
            assert torch.allclose(lib, src, rtol=1e-2, atol=1e-2), f"{epoch}/{f}"
    npy = sc.decode_dump(sc.LabelStore(str(store)), tmp_path / "y.npy", format="npy")
    y = np.load(tmp_path / "y.npy")
    assert npy["format"] == "npy" and y.shape == (IPC * 10, E, 10)
    assert np.allclose(y, _decoded(store).numpy(), atol=1e-5)
    with pytest.raises(sc.InputError, match="overwrite=True"):
        sc.decode_dump(store, tmp_path / "lib_dump")
