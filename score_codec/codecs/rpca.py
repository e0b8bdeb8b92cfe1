"""Robust PCA by Principal Component Pursuit, inexact augmented Lagrange multipliers (``rpca``).

Lin, Chen and Ma (2010), as in the authors' ``inexact_alm_rpca.m``: start the dual at
``D / max(||D||_2, max|D| / lambda)``, ``mu = 1.25 / ||D||_2``, ``mu_max = 1e7 mu``, ``rho = 1.5``; each
iteration soft-thresholds S at ``lambda / mu``, singular-value-thresholds L at ``1 / mu``, updates the dual
and ``mu``; stop when ``||D - L - S||_F / ||D||_F < tol``.  ``lambda`` defaults to the theory value
``1 / sqrt(max(K, C))``.  All images of a batch iterate together; converged ones are frozen.

On soft labels unconstrained PCP does not compress (L comes out with high rank, S dense), so the codec
keeps the top-``r`` row space ``V_r`` of L, which the outliers in S do not tilt, and fits the stored
coefficients by least squares, ``A = Y V_r^T`` (our choice: it never does worse than ``L_r`` on that
subspace, and it is exact at full rank).  The budgeted sparse residual then picks up the outliers.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from ..errors import CodecError
from .arguments import check_int, check_real
from .base import Codec, Factors, register_codec
from .svd import mask_ranks

__all__ = ["RPCACodec", "rpca"]


def _shrink(x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * (x.abs() - tau).clamp_min(0)


def rpca(
    d: torch.Tensor,
    lam: Optional[float] = None,
    tol: float = 1e-7,
    max_iter: int = 500,
    rho: float = 1.5,
    svd_rank: Optional[int] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched inexact-ALM PCP: ``d`` (n, K, C) -> (L, S, iterations (n,)) with ``d ~ L + S``.

    L is low-rank, S sparse; computed in ``d``'s dtype (use float64 for tight tolerances).
    ``svd_rank`` (optional) computes only that many singular triplets per iteration with a seeded
    randomized SVD: L is then capped at that rank, which is all a rank-capped codec needs and makes
    each iteration cost O(K C q) instead of a full SVD.
    """
    n, k, c = d.shape
    lam = 1.0 / math.sqrt(max(k, c)) if lam is None else lam
    if svd_rank is not None and svd_rank < min(k, c):
        # the spectral norm only scales mu's schedule: a randomized estimate saves a full SVD
        with torch.random.fork_rng(devices=[d.device] if d.is_cuda else []):
            torch.manual_seed(0)
            norm2 = torch.svd_lowrank(d, q=min(4, k, c), niter=4)[1][:, 0].clamp_min(1e-30)
    else:
        norm2 = torch.linalg.matrix_norm(d, ord=2).clamp_min(1e-30)            # (n,)
    norm_inf = d.abs().amax(dim=(-2, -1)) / lam
    dual = d / torch.maximum(norm2, norm_inf)[:, None, None]
    mu = 1.25 / norm2
    mu_max = mu * 1e7
    d_norm = torch.linalg.matrix_norm(d).clamp_min(1e-30)
    low = torch.zeros_like(d)
    sparse = torch.zeros_like(d)
    iters = torch.zeros(n, dtype=torch.int64)
    active = torch.ones(n, dtype=torch.bool, device=d.device)
    for it in range(1, max_iter + 1):
        idx = active.nonzero().flatten()
        if idx.numel() == 0:
            break
        da, ya, la, m = d[idx], dual[idx], low[idx], mu[idx][:, None, None]
        sa = _shrink(da - la + ya / m, lam / m)
        target = da - sa + ya / m
        if svd_rank is not None and svd_rank < min(k, c):
            with torch.random.fork_rng(devices=[d.device] if d.is_cuda else []):
                torch.manual_seed(it)
                u, s, v = torch.svd_lowrank(target, q=svd_rank, niter=2)
            vh = v.transpose(-1, -2)
        else:
            u, s, vh = torch.linalg.svd(target, full_matrices=False)
        s = (s - 1.0 / m[:, :, 0]).clamp_min(0)
        la = (u * s[:, None, :]) @ vh
        z = da - la - sa
        dual[idx] = ya + m * z
        low[idx], sparse[idx] = la, sa
        mu[idx] = torch.minimum(mu[idx] * rho, mu_max[idx])
        iters[idx.cpu()] = it
        err = torch.linalg.matrix_norm(z) / d_norm[idx]
        active[idx[err < tol]] = False
    return low, sparse, iters


@register_codec
class RPCACodec(Codec):
    """PCP low-rank part truncated to the requested rank; the sparse part proposes residual positions."""

    codec_id = "rpca"

    def __init__(self, lam: Optional[float] = None, tol: float = 1e-5, max_iter: int = 50, oversample: int = 10) -> None:
        super().__init__(lam=lam, tol=tol, max_iter=max_iter, oversample=oversample)
        if lam is not None:
            lam = check_real("rpca: lam", lam, 0.0, error=CodecError)
        self.lam, self.tol = lam, check_real("rpca: tol", tol, 0.0, error=CodecError)
        self.max_iter = check_int("rpca: max_iter", max_iter, 1, error=CodecError)
        self.oversample = check_int("rpca: oversample", oversample, 0, error=CodecError)

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        q = int(ranks.max()) if ranks.numel() else 0
        # only the top-q row space of L is kept, so the iterations need only q singular triplets
        svd_rank = min(2 * q + self.oversample, min(y.shape[1], y.shape[2]))
        low, sparse, _ = rpca(y, lam=self.lam, tol=self.tol, max_iter=self.max_iter, svd_rank=svd_rank)
        if svd_rank < min(y.shape[1], y.shape[2]):
            with torch.random.fork_rng(devices=[y.device] if y.is_cuda else []):
                torch.manual_seed(0)
                vh = torch.svd_lowrank(low, q=svd_rank, niter=2)[2].transpose(-1, -2)
        else:
            vh = torch.linalg.svd(low, full_matrices=False)[2]
        if vh.shape[-2] < q:  # PCP returned fewer components than asked: pad with zeros
            vh = torch.cat([vh, vh.new_zeros(vh.shape[0], q - vh.shape[-2], vh.shape[-1])], dim=-2)
        basis = vh[..., :q, :]
        f = mask_ranks(y @ basis.transpose(-1, -2), basis, ranks)
        f.sparse = sparse
        return f
