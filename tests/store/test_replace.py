"""Crash- and concurrency-safe writes: an overwriting encode killed at any moment leaves the destination as
the complete old or the complete new store; a second writer is refused with the lock error; overwriting
deletes only what score wrote."""
import os
import random
import signal
import time

import pytest
import torch

import score_codec as sc
from score_codec.errors import InputError, StoreLockedError
from score_codec.formats import write_dump

from tests.common import assert_stores_close, teacher_like_logits

# the old and new contents differ in their image count, so a store tells at once which one it is
OLD = teacher_like_logits(30, 12, 10, seed=1)
NEW = teacher_like_logits(40, 12, 10, seed=2)
KW = dict(method="svd", rank=3, shard_bytes=1500, chunk_images=4)


def _child(fn) -> int:
    """Run ``fn()`` in a forked child (no interpreter start-up: kills land inside the encode); its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            torch.set_num_threads(1)
            fn()
        except StoreLockedError:
            code = 3
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def _wait(pid) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _kill_trials(tmp_path, trials, single):
    name = "dst.h5" if single else "dst.store"
    dst = tmp_path / name
    refs = {30: tmp_path / ("old" + name[3:]), 40: tmp_path / ("new" + name[3:])}
    sc.encode(OLD, refs[30], **KW)
    sc.encode(NEW, refs[40], **KW)
    sc.encode(OLD, dst, **KW)
    rng = random.Random(os.getpid() ^ int(time.time()))
    seen = {"old": 0, "new": 0, "finished": 0}
    took = 0.0
    for t in range(trials):
        if t % 10 == 0:   # a whole forked encode, timed under the machine's load of the moment
            t0 = time.perf_counter()
            assert _wait(_child(lambda: sc.encode(NEW, tmp_path / ("timing" + name[3:]), overwrite=True, **KW))) == 0
            took = time.perf_counter() - t0
        before = len(sc.LabelStore(dst))
        y = NEW if before == 30 else OLD
        pid = _child(lambda: sc.encode(y, dst, overwrite=True, **KW))
        # every other kill lands near the end, where the new store replaces the old one
        u = rng.random()
        time.sleep(took * (u if t % 2 else 0.6 + 0.4 * u))
        os.kill(pid, signal.SIGKILL)
        code = _wait(pid)
        seen["finished"] += code == 0
        store = sc.LabelStore(dst)       # opens: the complete old or the complete new store
        n = len(store)
        assert n in (30, 40), f"trial {t}: {n} images"
        assert store.verify() == [], f"trial {t}"
        assert_stores_close(dst, refs[n])
        seen["old" if n == before else "new"] += 1
    # a later writer takes over the killed one's lock and partial files
    sc.encode(NEW, dst, overwrite=True, **KW)
    assert len(sc.LabelStore(dst)) == 40
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(name))
    assert leftovers == [name], leftovers
    return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("single", [False, True])
def test_sigkill_of_an_overwriting_encode_leaves_the_old_or_the_new_store(tmp_path, single):
    seen = _kill_trials(tmp_path, 20, single)
    assert seen["old"] + seen["new"] == 20


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("single", [False, True])
def test_sigkill_at_100_random_moments(tmp_path, single):
    """Every trial opened as the complete old or new store (asserted in the trials); the counts go to
    $SCORE_FUZZ_REPORT (JSON lines) when it is set."""
    seen = _kill_trials(tmp_path, 100, single)
    if os.environ.get("SCORE_FUZZ_REPORT"):
        import json

        with open(os.environ["SCORE_FUZZ_REPORT"], "a") as fh:
            fh.write(json.dumps({"sigkill": "s.h5" if single else "s.store", "trials": 100, **seen}) + "\n")
    assert seen["old"] > 0 and seen["new"] > 0   # the kills fell on both sides of the replacement


@pytest.mark.timeout(60)
def test_a_second_writer_is_refused_and_nothing_is_lost(tmp_path):
    dst = tmp_path / "dst.store"
    sc.encode(OLD, dst, **KW)
    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def first():
        with sc.StoreWriter(dst, 10, overwrite=True, **{k: v for k, v in KW.items() if k != "chunk_images"}) as wr:
            os.write(w, b"1")            # holds the lock now
            os.read(go_r, 1)             # until the second writer has tried
            wr.add(NEW)

    a = _child(first)
    assert os.read(r, 1) == b"1"
    b = _child(lambda: sc.encode(OLD, dst, overwrite=True, **KW))
    assert _wait(b) == 3                 # StoreLockedError
    assert len(sc.LabelStore(dst)) == 30  # the old store is untouched meanwhile
    os.write(go_w, b"1")
    assert _wait(a) == 0
    assert len(sc.LabelStore(dst)) == 40 and sc.LabelStore(dst).verify() == []
    assert not (tmp_path / "dst.store.lock").exists() and not (tmp_path / "dst.store.partial").exists()


def test_the_lock_error_names_the_lock_file(tmp_path):
    dst = tmp_path / "dst.store"
    with sc.StoreWriter(dst, 10, method="svd", rank=2):
        with pytest.raises(StoreLockedError, match=r"dst\.store\.lock.*pid %d" % os.getpid()):
            sc.StoreWriter(dst, 10, method="svd", rank=2, overwrite=True)
        assert sc.ScoreError in StoreLockedError.__mro__ and StoreLockedError.exit_code == 2


def test_a_complete_store_left_in_partial_is_resumed_not_encoded_again(tmp_path, monkeypatch):
    from score_codec.store import writer as writer_mod

    dst = tmp_path / "dst.store"

    def crash(tmp, path, check):
        raise KeyboardInterrupt          # stopped after the manifest, before the store moved into place

    monkeypatch.setattr(writer_mod, "install", crash)
    with pytest.raises(KeyboardInterrupt):
        sc.encode(NEW, dst, **KW)
    monkeypatch.undo()
    assert (tmp_path / "dst.store.partial" / "manifest.json").exists() and not dst.exists()
    with sc.StoreWriter(dst, 10, resume=True, **{k: v for k, v in KW.items() if k != "chunk_images"}) as w:
        assert w.num_images == 40        # nothing left to encode
    ref = tmp_path / "ref.store"
    sc.encode(NEW, ref, **KW)
    assert_stores_close(dst, ref)
    assert not (dst / "journal").exists()


def test_overwrite_refuses_a_folder_with_unrelated_files(tmp_path):
    dst = tmp_path / "dst.store"
    sc.encode(OLD, dst, **KW)
    (dst / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        sc.encode(NEW, dst, overwrite=True, **KW)
    assert (dst / "notes.txt").read_text() == "mine" and len(sc.LabelStore(dst)) == 30
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    with pytest.raises(InputError, match="a.txt"):
        sc.encode(NEW, plain, overwrite=True, **KW)
    assert (plain / "a.txt").exists()


def test_decode_overwrite_keeps_unrelated_files(tmp_path):
    from tests.common import make_meta

    store = tmp_path / "s.store"
    sc.encode(OLD, store, meta=make_meta(30, 12), **KW)
    out = tmp_path / "dump"
    write_dump(sc.LabelStore(store), str(out), "sre2l")
    write_dump(sc.LabelStore(store), str(out), "sre2l", overwrite=True)   # a dump score wrote: replaced
    (out / "README.txt").write_text("my notes")
    with pytest.raises(InputError, match="README.txt"):
        write_dump(sc.LabelStore(store), str(out), "sre2l", overwrite=True)
    assert (out / "README.txt").read_text() == "my notes" and (out / "epoch_0").is_dir()


def test_library_calls_without_progress_never_take_tqdm_s_process_shared_lock(tmp_path):
    """A writer killed while holding tqdm's process-shared lock would leave every later bar in the parent
    waiting on it for good: calls with progress=False (the default) must not create or take that lock."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, score_codec as sc\n"
        "from tests.common import teacher_like_logits\n"
        f"dst = {str(tmp_path / 'p.store')!r}\n"
        "sc.encode(teacher_like_logits(8, 6, 10, seed=1), dst, method='global', rank=2)\n"
        "sc.encode(teacher_like_logits(8, 6, 10, seed=2), dst, method='svd', rank=2, overwrite=True)\n"
        "sc.LabelStore(dst).verify()\n"
        "t = sys.modules.get('tqdm.std')\n"
        "print('lock' if t is not None and hasattr(t.TqdmDefaultWriteLock, 'mp_lock') else 'none')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["none"]
