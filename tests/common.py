"""Shared checkers and data builders for the test-suite."""
from __future__ import annotations

import numpy as np
import torch

# the synthetic logits and augmentation metadata the benchmarks build too: one definition, in benchmarks.shared
from benchmarks.shared import make_meta, teacher_like_logits

__all__ = ["centred", "kl_rows", "teacher_like_logits", "assert_close_rel", "assert_float32_decode_equal",
           "planted_low_rank_sparse", "make_meta", "all_files", "damage_file"]


def centred(y: torch.Tensor) -> torch.Tensor:
    """Row-centred logits (what a store decodes unless keep_mean=True)."""
    return y - y.mean(-1, keepdim=True)


def kl_rows(y: torch.Tensor, yhat: torch.Tensor, t: float = 1.0) -> float:
    """Mean over rows of KL(softmax(y/T) || softmax(yhat/T)), float64."""
    p = torch.log_softmax(y.double().reshape(-1, y.shape[-1]) / t, -1)
    q = torch.log_softmax(yhat.double().reshape(-1, y.shape[-1]) / t, -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


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
