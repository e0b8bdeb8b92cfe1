"""Student claims: two runs sharing a cache never train the same student at once, and a killed run's claims
do not block the next run."""
import os
import subprocess
import sys

from benchmarks.storage_vs_accuracy.claims import StudentClaims


def _claims_of(tmp_path, pid: int, host: str = None) -> StudentClaims:
    c = StudentClaims(str(tmp_path))
    c.me = f"{host or c.me.rpartition(' ')[0]} {pid}"
    return c


def test_a_live_runs_claim_is_left_to_it_and_released_after(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs, ours = _claims_of(tmp_path, other.pid), StudentClaims(str(tmp_path))
        assert theirs.claim("storage|a|seed0")
        assert not ours.claim("storage|a|seed0")
        assert ours.holder("storage|a|seed0") == theirs.me
        assert ours.claim("storage|a|seed1")          # other students stay free
        ours.release("storage|a|seed0")                # not ours: left in place
        assert not ours.claim("storage|a|seed0")
        theirs.release("storage|a|seed0")
        assert ours.claim("storage|a|seed0") and ours.holder("storage|a|seed0") is None
    finally:
        other.kill()
        other.wait()


def test_a_dead_runs_claim_is_taken_over(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert _claims_of(tmp_path, gone.pid).claim("k")
    ours = StudentClaims(str(tmp_path))
    assert ours.holder("k") is None and ours.claim("k")
    ours.release("k")
    assert os.listdir(os.path.join(str(tmp_path), "claims")) == []


def test_another_hosts_claim_holds_until_stale(tmp_path):
    assert _claims_of(tmp_path, 1, host="elsewhere.invalid").claim("k")
    assert not StudentClaims(str(tmp_path)).claim("k")
    assert StudentClaims(str(tmp_path), stale_after=0.0).claim("k")


def test_pipeline_leaves_a_claimed_student_and_trains_the_rest(tmp_path, monkeypatch):
    """Pipeline.students skips a seed a live run holds, trains the others, and releases its own claims."""
    from types import SimpleNamespace

    import benchmarks.storage_vs_accuracy.pipeline as pl
    from benchmarks.storage_vs_accuracy.presets import PRESETS

    trained = []
    monkeypatch.setattr(pl, "train_one", lambda src, table, views, c, seed, test, C, eval_fractions=(): (
        trained.append(seed) or {"top1": 0.5 + seed / 10, "curve": []}))
    pipe = pl.Pipeline.__new__(pl.Pipeline)
    pipe.cfg, pipe.dir, pipe.deadline, pipe.skipped, pipe.elsewhere = PRESETS["smoke"], str(tmp_path), None, 0, 0
    pipe.claims, pipe.done, pipe._read_to, pipe.after_student = StudentClaims(str(tmp_path)), {}, 0, None
    pipe.results_path, pipe.test, pipe.C = os.path.join(str(tmp_path), "students.jsonl"), None, 10
    table = SimpleNamespace(epochs=4)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        held = pipe._key("storage|x", 1, pipe.cfg, 4, False)
        assert _claims_of(tmp_path, other.pid).claim(held)
        out = pipe.students("storage|x", object(), None, table, (0, 1, 2))
        assert trained == [0, 2] and out["top1"] == [0.5, 0.7] and pipe.elsewhere == 1
        assert os.listdir(os.path.join(str(tmp_path), "claims")) == [os.path.basename(pipe.claims._path(held))]
    finally:
        other.kill()
        other.wait()
    out = pipe.students("storage|x", object(), None, table, (0, 1, 2))   # its holder is gone: trained now
    assert trained == [0, 2, 1] and out["top1"] == [0.5, 0.6, 0.7]
