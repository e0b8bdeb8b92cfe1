"""Exit codes of score-codec and score-select: 0 success, 1 failed verify, 2 bad input, 3 I/O failure."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

import score_codec as sc
from score_codec.cli import build_parser, main
from score_codec.cli.exits import run_reporting_errors
from score_codec.errors import EXIT_BAD_INPUT, EXIT_IO_FAILURE, EXIT_OK, EXIT_VERIFY_FAILED
from tests.common import teacher_like_logits


@pytest.fixture
def npy_dump(tmp_path):
    path = tmp_path / "y.npy"
    np.save(path, teacher_like_logits(12, 4, 10, seed=3).numpy().astype(np.float16))
    return str(path)


def _err(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_codes_are_distinct_and_documented_in_both_helps():
    from score_select.cli import build_parser as select_parser

    assert (EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT, EXIT_IO_FAILURE) == (0, 1, 2, 3)
    for parser in (build_parser(), select_parser()):
        text = parser.format_help()
        assert "exit status:" in text
        for code, word in ((0, "success"), (1, "integrity"), (2, "bad input"), (3, "I/O failure")):
            assert f"  {code}  " in text and word in text
    assert sc.WriteFailedError.exit_code == sc.IOFailureError.exit_code == 3
    assert sc.InputError.exit_code == 2 and sc.CorruptRecordError.exit_code == 1
    assert not issubclass(sc.IOFailureError, sc.InputError)   # a full disk is not the input's fault


def test_success_bad_input_and_failed_verify(npy_dump, tmp_path, capsys):
    store = str(tmp_path / "s.store")
    assert main(["encode", npy_dump, store, "--method", "svd", "--rank", "2", "--quiet"]) == EXIT_OK
    assert main(["verify", store]) == EXIT_OK
    capsys.readouterr()
    assert main(["encode", str(tmp_path / "missing.npy"), str(tmp_path / "o.store"), "--quiet"]) == EXIT_BAD_INPUT
    assert "no such dump" in _err(capsys)
    shard = os.path.join(store, "shards", sorted(os.listdir(os.path.join(store, "shards")))[0])
    with open(shard, "r+b") as fh:   # flip the last byte of the records
        fh.seek(-1, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([b[0] ^ 0xFF]))
    assert main(["verify", store]) == EXIT_VERIFY_FAILED


def test_unwritable_destination_exits_3_and_leaves_nothing(npy_dump, tmp_path, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # root ignores permission bits, so the refusal is simulated where the writer asks for it
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(ro) else real_access(p, mode))
    with pytest.raises(sc.WriteFailedError, match="not writable"):
        sc.encode_dump(npy_dump, ro / "s.store", method="svd", rank=2)
    assert main(["encode", npy_dump, str(ro / "s.store"), "--quiet"]) == EXIT_IO_FAILURE
    err = _err(capsys)
    assert err.startswith("score-codec encode: error:") and "not writable" in err and "\n" not in err
    assert os.listdir(ro) == []


def test_full_disk_exits_3_and_leaves_nothing(npy_dump, tmp_path, capsys, monkeypatch):
    from score_codec.store.writer import StoreWriter

    def disk_full(self):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(StoreWriter, "_write_shard", disk_full)
    out = tmp_path / "out"
    out.mkdir()
    for method in ("global", "svd"):   # the streaming path and the scratch-copy path
        assert main(["encode", npy_dump, str(out / f"{method}.store"), "--method", method, "--quiet"]) == EXIT_IO_FAILURE
        err = _err(capsys)
        assert "No space left on device" in err and "nothing was kept" in err
    assert os.listdir(out) == []


def test_decode_to_a_full_disk_exits_3_and_leaves_nothing(npy_dump, tmp_path, capsys, monkeypatch):
    from score_codec.formats import writers

    store = str(tmp_path / "s.store")
    sc.encode_dump(npy_dump, store, method="svd", rank=2)

    def disk_full(src, dst, options):
        with open(os.path.join(dst, "part"), "wb") as fh:
            fh.write(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(writers.WRITERS, "fkd", disk_full)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(sc.WriteFailedError, match="nothing was kept"):
        sc.decode_dump(store, out / "d", format="fkd")
    assert main(["decode", store, str(out / "d"), "--format", "fkd", "--quiet"]) == EXIT_IO_FAILURE
    assert "No space left on device" in _err(capsys)
    assert os.listdir(out) == []


def test_an_untranslated_os_error_exits_3_with_one_line(capsys):
    def unreadable():
        raise OSError(errno.EIO, "Input/output error")

    assert run_reporting_errors("score-codec info", unreadable) == EXIT_IO_FAILURE
    err = _err(capsys)
    assert err == "score-codec info: error: [Errno 5] Input/output error"


def test_score_select_unwritable_output_exits_3(tmp_path, capsys, monkeypatch):
    from score_select import cli, pipeline

    def refuse(path, exist_ok=False):
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(pipeline.os, "makedirs", refuse)
    rc = cli.main(["fashion-mnist:train:20", "-", str(tmp_path / "sel"), "--ipc", "1", "--quiet"])
    assert rc == EXIT_IO_FAILURE and "Permission denied" in _err(capsys)
    assert not (tmp_path / "sel").exists()
