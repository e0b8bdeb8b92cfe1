"""Shared checkers and data builders for the test-suite."""
from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["centred", "kl_rows", "teacher_like_logits", "assert_close_rel", "assert_float32_decode_equal",
           "planted_low_rank_sparse", "make_meta", "all_files", "damage_file", "assert_stores_close",
           "run_isolated"]


def centred(y: torch.Tensor) -> torch.Tensor:
    """Row-centred logits (what a store decodes unless keep_mean=True)."""
    return y - y.mean(-1, keepdim=True)


def kl_rows(y: torch.Tensor, yhat: torch.Tensor, t: float = 1.0) -> float:
    """Mean over rows of KL(softmax(y/T) || softmax(yhat/T)), float64."""
    p = torch.log_softmax(y.double().reshape(-1, y.shape[-1]) / t, -1)
    q = torch.log_softmax(yhat.double().reshape(-1, y.shape[-1]) / t, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def teacher_like_logits(n: int, k: int, c: int, rank: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, k, c) logits shaped like a teacher's: a dominant class per image, a few shared
    directions varying across augmentations, and small noise.  For unit tests only; the benchmarks
    use a real teacher."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, c, (n,), generator=g)
    base = torch.randn(n, 1, c, generator=g) * 2
    base[torch.arange(n), 0, cls] += 8
    coef = torch.randn(n, k, rank, generator=g) * 2
    dirs = torch.randn(n, rank, c, generator=g)
    return base + coef @ dirs + 0.05 * torch.randn(n, k, c, generator=g)


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


def make_meta(n: int, k: int, batch: int = 4, seed: int = 0):
    """An AugMeta for n images x k epochs, shuffled per epoch into batches with cutmix parameters."""
    from score_codec.store.meta import AugMeta, BATCH_DTYPE, IMAGE_DTYPE, MIX_CUTMIX, ROW_DTYPE

    rng = np.random.default_rng(seed)
    rows, batches = [], []
    for e in range(k):
        order = rng.permutation(n)
        for b, s in enumerate(range(0, n, batch)):
            ids = order[s : s + batch]
            start = len(rows)
            perm = rng.permutation(len(ids))
            for p, i in enumerate(ids):
                coords = rng.random(4).astype(np.float32)
                rows.append((i, e, e, b, p, coords, rng.integers(0, 2), perm[p]))
            box = rng.integers(0, 28, 4)
            batches.append((e, b, start, len(ids), MIX_CUTMIX, rng.beta(1, 1), box))
    images = np.array([(28, 28, i % 3) for i in range(n)], IMAGE_DTYPE)
    return AugMeta(rows=np.array(rows, ROW_DTYPE), batches=np.array(batches, BATCH_DTYPE), images=images,
                   attrs={"input_size": 28, "source_format": "test"})


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


def _retoc(path: str, rebuild: bool) -> None:
    """Recompute a file's table of contents (docs/FORMAT.md section 2.2): ``rebuild`` describes its datasets
    afresh with h5py (after a test edited them on purpose); otherwise only the checksums and the file size
    are recomputed from the bytes, without libhdf5, whatever the (possibly damaged) fields say."""
    import json
    import os
    import struct
    import zlib

    from score_codec.store import header

    if rebuild:
        import h5py

        with h5py.File(path, "r+") as f:
            old = f[header.TOC_DATASET][()].tobytes()
            names = json.loads(old)["datasets"]
            del f[header.TOC_DATASET]
            sections = {}
            for name, e in names.items():
                arr = f[name][()]
                sections[name] = (e["dtype"], None if e["crc32"] is None else header.table_crc32(arr))
            toc = header.write_toc(f, sections)
        header.write_toc_prefix(path, toc)
        return
    data = bytearray(open(path, "rb").read())
    if len(data) < header.PREFIX_BYTES or data[:8] != b"SCORELS\x00":
        return
    fields = list(struct.unpack_from("<8sIIQQQI", data))
    off, n = fields[4], fields[5]
    blob = bytes(data[off:off + n]) if off + n <= len(data) else b""
    try:
        toc = json.loads(blob)
        for e in toc["datasets"].values():
            if e.get("crc32") is not None and e["offset"] + e["bytes"] <= len(data):
                e["crc32"] = zlib.crc32(bytes(data[e["offset"]:e["offset"] + e["bytes"]]))
        fresh = json.dumps(toc, separators=(",", ":")).encode()
        if len(fresh) <= n:
            blob = fresh + b" " * (n - len(fresh))
            data[off:off + n] = blob
    except Exception:       # the damage made the table unparsable: only its checksum is recomputed
        pass
    fields[3], fields[6] = len(data), zlib.crc32(blob)
    head = struct.pack("<8sIIQQQI", *fields)
    data[:header.PREFIX_BYTES] = head + struct.pack("<I", zlib.crc32(head))
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


def reseal(path, rebuild: bool = True) -> None:
    """Recompute a store's integrity data (docs/FORMAT.md sections 2.1 and 2.2) after a test edited its
    files on purpose, so that the deeper check the test targets is the one that fires.  ``rebuild=False``
    recomputes checksums and sizes from the raw bytes only (no libhdf5: for damaged files)."""
    import json
    import os

    from score_codec.store.integrity import _meta_crc, index_entry

    from score_codec.store.header import TOC_PREFIX_VERSION, probe_prefix

    path = str(path)
    index = path if os.path.isfile(path) else os.path.join(path, "index.h5")
    try:
        toc = probe_prefix(index) == TOC_PREFIX_VERSION
    except Exception:   # a damaged prefix: nothing to recompute in it
        toc = False
    if toc:
        _retoc(index, rebuild)
    elif os.path.isfile(path):   # a store without a table of contents (format version 2)
        from score_codec.store.integrity import write_prefix

        if open(path, "rb").read(8) == b"SCORELS\x00":
            write_prefix(path)
        return
    if os.path.isfile(path):
        return
    mf = os.path.join(path, "manifest.json")
    m = json.load(open(mf))
    for e in m["shards"]:
        fn = os.path.join(path, "shards", e["name"])
        if os.path.isfile(fn) and isinstance(e.get("data_offset"), int) and isinstance(e.get("bytes"), int):
            e["file_bytes"] = os.path.getsize(fn)
            e["meta_crc32"] = _meta_crc(fn, e["data_offset"], e["bytes"])
    m["index"] = index_entry(os.path.join(path, "index.h5"))
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
