"""Faults while writing: interruption and resume, a full disk, an unwritable destination."""
import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import score_codec as sc
from score_codec.errors import IncompleteStoreError, InputError

from tests.common import assert_stores_close, teacher_like_logits

Y = teacher_like_logits(40, 12, 10, seed=21)
KW = dict(method="svd", rank=3, quant="fp16", shard_bytes=1500, chunk_images=4)


def _decoded(path):
    st = sc.LabelStore(path)
    return np.stack([st.matrix(i).numpy() for i in range(len(st))])


def _interrupted_run(tmp_path, stop_at):
    """(reference store, path of a run stopped by Ctrl-C before image ``stop_at``) of Y with KW."""
    ref = tmp_path / "ref.store"
    sc.encode(Y, ref, **KW)
    path = tmp_path / "run.store"
    with pytest.raises(KeyboardInterrupt):
        with sc.StoreWriter(path, 10, method="svd", rank=3, quant="fp16", shard_bytes=1500) as w:
            for s in range(0, 40, 4):
                if s == stop_at:
                    raise KeyboardInterrupt
                w.add(Y[s : s + 4])
    return ref, path


def test_keyboard_interrupt_keeps_complete_shards_and_resume_finishes(tmp_path):
    ref, path = _interrupted_run(tmp_path, 24)
    assert not path.exists() and (tmp_path / "run.store.partial").is_dir()
    with pytest.raises(IncompleteStoreError):
        sc.LabelStore(tmp_path / "run.store.partial")
    with sc.StoreWriter(path, 10, method="svd", rank=3, quant="fp16", shard_bytes=1500, resume=True) as w:
        assert 0 < w.num_images <= 24  # every record of a complete shard is kept, mid-chunk too
        for s in range(w.num_images, 40, 4):
            w.add(Y[s : s + 4])
    assert np.array_equal(_decoded(path), _decoded(ref))
    assert not (tmp_path / "run.store.partial").exists()


def test_resume_rewrites_a_shard_damaged_after_it_was_written(tmp_path, caplog):
    ref, path = _interrupted_run(tmp_path, 32)
    shards = sorted(os.listdir(tmp_path / "run.store.partial" / "shards"))
    assert len(shards) >= 3
    # one byte of HDF5 structure (the superblock) in the second shard changes while the run is stopped
    victim = tmp_path / "run.store.partial" / "shards" / shards[1]
    data = bytearray(victim.read_bytes())
    data[20] ^= 0xFF
    victim.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="score_codec.store.journal"):
        with sc.StoreWriter(path, 10, method="svd", rank=3, quant="fp16", shard_bytes=1500, resume=True) as w:
            kept = w.num_images
            for s in range(kept, 40, 4):
                w.add(Y[s : s + 4])
    assert "resuming before shard 1" in caplog.text
    assert 0 < kept < 40
    st = sc.LabelStore(path)
    assert st.verify() == [] and np.array_equal(_decoded(path), _decoded(ref))


def test_killed_process_resumes_from_the_last_complete_shard(tmp_path):
    path = tmp_path / "killed.store"
    script = textwrap.dedent(f"""
        import os, signal, torch, score_codec as sc
        from tests.common import assert_stores_close, teacher_like_logits
        torch.set_num_threads(1)
        y = teacher_like_logits(40, 12, 10, seed=21)
        w = sc.StoreWriter({str(path)!r}, 10, method="svd", rank=3, quant="fp16", shard_bytes=1500)
        for s in range(0, 40, 4):
            if s == 28:
                os.kill(os.getpid(), signal.SIGKILL)
            w.add(y[s:s + 4])
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    stats = sc.encode(Y, path, resume=True, **KW)
    assert stats["images"] == 40
    ref = tmp_path / "ref.store"
    sc.encode(Y, ref, **KW)
    assert_stores_close(path, ref)  # part of it was encoded in another process


def test_resume_with_other_options_is_refused(tmp_path):
    path = tmp_path / "o.store"
    with pytest.raises(KeyboardInterrupt):
        with sc.StoreWriter(path, 10, rank=3, shard_bytes=1500) as w:
            w.add(Y[:20])
            raise KeyboardInterrupt
    with pytest.raises(InputError, match="rank"):
        sc.StoreWriter(path, 10, rank=4, shard_bytes=1500, resume=True)


def _fill_disk(path):
    # a size-limited process stands in for a full disk: writes past the limit fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))
    try:
        sc.encode(teacher_like_logits(200, 30, 10, seed=1), path, rank=10, quant="fp32", shard_bytes=10**6)
    except sc.WriteFailedError as exc:
        return f"WriteFailedError {exc}"
    except Exception as exc:  # any other exception type is a failure of the test
        return f"{type(exc).__name__} {exc}"
    return "no error"


def test_full_disk_fails_cleanly_and_leaves_nothing(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "full.store"
    with mp.get_context("fork").Pool(1) as pool:
        result = pool.apply(_fill_disk, (str(path),))
    assert result.startswith("WriteFailedError") and "nothing was kept" in result, result
    assert os.listdir(tmp_path) == []


def test_unwritable_destination_is_an_io_failure(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(sc.WriteFailedError, match="not writable"):
            sc.encode(Y, ro / "x.store")
    finally:
        os.chmod(ro, 0o700)


def test_missing_parent_directory_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        sc.encode(Y, tmp_path / "no" / "such" / "x.store")


def test_cli_encode_resumes_an_interrupted_run(tmp_path):
    from score_codec.cli import main

    src = tmp_path / "y.npy"
    np.save(src, Y.numpy().astype(np.float16))
    ref = tmp_path / "ref.store"
    assert main(["encode", str(src), str(ref), "--method", "svd", "--rank", "3", "--shard-mb", "0.001", "--quiet"]) == 0
    dst = tmp_path / "dst.store"
    with pytest.raises(KeyboardInterrupt):
        with sc.StoreWriter(dst, 10, method="svd", rank=3, shard_bytes=int(0.001 * 2**20)) as w:
            w.add(torch.from_numpy(np.load(src)[:24]).float())
            raise KeyboardInterrupt
    assert main(["encode", str(src), str(dst), "--method", "svd", "--rank", "3", "--shard-mb", "0.001", "--quiet", "--resume"]) == 0
    assert_stores_close(dst, ref)  # encoded in other batches


@pytest.mark.parametrize("method", ["svd", "shared"])
def test_resume_inside_one_big_chunk_keeps_no_dead_shards(tmp_path, method):
    labels = [i % 3 for i in range(40)]
    ref = tmp_path / "ref.store"
    with sc.StoreWriter(ref, 10, method=method, rank=3, shard_bytes=1500) as w:
        w.add(Y, labels=labels)
    path = tmp_path / "cut.store"
    w = sc.StoreWriter(path, 10, method=method, rank=3, shard_bytes=1500)
    w.add(Y, labels=labels)  # one chunk spanning several shards; the process "dies" before close
    del w
    with sc.StoreWriter(path, 10, method=method, rank=3, shard_bytes=1500, resume=True) as w:
        done = w.num_images
        assert 0 < done < 40
        w.add(Y[done:], labels=labels[done:])
    store = sc.LabelStore(path)
    indexed = set(store.index["shard"].tolist())
    assert indexed == set(range(len(store.manifest["shards"])))  # every shard holds indexed records
    if method == "svd":
        assert_stores_close(path, ref)  # encoded in other batches
        assert store.stats()["label_bytes"] == sc.LabelStore(ref).stats()["label_bytes"]
    assert store.verify() == []
