"""Shared checkers and data builders for the test-suite."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

# the synthetic logits and augmentation metadata the benchmarks build too: one definition, in benchmarks.shared
from benchmarks.shared import make_meta, reseal, teacher_like_logits
from score_codec.store.allocate import RATIO_TOLERANCE   # the library's own tolerance

__all__ = ["CampaignTally", "centred", "kl_rows", "teacher_like_logits", "head_like_logits", "assert_close_rel", "assert_float32_decode_equal", "assert_ratio_met", "RATIO_TOLERANCE",
           "planted_low_rank_sparse", "make_meta", "all_files", "damage_file", "assert_stores_close",
           "run_isolated", "reseal", "needs_fashion_mnist", "fashion_mnist_missing"]


def centred(y: torch.Tensor) -> torch.Tensor:
    """Row-centred logits (what a store decodes unless keep_mean=True)."""
    return y - y.mean(-1, keepdim=True)


def kl_rows(y: torch.Tensor, yhat: torch.Tensor, t: float = 1.0) -> float:
    """Mean over rows of KL(softmax(y/T) || softmax(yhat/T)), float64."""
    p = torch.log_softmax(y.double().reshape(-1, y.shape[-1]) / t, -1)
    q = torch.log_softmax(yhat.double().reshape(-1, y.shape[-1]) / t, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())




def assert_ratio_met(stats: dict, target: float, spent: float = 0.0) -> None:
    """``stats["ratio"]`` meets ``target`` to within :data:`RATIO_TOLERANCE` and, with ``spent`` > 0, spends
    the budget: the ratio is below ``target * (1 + spent)``."""
    got = stats["ratio"]
    assert got >= target * (1 - RATIO_TOLERANCE), f"ratio {got:.4g}, target {target:g}"
    if spent:
        assert got < target * (1 + spent), f"ratio {got:.4g} leaves much of the {target:g}x budget unspent"


def head_like_logits(n: int, k: int, c: int, d: int = 24, seed: int = 0) -> torch.Tensor:
    """(n, k, c) logits of a teacher's final linear layer, ``W h + b``: d-dimensional features ``h`` around a
    per-class prototype (one class per image), varying across the k views, so every row of the store lies near
    one d-dimensional affine subspace, as a real teacher's rows do.  For unit tests only."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, d, generator=g) * (3.0 / d ** 0.5)
    b = torch.randn(c, generator=g) * 0.5
    cls = torch.randint(0, c, (n,), generator=g)
    proto = torch.randn(c, d, generator=g)
    h = proto[cls][:, None, :] * 1.5 + torch.randn(n, k, d, generator=g)
    return h @ w.T + b + 0.02 * torch.randn(n, k, c, generator=g)


def assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    """max|a - b| <= rel * max|b| (with a floor so all-zero targets compare absolutely)."""
    a, b = torch.as_tensor(a).detach(), torch.as_tensor(b).detach()
    err = float((a - b).abs().max())
    scale = max(float(b.abs().max()), 1e-12)
    if err > rel * scale:
        raise AssertionError(f"max abs error {err:.3e} exceeds {rel:.1e} x {scale:.3e}")


def assert_float32_decode_equal(got: np.ndarray, want: np.ndarray, terms: int) -> None:
    """Decoded float32 logits equal up to the rounding of a ``terms``-term float32 dot product.

    The same stored bytes decode to the same value up to summation order, which BLAS builds and thread
    counts choose differently: allow ``terms + 2`` units of float32 rounding of the largest magnitude."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"shape {got.shape} != {want.shape}")
    tol = (terms + 2) * np.finfo(np.float32).eps * max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max()) if got.size else 0.0
    if err > tol:
        raise AssertionError(f"max abs difference {err:.3e} exceeds float32 rounding bound {tol:.3e} ({terms} terms)")


#: one unit in the last place, relative, of each stored factor dtype (int8 is handled by its row scales)
_STORED_EPS = {"fp32": float(np.finfo(np.float32).eps), "fp16": float(np.finfo(np.float16).eps),
               "bf16": 2.0 ** -7}


def _stored_ulp(x: torch.Tensor, quant: str, scale) -> torch.Tensor:
    """One step of the stored grid at each value of ``x`` (float32, dequantised): two encodings of inputs
    that differ by float32 rounding may round a factor to neighbouring grid points, never further apart."""
    if quant == "int8":
        step = scale if scale is not None else x.abs().amax(-1) / 127.0
        return step.float()[:, None].expand_as(x) * (1 + 1e-6)
    tiny = float(np.finfo(np.float16).smallest_subnormal) if quant == "fp16" else 0.0
    return x.abs() * _STORED_EPS[quant] + tiny


def assert_stores_close(got_path, want_path, input_rel: float = 0.0, explained=None) -> int:
    """Two stores encoded from the same logits in different processes (or thread counts, batch splits,
    CPUs) decode alike up to what their arithmetic allows.

    Encoding computes factors in float32, where the summation order of another process or CPU kernel
    changes the last bits; storing them rounds each factor to its quantisation grid, so one factor can land
    one grid step away.  For record ``A (K, r)``, ``B (r, C)`` the bound per decoded value is
    ``sum_r ulp(A) |B| + |A| ulp(B) + ulp(A) ulp(B)`` plus float32 rounding of the r-term product, plus
    ``input_rel`` x max|logits| where the inputs themselves were computed in another process.

    ``explained(image, view, got_row, want_row) -> bool`` may accept a row outside that bound (a fit that
    takes a discrete choice, such as a line search, can land on another candidate); returns how many rows
    it accepted."""
    import score_codec as sc

    got, want = sc.LabelStore(got_path), sc.LabelStore(want_path)
    if len(got) != len(want):
        raise AssertionError(f"{got_path} holds {len(got)} images, {want_path} holds {len(want)}")
    eps32 = float(np.finfo(np.float32).eps)
    accepted = 0
    for i in range(len(want)):
        g, w = got.matrix(i).double(), want.matrix(i).double()
        if g.shape != w.shape:
            raise AssertionError(f"image {i}: shape {tuple(g.shape)} != {tuple(w.shape)}")
        raw = want.record(i, raw=True)
        rec = raw.dequantized()
        b = rec.b if rec.b is not None else want.basis(rec.basis)[: rec.rank]
        a = rec.a
        ua = _stored_ulp(a.T, raw.quant, raw.a_scale).T
        if rec.b is not None:
            ub = _stored_ulp(b, raw.quant, raw.b_scale)
        else:  # a shared basis: the tests compare stores whose bases are the same bytes
            ub = torch.zeros_like(b)
        tol = (ua.double() @ b.abs().double() + a.abs().double() @ ub.double() + ua.double() @ ub.double())
        if raw.res_vals.numel():
            tol[raw.res_rows, raw.res_cols] += _stored_ulp(rec.res_vals[None], "fp16", None)[0].double()
        scale = max(1.0, float(w.abs().max()))
        tol = tol + (rec.rank + 2) * eps32 * scale + input_rel * scale
        err = (g - w).abs()
        bad = err > tol
        for v in sorted({int(x) for x in torch.nonzero(bad)[:, 0]}) if explained is not None else ():
            if explained(i, v, g[v], w[v]):
                bad[v] = False
                accepted += 1
        if bool(bad.any()):
            j = int(torch.nonzero(bad)[0][0]), int(torch.nonzero(bad)[0][1])
            raise AssertionError(f"image {i} value {j}: {float(g[j]):.7g} vs {float(w[j]):.7g}, difference "
                                 f"{float(err[j]):.3e} exceeds the {raw.quant} rounding bound "
                                 f"{float(tol[j]):.3e}")
    return accepted


def planted_low_rank_sparse(n: int, k: int, c: int, rank: int, density: float, seed: int = 0):
    """(L, S, mask) float64 with L of exact rank ``rank`` and S with entries of magnitude 5-10 on ``mask``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, k, rank, generator=g, dtype=torch.float64) @ torch.randn(n, rank, c, generator=g, dtype=torch.float64)
    mask = torch.rand(n, k, c, generator=g) < density
    vals = (torch.rand(int(mask.sum()), generator=g, dtype=torch.float64) * 5 + 5)
    vals *= torch.sign(torch.randn(int(mask.sum()), generator=g, dtype=torch.float64))
    sparse = torch.zeros(n, k, c, dtype=torch.float64)
    sparse[mask] = vals
    return low, sparse, mask


def all_files(path) -> list:
    """Every file below ``path`` (or ``path`` itself), sorted."""
    import os

    path = str(path)
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)


def damage_file(path: str, pos: float, mode: str, nbytes: int) -> None:
    """Damage a file in place: ``mode`` flip (invert ``nbytes`` bytes), zero, truncate or garbage
    (replace it with a short byte pattern), at relative position ``pos`` in [0, 1]."""
    data = bytearray(open(path, "rb").read())
    at = int(pos * max(len(data) - 1, 0))
    if mode == "flip":
        for j in range(at, min(at + nbytes, len(data))):
            data[j] ^= 0xFF
    elif mode == "zero":
        data[at : at + nbytes] = bytes(len(data[at : at + nbytes]))
    elif mode == "garbage":
        data = bytearray(bytes(range(nbytes)) * 3)
    else:
        data = data[:at]
    open(path, "wb").write(bytes(data))



def edit_toc(path, edit) -> None:
    """Rewrite the table of contents of the HDF5 file ``path`` as ``edit(toc)`` (a dict, edited in place)
    leaves it, with valid checksums: a test forging what the reader is told."""
    import json

    import h5py

    from score_codec.store import header

    with h5py.File(str(path), "r+") as f:
        toc = json.loads(f[header.TOC_DATASET][()].tobytes())
        edit(toc)
        del f[header.TOC_DATASET]
        blob = json.dumps(toc).encode()
        ds = f.create_dataset(header.TOC_DATASET, data=np.frombuffer(blob, np.uint8))
        loc = (int(ds.id.get_offset()), len(blob), zlib.crc32(blob))
    header.write_toc_prefix(str(path), loc)


def downgrade(path) -> None:
    """Turn a store just written into one of format version 2 (no table of contents): for tests of the
    ``allow_unchecked`` path on stores built on the fly (the committed fixtures are the real ones)."""
    import json
    import os

    import h5py

    from score_codec.store import header
    from score_codec.store.integrity import index_entry, write_prefix

    path = str(path)
    index = path if os.path.isfile(path) else os.path.join(path, "index.h5")
    with h5py.File(index, "r+") as f:
        del f[header.TOC_DATASET]
        f.attrs["format_version"] = 2
        if "manifest" in f.attrs:
            m = json.loads(f.attrs["manifest"])
            m["format_version"] = 2
            f.attrs["manifest"] = json.dumps(m)
    if os.path.isfile(path):
        write_prefix(path)
        return
    with open(index, "r+b") as fh:   # a version-2 index has no prefix in its user block
        fh.write(bytes(header.PREFIX_BYTES))
    mf = os.path.join(path, "manifest.json")
    m = json.load(open(mf))
    m["format_version"] = 2
    m["index"] = index_entry(index)
    with open(mf, "w") as fh:
        json.dump(m, fh)



def _vm_bytes() -> int:
    """This process's current virtual memory size (Linux), 0 where unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_isolated(fn, timeout: float = 30.0, memory: int = 512 * 2**20) -> str:
    """Run ``fn()`` in a forked child that may use ``memory`` bytes of address space beyond what it starts
    with, for at most ``timeout`` seconds.  Returns "ok", "score-error: <type>" for a library error, or what
    went wrong otherwise: "exception: <type>: <message>", "hang" (killed at the timeout; libhdf5 ignores
    Ctrl-C when it loops), "crash: signal N" or "memory" (the address-space cap was hit)."""
    return run_isolated_report(fn, timeout, memory)[0]


def _status_bytes(key: str) -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_isolated_report(fn, timeout: float = 30.0, memory: int = 512 * 2**20):
    """:func:`run_isolated`, also returning the peak resident memory the child added while running
    ``fn`` (bytes; -1 where it did not report): (outcome, peak)."""
    import os
    import resource
    import select
    import signal
    import time

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        msg = "ok"
        try:
            base = _vm_bytes()
            rss0 = _status_bytes("VmRSS")
            if base:
                resource.setrlimit(resource.RLIMIT_AS, (base + memory, base + memory))
            from score_codec.errors import ScoreError

            try:
                fn()
            except ScoreError as exc:
                msg = f"score-error: {type(exc).__name__}"
            except MemoryError:
                msg = "memory"
            except BaseException as exc:
                msg = f"exception: {type(exc).__name__}: {str(exc)[:300]}"
            msg = f"{max(_status_bytes('VmHWM') - rss0, 0)} {msg}"
        finally:
            os.write(w, msg.encode()[:4000])
            os._exit(0)
    os.close(w)
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "hang", -1
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                data = os.read(r, 4096)
                if not data:
                    break
                chunks.append(data)
    finally:
        os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"crash: signal {os.WTERMSIG(status)}", -1
    text = b"".join(chunks).decode(errors="replace")
    if not text:
        return "crash: no report", -1
    peak, _, outcome = text.partition(" ")
    return (outcome, int(peak)) if peak.isdigit() else (text, -1)


class CampaignTally:
    """The outcomes of a slow fuzz campaign (see :func:`run_isolated_report`): counts by kind, peak memory per
    read and the failing cases; :meth:`finish` writes one JSON line to ``$SCORE_FUZZ_REPORT`` when it is set
    and fails on any case that was not "ok" or a ScoreError, or that reached ``memory`` bytes."""

    def __init__(self, memory: int) -> None:
        import collections
        import time

        self.memory, self.counts, self.peaks, self.bad = memory, collections.Counter(), [], []
        self.start = time.monotonic()

    def add(self, outcome: str, peak: int, what: str) -> None:
        self.counts["ok" if outcome == "ok" else "score-error" if outcome.startswith("score-error") else
                    outcome.split(":")[0]] += 1
        self.peaks.append(peak)
        if not (outcome == "ok" or outcome.startswith("score-error")) or peak >= self.memory:
            self.bad.append(what)

    def finish(self, **key) -> None:
        import json
        import os
        import time

        row = {**key, "cases": sum(self.counts.values()), "outcomes": dict(self.counts),
               "peak_mb": round(max(self.peaks) / 2**20, 1),
               "median_peak_mb": round(float(np.median(self.peaks)) / 2**20, 1),
               "failures": self.bad[:20], "seconds": round(time.monotonic() - self.start)}
        if os.environ.get("SCORE_FUZZ_REPORT"):
            with open(os.environ["SCORE_FUZZ_REPORT"], "a") as fh:
                fh.write(json.dumps(row) + "\n")
        assert not self.bad, self.bad[:20]


def fashion_mnist_missing() -> bool:
    """True where the Debian package dataset-fashion-mnist is not installed."""
    try:
        from score_codec.training.images import load_fashion_mnist

        load_fashion_mnist("test")
        return False
    except Exception:
        return True


#: skip a test that reads Fashion-MNIST where the Debian package is not installed
needs_fashion_mnist = pytest.mark.skipif(fashion_mnist_missing(),
                                         reason="Fashion-MNIST is not installed (bash scripts/install-system-deps.sh)")
