"""score-codec encode / decode / info / verify on real-structure dumps."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch

from tests import dumpgen
from tests.formats.test_sre2l import B, E, IPC, assert_same_dump, load_any, sre2l_loader_stream  # noqa: E402

from score_codec import LabelStore  # noqa: E402
from score_codec.cli import build_parser, main  # noqa: E402
from score_codec.formats import read_dump  # noqa: E402


@pytest.fixture(scope="module")
def dump(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cli") / "FKD_cutmix_fp16")
    dumpgen.make_epoch_dump(root, ipc=IPC, epochs=E, batch_size=B, mix="cutmix")
    return root


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def store(dump, tmp_path_factory):
    dst = str(tmp_path_factory.mktemp("store") / "labels.store")
    assert main(["encode", dump, dst, "--method", "svd", "--rank", "2", "--quiet"]) == 0
    return dst


def test_help_on_every_command(capsys):
    for cmd in ([], ["encode"], ["decode"], ["info"], ["verify"]):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(cmd + ["--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_version_names_package_and_store_format(capsys):
    import score_codec
    from score_select.cli import main as select_main
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert score_codec.__version__ in out and f"store format version {score_codec.FORMAT_VERSION}" in out
    with pytest.raises(SystemExit) as exc:
        select_main(["--version"])
    assert exc.value.code == 0 and score_codec.__version__ in capsys.readouterr().out


def test_encode_reports_format_and_stats(dump, tmp_path, capsys):
    dst = str(tmp_path / "s.h5")
    code, out, err = run(["encode", dump, dst, "--rank", "3", "--json"], capsys)
    assert code == 0 and "format: sre2l" in err
    st = json.loads(out)
    assert st["images"] == IPC * 10 and st["rows"] == IPC * 10 * E and st["num_classes"] == 10
    assert st["source_format"] == "sre2l" and st["rank_max"] == 3
    assert sorted(os.listdir(tmp_path)) == ["s.h5"]  # no scratch or partial files left


def test_round_trip_metadata_exact_logits_within_bound(dump, store, tmp_path, capsys):
    code, out, _ = run(["decode", store, str(tmp_path / "dec"), "--quiet"], capsys)
    assert code == 0
    # every non-logit field bit-exact; logits fp16 of the right shape
    assert_same_dump(dump, str(tmp_path / "dec"), logits_exact=False)
    st = LabelStore(store)
    with read_dump(dump) as c:
        for i in range(c.num_images):
            y = torch.from_numpy(c.matrix(i)).double()
            y = y - y.mean(1, keepdim=True)
            s = torch.linalg.svdvals(y)
            bound = float((s[2:] ** 2).sum())          # Eckart-Young error of the best rank-2 fit
            err = float(((st.matrix(i).double() - y) ** 2).sum())
            assert err <= bound * 1.01 + 1e-3 * float((y ** 2).sum()) + 1e-4
    # the decoded dump's logits are the store's rows, shifted to a row maximum of 0, in fp16
    f = load_any(str(tmp_path / "dec" / "epoch_1" / "batch_2.tar"))
    rows = st.aug.rows[(st.aug.rows["epoch"] == 1) & (st.aug.rows["batch"] == 2)]
    want = st.rows(rows["image"].astype(np.int64), rows["aug"].astype(np.int64))
    want = (want - want.amax(1, keepdim=True)).half()
    assert torch.equal(f[5], want)


def test_decoded_dump_gives_same_loader_stream(dump, store, tmp_path):
    main(["decode", store, str(tmp_path / "dec"), "--format", "sre2l", "--quiet"])
    a = list(sre2l_loader_stream(dump, E, B))
    b = list(sre2l_loader_stream(str(tmp_path / "dec"), E, B))
    assert len(a) == IPC * 10 * E and a == b


def test_decode_npy(store, tmp_path, capsys):
    code, _, _ = run(["decode", store, str(tmp_path / "y.npy"), "--format", "npy", "--quiet"], capsys)
    assert code == 0
    y = np.load(str(tmp_path / "y.npy"))
    st = LabelStore(store)
    assert y.shape == (IPC * 10, E, 10)
    # the batched decode and one record's decode round differently in the last bits
    np.testing.assert_allclose(y[7], st.matrix(7).numpy(), rtol=1e-5, atol=1e-5)


def test_info_and_verify_against(dump, store, capsys):
    code, out, _ = run(["info", store, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["images"] == IPC * 10 and info["k_max"] == E and info["source_format"] == "sre2l"
    assert info["ratio"] > 0 and info["dump_fp16_bytes"] == IPC * 10 * E * (2 * 10 + 25)
    code, out, _ = run(["info", store], capsys)
    assert "classes (C)     10" in out
    code, out, _ = run(["verify", store, "--against", dump, "--json", "--quiet"], capsys)
    rep = json.loads(out)
    assert code == 0 and rep["ok"]
    fid = rep["fidelity"]
    assert sorted(fid["per_epoch"]) == [str(e) for e in range(E)]
    assert all(d["rows"] == IPC * 10 for d in fid["per_epoch"].values())
    ov = fid["overall"]
    assert ov["rows"] == IPC * 10 * E and 0 <= ov["kl_t1"] < 0.5 and 0 <= ov["kl_t20"] < ov["kl_t1"]
    assert 0.5 < ov["top1_agreement"] <= 1.0
    code, out, _ = run(["verify", store, "--against", dump, "--quiet"], capsys)
    assert "KL T=20" in out and "all" in out


def test_verify_detects_corruption(store, tmp_path, capsys):
    bad = str(tmp_path / "bad.store")
    shutil.copytree(store, bad)
    shard = os.path.join(bad, "shards", sorted(os.listdir(os.path.join(bad, "shards")))[0])
    with h5py.File(shard, "r") as f:
        off = f["records"].id.get_offset()
    with open(shard, "r+b") as fh:
        fh.seek(off + 40)
        b = fh.read(1)
        fh.seek(off + 40)
        fh.write(bytes([b[0] ^ 0xFF]))
    code, out, _ = run(["verify", bad, "--json"], capsys)
    assert code == 1 and not json.loads(out)["ok"]


def _left_behind(parent):
    return [n for n in os.listdir(parent) if "partial" in n or "scratch" in n]


def test_bad_input_exits_2_and_leaves_nothing(dump, tmp_path, capsys):
    code, _, err = run(["encode", str(tmp_path / "missing"), str(tmp_path / "o1")], capsys)
    assert code == 2 and "no such dump" in err and len(err.strip().splitlines()) == 1
    bad = str(tmp_path / "bad")
    shutil.copytree(dump, bad)
    p = os.path.join(bad, "epoch_2", "batch_1.tar")
    items = load_any(p)
    items[5][0, 0] = float("inf")
    torch.save(items, p)
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    code, _, err = run(["encode", bad, str(out_dir / "o2"), "--quiet"], capsys)
    assert code == 2 and "epoch_2/batch_1.tar: row 0, class 0: logit is inf" in err
    data = open(p, "rb").read()
    open(p, "wb").write(data[:100])
    code, _, err = run(["encode", bad, str(out_dir / "o3"), "--quiet"], capsys)
    assert code == 2 and "truncated" in err
    code, _, err = run(["encode", dump, str(out_dir / "o4"), "--num-classes", "100", "--quiet"], capsys)
    assert code == 2 and "expected 100 classes" in err
    assert os.listdir(out_dir) == []


def test_unsafe_pickle_refused_by_cli(dump, tmp_path, capsys):
    bad = str(tmp_path / "evil")
    shutil.copytree(dump, bad)
    p = os.path.join(bad, "epoch_0", "batch_0.tar")
    items = load_any(p)
    items[4] = shutil.rmtree  # a callable global: must never be unpickled
    torch.save(items, p)
    code, _, err = run(["encode", bad, str(tmp_path / "o"), "--format", "sre2l", "--quiet"], capsys)
    assert code == 2 and "refused to unpickle" in err and "rmtree" in err
    assert not os.path.exists(str(tmp_path / "o"))


def test_gvbsm_through_cli(tmp_path, capsys):
    root = str(tmp_path / "g")
    dumpgen.make_epoch_dump(root, family="gvbsm", ipc=3, epochs=2, batch_size=8, mix="mixup")
    assert main(["encode", root, str(tmp_path / "s"), "--rank", "2", "--quiet"]) == 0
    assert main(["decode", str(tmp_path / "s"), str(tmp_path / "d"), "--quiet"]) == 0
    assert_same_dump(root, str(tmp_path / "d"), logits_exact=False)


def test_static_cli_names_match_the_registries():
    import score_codec
    from score_codec.cli.options import FORMAT_NAMES, METHODS
    from score_codec.formats import FORMATS, WRITERS

    assert list(METHODS) == score_codec.registered_codecs()
    assert set(FORMAT_NAMES) == set(FORMATS) == set(WRITERS)


def test_help_and_argument_errors_answer_without_the_library():
    """``--help`` and argument errors import neither torch nor the store (they answer at once)."""
    import subprocess

    code = ("import sys\nfrom score_codec.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('torch' in sys.modules, 'h5py' in sys.modules)")
    for argv in (["--help"], ["encode", "--help"], ["encode", "only-one-arg"], ["relabel", "--help"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
        assert out.strip().endswith("False False"), (argv, out[-300:])
    help_text = subprocess.run([sys.executable, "-m", "score_codec.cli.main", "encode", "--help"], capture_output=True,
                               text=True).stdout
    assert "(default: global)" in help_text and "int8 for global and two-level" in " ".join(help_text.split())


def test_keep_mean_round_trip_is_exact_logits(dump, tmp_path, capsys):
    dst = str(tmp_path / "mean.store")
    assert run(["encode", dump, dst, "--method", "svd", "--rank", "8", "--quant", "fp32", "--keep-mean", "--quiet"],
               capsys)[0] == 0
    with read_dump(dump) as c:
        st = LabelStore(dst)
        i = 3
        src = torch.from_numpy(np.asarray(c.matrix(i), dtype=np.float32))
        # rank 8 of 10 classes at fp32: the logits themselves come back, not shifted copies
        assert (st.matrix(i) - src).abs().max() < 0.05 * src.abs().max()
        assert abs(float(st.matrix(i).mean() - src.mean())) < 1e-3
    code, out, err = run(["info", dst], capsys)
    assert "exact logits" in out


def test_plain_ints_dump_loads_with_weights_only(store, tmp_path, capsys):
    dst = str(tmp_path / "plain")
    assert run(["decode", store, dst, "--format", "sre2l", "--plain-ints", "--quiet"], capsys)[0] == 0
    item = torch.load(os.path.join(dst, "epoch_0", "batch_0.tar"), weights_only=True)   # no allow-list needed
    assert all(type(v) is int for v in item[4])
    default = str(tmp_path / "np")
    assert run(["decode", store, default, "--format", "sre2l", "--quiet"], capsys)[0] == 0
    assert all(type(v) is np.int64 for v in load_any(os.path.join(default, "epoch_0", "batch_0.tar"))[4])


def test_cli_errors_name_cli_flags(dump, store, tmp_path, capsys):
    code, out, err = run(["encode", dump, store, "--rank", "2"], capsys)
    assert code == 2 and "--overwrite" in err and "overwrite=True" not in err
    code, out, err = run(["encode", dump, str(tmp_path / "x.store"), "--method", "svd", "--class-rank", "2"], capsys)
    assert code == 2 and "--class-rank" in err


def test_trust_order_skips_the_mapping_check(dump, tmp_path, capsys, caplog):
    code, out, err = run(["encode", dump, str(tmp_path / "bad.store"), "--seed", "7", "--quiet"], capsys)
    assert code == 2 and "--trust-order" in err
    with caplog.at_level("WARNING"):
        code, out, err = run(["encode", dump, str(tmp_path / "trusted.store"), "--seed", "7", "--trust-order"], capsys)
    assert code == 0 and "not checked" in caplog.text


def test_global_method_through_the_cli(dump, tmp_path, capsys):
    dst = str(tmp_path / "g.store")
    # 3 rows per image and 10 classes: the 32-byte record header alone is 11 of the 20 bytes of a row
    code, out, err = run(["encode", dump, dst, "--method", "global", "--ratio", "1.5", "--quant", "int8", "--json",
                          "--no-pool"], capsys)
    assert code == 0
    st = json.loads(out)
    assert st["ratio"] >= 1.5 and st["shared_bases"] == 1
    assert LabelStore(dst).verify() == []


def test_global_rowwise_encode_equals_the_per_image_path(dump, tmp_path, capsys):
    """--method global codes rows in dump order (no regrouping of the logits); the records match an in-memory
    encode of the same matrices with the same basis."""
    import score_codec as sc

    dst = str(tmp_path / "rows.store")
    assert run(["encode", dump, dst, "--method", "global", "--rank", "4", "--quant", "int8", "--keep-mean", "--quiet"],
               capsys)[0] == 0
    st = LabelStore(dst)
    with read_dump(dump) as c:
        mats = [torch.from_numpy(np.asarray(c.matrix(i), dtype=np.float32)) for i in range(c.num_images)]
        ref = str(tmp_path / "ref.store")
        with sc.StoreWriter(ref, c.num_classes, method="global", rank=4, quant="int8", keep_mean=True) as w:
            w.set_bases(st_bases(st))
            w.add(mats)
            w.set_meta(c.aug)
    other = LabelStore(ref)
    assert st.verify() == [] and st.aug.rows.tobytes() == other.aug.rows.tobytes()
    got = torch.stack([st.matrix(i) for i in range(len(st))])
    want = torch.stack([other.matrix(i) for i in range(len(other))])
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()
    src = torch.stack(mats)
    assert (got - src).abs().max() < (src - src.mean((0, 1))).abs().max()       # it encodes the dump's logits


def st_bases(store):
    """The BasisSet of a global store, read back from its basis table."""
    from score_codec.codecs.global_basis import BasisEntry, BasisSet

    return BasisSet([BasisEntry(store.basis(0), -1, store.basis_mean(0))])


def test_global_encode_reads_each_dump_file_once(dump, tmp_path, capsys, monkeypatch):
    """--method global (no residual) reads every dump file's tensors once (into a scratch file beside the
    store, removed afterwards), and the store decodes the dump's logits."""
    import collections

    reads = collections.Counter()
    load = torch.load

    def counting(f, *a, **k):
        if not k.get("mmap"):
            reads[os.path.abspath(os.fspath(f))] += 1
        return load(f, *a, **k)

    dst = str(tmp_path / "s.store")
    with monkeypatch.context() as m:
        m.setattr(torch, "load", counting)
        assert run(["encode", dump, dst, "--method", "global", "--rank", "9", "--quant", "fp16", "--quiet"],
                   capsys)[0] == 0
    assert reads and set(reads.values()) == {1}
    assert len(reads) == sum(1 for _, _, fs in os.walk(dump) for f in fs if f.endswith(".tar"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".score-")]
    st = LabelStore(dst)
    with read_dump(dump) as c:
        src = torch.stack([torch.from_numpy(np.asarray(c.matrix(i), dtype=np.float32)) for i in range(c.num_images)])
    got = torch.stack([st.matrix(i) for i in range(len(st))])
    src = src - src.mean(-1, keepdim=True)
    # rank 9 of 10 centred classes in fp16: the dump's logits come back up to fp16 rounding
    assert (got - src).abs().max() < 1e-2 * src.abs().max()
    assert st.index["rank"].tolist() == [9] * len(st) and st.verify() == []


def test_encode_npy_progress_counts_images_and_logs_the_chosen_rank(tmp_path, capsys, caplog):
    # a dense array is read one image at a time, and the allocation fits every direction before it chooses
    # the rank: neither may be reported as something it is not ("file/s", "rank C of C")
    rng = np.random.default_rng(0)
    w = rng.normal(size=(40, 6))
    np.save(str(tmp_path / "y.npy"), (rng.normal(size=(60, 12, 6)) @ w.T).astype(np.float16))
    with caplog.at_level(logging.INFO, logger="score_codec"):
        code, _, err = run(["encode", str(tmp_path / "y.npy"), str(tmp_path / "s.store"), "--ratio", "8"], capsys)
    assert code == 0
    assert "image/s" in err and "file/s" not in err
    assert "global basis: 40 directions" in caplog.text and "rank 40 of 40" not in caplog.text
    assert "allocation: 12 of 12 epochs" in caplog.text
