"""Shared checkers and data builders for the test-suite."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["centred", "kl_rows", "teacher_like_logits", "head_like_logits", "assert_close_rel", "assert_float32_decode_equal",
           "planted_low_rank_sparse", "make_meta", "all_files", "damage_file"]


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


def reseal(path) -> None:
    """Recompute a store's integrity members (docs/FORMAT.md section 2.1) after a test edited its HDF5
    files on purpose, so that the deeper check the test targets is the one that fires."""
    import json
    import os

    from score_codec.store.indexio import make_manifest
    from score_codec.store.integrity import write_prefix

    path = str(path)
    if os.path.isfile(path):
        write_prefix(path)
        return
    mf = os.path.join(path, "manifest.json")
    m = json.load(open(mf))
    fresh = make_manifest(m["num_images"], m["num_classes"], [e["bytes"] for e in m["shards"]], path)
    m["shards"], m["index"] = fresh["shards"], fresh["index"]
    with open(mf, "w") as fh:
        json.dump(m, fh)
