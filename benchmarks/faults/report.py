"""Inject faults into label stores and dumps; print what was detected and what was lost.

    python -m benchmarks.faults [--fuzz 300] [--campaign 5000] [--out benchmarks/faults/results/fault_report.md]

Each fault runs in a fresh temporary directory.  "detected" means the library raised its documented
error class (or ``verify`` listed the record); "data lost" counts labels returned wrong without an error
and completed work that a resume did not recover; it must be 0 everywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
from typing import Callable, List, Tuple

import numpy as np
import torch

import score_codec as sc
from benchmarks.shared import make_meta, reseal, teacher_like_logits

__all__ = ["bit_flips", "file_faults", "resume_faults", "input_faults", "fuzz", "campaign", "render_campaign", "main"]

#: the repository root: where the fresh interpreters and the fuzz tests run
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Y = teacher_like_logits(48, 12, 10, seed=61)
KW = dict(method="svd", rank=3, quant="fp16", shard_bytes=2500)
Row = Tuple[str, str, int, int, int]  # fault, expected error, injected, detected, data lost


def _decoded(path: str) -> np.ndarray:
    st = sc.LabelStore(path)
    return np.stack([st.matrix(i).numpy() for i in range(len(st))])


def _fresh(tmp: str, name: str = "s.store") -> str:
    path = os.path.join(tmp, name)
    sc.encode(Y, path, meta=make_meta(48, 12), **KW)
    return path


def bit_flips(tmp: str, n: int) -> Row:
    path = _fresh(tmp)
    ref = _decoded(path)
    store = sc.LabelStore(path)
    rng = random.Random(0)
    detected = lost = 0
    for _ in range(n):
        i = rng.randrange(len(store))
        e = store.index[i]
        shard = os.path.join(path, "shards", f"shard-{int(e['shard']):05d}.h5")
        import h5py

        pos = int(e["offset"]) + rng.randrange(int(e["length"]))
        bit = 1 << rng.randrange(8)
        with h5py.File(shard, "r+") as f:
            f["records"][pos] ^= bit
        try:
            got = sc.LabelStore(path).matrix(i).numpy()
            lost += int(not np.array_equal(got, ref[i]))
        except sc.CorruptRecordError:
            detected += 1
        with h5py.File(shard, "r+") as f:
            f["records"][pos] ^= bit
    return ("flipped bit in a record", "CorruptRecordError", n, detected, lost)


def _expect(fault: str, err: type, action: Callable[[], object]) -> Row:
    try:
        action()
    except err:
        return (fault, err.__name__, 1, 1, 0)
    except Exception as exc:  # pragma: no cover - reported, not hidden
        return (fault, f"{err.__name__} (got {type(exc).__name__})", 1, 0, 0)
    return (fault, err.__name__, 1, 0, 0)


def file_faults(tmp: str) -> List[Row]:
    rows = []
    path = _fresh(tmp, "a.store")
    shard = os.path.join(path, "shards", "shard-00001.h5")
    data = open(shard, "rb").read()
    open(shard, "wb").write(data[: len(data) // 2])
    rows.append(_expect("truncated shard", sc.TruncatedFileError, lambda: [sc.LabelStore(path).matrix(i) for i in range(48)]))
    os.remove(shard)
    rows.append(_expect("missing shard", sc.MissingShardError, lambda: [sc.LabelStore(path).matrix(i) for i in range(48)]))
    path = _fresh(tmp, "b.store")
    m = json.load(open(os.path.join(path, "manifest.json")))
    m["num_images"] = 47
    json.dump(m, open(os.path.join(path, "manifest.json"), "w"))
    rows.append(_expect("index disagrees with manifest", sc.IndexMismatchError, lambda: sc.LabelStore(path)))
    path = _fresh(tmp, "c.store")
    import h5py

    with h5py.File(os.path.join(path, "index.h5"), "r+") as f:
        idx = f["images"][()]
        idx["rank"][5] = 2
        f["images"][...] = idx
    reseal(path)   # the forged index carries valid checksums: the record header check must catch it
    rows.append(_expect("index disagrees with record header", sc.IndexMismatchError, lambda: sc.LabelStore(path).matrix(5)))
    path = _fresh(tmp, "d.store")
    os.remove(os.path.join(path, "manifest.json"))
    rows.append(_expect("manifest missing (interrupted write)", sc.IncompleteStoreError, lambda: sc.LabelStore(path)))
    return rows


def resume_faults(tmp: str) -> List[Row]:
    ref = _decoded(_fresh(tmp, "ref.store"))
    rows = []
    path = os.path.join(tmp, "kb.store")
    try:
        with sc.StoreWriter(path, 10, method="svd", rank=3, quant="fp16", shard_bytes=2500) as w:
            for s in range(0, 48, 4):
                if s == 32:
                    raise KeyboardInterrupt
                w.add(Y[s : s + 4])
    except KeyboardInterrupt:
        pass
    done = sc.StoreWriter(path, 10, method="svd", rank=3, quant="fp16", shard_bytes=2500, resume=True)
    kept = done.num_images
    done.abort(keep_partial=True)
    sc.encode(Y, path, resume=True, meta=make_meta(48, 12), **KW)
    lost = int((~np.all(_decoded(path) == ref, axis=(1, 2))).sum()) + (0 if kept > 0 else 1)
    rows.append(("Ctrl-C during encode, then --resume", "resumed", 1, int(kept > 0), lost))
    path = os.path.join(tmp, "kill.store")
    script = textwrap.dedent(f"""
        import os, signal, torch, score_codec as sc
        from benchmarks.shared import teacher_like_logits
        y = teacher_like_logits(48, 12, 10, seed=61)
        w = sc.StoreWriter({path!r}, 10, method="svd", rank=3, quant="fp16", shard_bytes=2500)
        for s in range(0, 48, 4):
            if s == 36:
                os.kill(os.getpid(), signal.SIGKILL)
            w.add(y[s:s + 4])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    sc.encode(Y, path, resume=True, meta=make_meta(48, 12), **KW)
    lost = int((~np.all(_decoded(path) == ref, axis=(1, 2))).sum())
    rows.append(("SIGKILL during encode, then --resume", "resumed", 1, int(proc.returncode == -signal.SIGKILL), lost))
    return rows


def input_faults(tmp: str) -> List[Row]:
    rows = []
    bad = [("NaN logits", torch.full((2, 3, 10), float("nan"))), ("Inf logits", torch.full((2, 3, 10), float("inf"))),
           ("zero-row image", [torch.zeros(0, 10)]), ("mixed class counts", [torch.zeros(3, 10), torch.zeros(3, 9)])]
    for name, y in bad:
        dst = os.path.join(tmp, "bad.store")
        r = _expect(name, sc.InputError, lambda: sc.encode(y, dst))
        rows.append(r[:4] + (int(os.path.exists(dst) or os.path.exists(dst + ".partial")),))
    dst = os.path.join(tmp, "exists.store")
    sc.encode(Y, dst, rank=2)
    before = _decoded(dst)
    r = _expect("destination exists", sc.InputError, lambda: sc.encode(Y, dst, rank=3))
    rows.append(r[:4] + (int(not np.array_equal(before, _decoded(dst))),))
    dump = os.path.join(tmp, "evil", "epoch_0")
    os.makedirs(dump)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save([Evil()], os.path.join(dump, "batch_0.tar"))
    full = os.path.join(tmp, "full.store")
    script = textwrap.dedent(f"""
        import resource, signal, sys, score_codec as sc
        from benchmarks.shared import teacher_like_logits
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))   # a full disk, for this process
        try:
            sc.encode(teacher_like_logits(200, 30, 10, seed=1), {full!r}, rank=10, quant="fp32")
        except sc.WriteFailedError:
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    left = int(os.path.exists(full) or os.path.exists(full + ".partial"))
    rows.append(("disk full while writing", "WriteFailedError", 1, int(proc.returncode == 3), left))
    from score_codec.formats import safe_torch_load

    rows.append(_expect("pickle that runs code", sc.UnsafePickleError, lambda: safe_torch_load(os.path.join(dump, "batch_0.tar"))))
    return rows


def fuzz(n: int) -> List[Row]:
    env = dict(os.environ, SCORE_FUZZ_EXAMPLES=str(n), OMP_NUM_THREADS="1")
    rows = []
    for test, name in (("tests/store/test_store_fuzz.py", "fuzzed store files"), ("tests/formats/test_fuzz.py", "fuzzed dump files"),
                       ("tests/store/test_record.py::test_fuzzed_records_raise_only_corrupt_record_error", "fuzzed records")):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        cases = n if "record" not in name else 300
        rows.append((name, "only ScoreError", cases, cases if proc.returncode == 0 else 0, 0))
    return rows


#: the slow tests the campaign runs: damaged stores and dumps read in capped children, SIGKILLed encodes
CAMPAIGN_TESTS = ("tests/store/test_store_fuzz.py::test_fuzz_campaign", "tests/formats/test_fuzz.py::test_fuzz_campaign",
                  "tests/store/test_replace.py::test_sigkill_at_100_random_moments")


def campaign(n: int, report: str) -> int:
    """Run the slow campaign (``n`` cases per store kind and per dump family, 100 SIGKILLs per store kind);
    its JSON lines go to ``report`` (replaced).  The pytest exit status."""
    if os.path.exists(report):
        os.remove(report)
    env = dict(os.environ, SCORE_FUZZ_CAMPAIGN=str(n), SCORE_FUZZ_REPORT=os.path.abspath(report), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow", *CAMPAIGN_TESTS],
                          cwd=ROOT, env=env)
    return proc.returncode


_OUTCOMES = ("ok", "score-error", "hang", "crash", "exception", "memory")


def render_campaign(rows: List[dict]) -> List[str]:
    """Markdown tables of the campaign's JSON rows (reads, then SIGKILL trials)."""
    reads = [r for r in rows if "cases" in r]
    kills = [r for r in rows if "sigkill" in r]
    kind = {"s.store": "store directory", "s.h5": "single-file store"}
    out = []
    if reads:
        total = sum(r["cases"] for r in reads)
        out += ["", f"## Fuzz campaign: {total:,} damaged files, each read in a child with a "
                    "20-30 s limit and a 512 MB address-space cap", "",
                "| reader | damage | cases | read fine | ScoreError | hang | crash | other exception | memory cap "
                "| peak MB (max / median) |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in reads:
            o = r["outcomes"]
            name = kind.get(r.get("store"), "") or f"{r.get('dump')} dump"
            damage = ("random bytes, checksums recomputed" if r.get("resealed") else "random bytes")
            out.append(f"| {name} | {damage} | {r['cases']:,} | " + " | ".join(f"{o.get(k, 0):,}" for k in _OUTCOMES)
                       + f" | {r['peak_mb']:.1f} / {r['median_peak_mb']:.1f} |")
        out += ["", "Damage: a flipped, zeroed or truncated run of 1-64 bytes (dumps: also random garbage) at a random "
                    "offset of a random file; with checksums recomputed, the store's CRCs are resealed over the damage "
                    "so that the parsers behind them see it."]
    if kills:
        out += ["", "## SIGKILL of an overwriting encode at random moments", "",
                "| store | trials | opens as the old store | opens as the new store | broken |", "|---|---:|---:|---:|---:|"]
        for r in kills:
            broken = r["trials"] - r["old"] - r["new"]
            out.append(f"| {kind.get(r['sigkill'], r['sigkill'])} | {r['trials']} | {r['old']} | {r['new']} | {broken} |")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fuzz", type=int, default=300, help="Hypothesis examples per fuzz target.")
    p.add_argument("--flips", type=int, default=200, help="Random single-bit flips injected into records.")
    p.add_argument("--out", default=None, help="Also write the markdown table to this file.")
    p.add_argument("--campaign", type=int, default=0, help="Also run the slow fuzz campaign with this many cases per "
                   "store kind and dump family (hours; its JSON lines go beside --out as campaign.jsonl, whose "
                   "tables are rendered with the report whenever that file exists).")
    args = p.parse_args(argv)
    jsonl = os.path.join(os.path.dirname(os.path.abspath(args.out)), "campaign.jsonl") if args.out else None
    campaign_rc = 0
    if args.campaign:
        jsonl = jsonl or os.path.join(tempfile.mkdtemp(prefix="score-campaign-"), "campaign.jsonl")
        campaign_rc = campaign(args.campaign, jsonl)
    torch.set_num_threads(1)
    rows: List[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(bit_flips(tmp, args.flips))
        rows += file_faults(tmp)
        rows += resume_faults(tmp)
        rows += input_faults(tmp)
    rows += fuzz(args.fuzz)
    lines = ["| fault | expected | injected | detected | data lost |", "|---|---|---:|---:|---:|"]
    lines += [f"| {f} | {e} | {i} | {d}{'' if d == i else ' (MISSED)'} | {l} |" for f, e, i, d, l in rows]
    ok = all(d == i and l == 0 for _, _, i, d, l in rows) and campaign_rc == 0
    if jsonl and os.path.exists(jsonl):
        with open(jsonl) as fh:
            lines += render_campaign([json.loads(x) for x in fh if x.strip()])
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(table + "\n")
    return 0 if ok else 1

