"""Runs sharing a benchmark cache: a student in training is left to the run that claimed it, a killed run's
claims are free at once, and shared builds wait for each other."""
import importlib
import os
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.storage_vs_accuracy.claims import StudentClaims, exclusive

_HOLD = """
import sys, time
from benchmarks.storage_vs_accuracy.claims import StudentClaims
c = StudentClaims(sys.argv[1])
assert c.claim(sys.argv[2])
print("held", flush=True)
time.sleep(60)
"""


def _other_run(tmp_path, key):
    """A child process holding the claim on ``key`` (a second run sharing the cache)."""
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), key], stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_live_runs_claim_is_left_to_it_and_a_killed_runs_is_free(tmp_path):
    other = _other_run(tmp_path, "storage|a|seed0")
    ours = StudentClaims(str(tmp_path))
    try:
        assert not ours.claim("storage|a|seed0")
        assert ours.holder("storage|a|seed0") == other.pid
        assert ours.claim("storage|a|seed1")          # other students stay free
    finally:
        other.kill()                                 # SIGKILL: nothing cleans up
        other.wait()
    assert ours.claim("storage|a|seed0")             # the kernel dropped the dead run's lock
    ours.release("storage|a|seed0")
    ours.release("storage|a|seed1")
    assert os.listdir(os.path.join(str(tmp_path), "claims")) == []


def test_exclusive_waits_for_the_other_holder(tmp_path):
    order = []

    def second():
        with exclusive(str(tmp_path / "v" / "library@100.build"), poll=0.05):
            order.append("second")

    with exclusive(str(tmp_path / "v" / "library@100.build")):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(10)
    assert order == ["first", "second"]


def test_pipeline_leaves_a_claimed_student_and_trains_the_rest(tmp_path, monkeypatch):
    """Pipeline.students skips a seed a live run holds, trains the others, and releases its own claims."""
    from types import SimpleNamespace

    import benchmarks.storage_vs_accuracy.pipeline as pl
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    trained = []

    def fake_train(src, table, views, c, seed, test, C, eval_fractions=()):
        if seed == 3:
            raise RuntimeError("out of memory")
        trained.append(seed)
        return {"top1": 0.5 + seed / 10, "curve": []}

    monkeypatch.setattr(pl, "train_one", fake_train)
    pipe = pl.Pipeline.__new__(pl.Pipeline)
    pipe.cfg, pipe.dir, pipe.deadline, pipe.skipped, pipe.elsewhere = PRESETS["smoke"], str(tmp_path), None, 0, 0
    pipe.claims, pipe.done, pipe._read_to, pipe.after_student = StudentClaims(str(tmp_path)), {}, 0, None
    pipe.results_path, pipe.test, pipe.C = os.path.join(str(tmp_path), "students.jsonl"), None, 10
    table = SimpleNamespace(epochs=4)
    other = _other_run(tmp_path, pipe._key("storage|x", 1, pipe.cfg, 4, False))
    try:
        out = pipe.students("storage|x", object(), None, table, (0, 1, 2))
        assert trained == [0, 2] and out["top1"] == [0.5, 0.7] and pipe.elsewhere == 1
    finally:
        other.kill()
        other.wait()
    out = pipe.students("storage|x", object(), None, table, (0, 1, 2))   # its holder is gone: trained now
    assert trained == [0, 2, 1] and out["top1"] == [0.5, 0.6, 0.7]
    with pytest.raises(RuntimeError):   # a student that fails releases its claim
        pipe.students("storage|x", object(), None, table, (3,))
    assert os.listdir(os.path.join(str(tmp_path), "claims")) == []


def test_wait_for_returns_once_the_other_run_has_finished(tmp_path):
    """Pipeline.wait_for blocks while another run trains the student, then reads its result."""
    import json
    from types import SimpleNamespace

    import benchmarks.storage_vs_accuracy.pipeline as pl
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    pipe = pl.Pipeline.__new__(pl.Pipeline)
    pipe.cfg, pipe.claims, pipe.done, pipe._read_to = PRESETS["smoke"], StudentClaims(str(tmp_path)), {}, 0
    pipe.results_path = os.path.join(str(tmp_path), "students.jsonl")
    table = SimpleNamespace(epochs=4)
    k = pipe._key("storage|x", 0, pipe.cfg, 4, False)
    other = _other_run(tmp_path, k)

    def finish():
        time.sleep(0.5)
        with open(pipe.results_path, "a") as fh:
            fh.write(json.dumps({"key": k, "top1": 0.9, "curve": []}) + "\n")
        other.kill()
        other.wait()

    t = threading.Thread(target=finish)
    t.start()
    pipe.wait_for("storage|x", table, (0,), poll=0.05)
    t.join(10)
    assert pipe.done[k]["top1"] == 0.9
    assert os.listdir(os.path.join(str(tmp_path), "claims")) == []   # waiting leaves no claim behind


def test_wait_is_immediate_when_no_run_holds_the_claim_and_keeps_a_held_one(tmp_path):
    ours = StudentClaims(str(tmp_path))
    t0 = time.monotonic()
    assert ours.wait("storage|free|seed0", poll=5.0) is False and time.monotonic() - t0 < 1.0
    assert ours.claim("storage|mine|seed0")
    assert ours.wait("storage|mine|seed0", poll=5.0) is False     # our own claim: no wait, still held
    assert ours.holder("storage|mine|seed0") is None and "storage|mine|seed0" in ours._held
    ours.release("storage|mine|seed0")


def test_relabel_waits_for_the_other_runs_dump_and_reuses_it(tmp_path, monkeypatch):
    """A run that finds another run relabelling the same selection waits for it and reads its dump: it never
    deletes a half-written dump nor relabels a second time."""
    from types import SimpleNamespace

    import torch

    import benchmarks.storage_vs_accuracy.pipeline as pl
    import score_codec
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    def no_relabel(*a, **k):
        raise AssertionError("relabelled a second time")

    rl = importlib.import_module("score_codec.training.relabel")   # the module (the package exports the function)
    monkeypatch.setattr(rl, "relabel", no_relabel)
    monkeypatch.setattr(score_codec, "LabelStore", lambda path: SimpleNamespace(aug=SimpleNamespace(batches=7, rows=8)))
    monkeypatch.setattr(pl, "BatchTable", lambda batches, rows: (batches, rows))
    pipe = pl.Pipeline.__new__(pl.Pipeline)
    pipe.cfg, pipe.dir = PRESETS["smoke"], str(tmp_path)
    d = os.path.join(str(tmp_path), "relabel", "score_ipc1_K4")
    os.makedirs(d)
    with open(os.path.join(d, "sre2l.part"), "w") as fh:   # the other run's dump, half-written
        fh.write("x")
    got = {}

    def second_run():
        got["out"] = pipe.relabel(None, "score_ipc1", None, 4)

    with exclusive(d + ".build"):
        t = threading.Thread(target=second_run)
        t.start()
        time.sleep(0.5)
        assert t.is_alive() and os.path.isfile(os.path.join(d, "sre2l.part"))   # waiting, nothing deleted
        torch.save(torch.ones(2, 4, 3, dtype=torch.float16), os.path.join(d, "Y.pt"))
    t.join(30)
    store, Y, table = got["out"]
    assert store == os.path.join(d, "meta.store") and Y.dtype == torch.float32 and Y.shape == (2, 4, 3)
    assert table == (7, 8) and os.path.isfile(os.path.join(d, "sre2l.part"))
