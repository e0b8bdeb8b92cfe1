"""Truncated SVD (``svd``) and randomized SVD (``rsvd``, Halko, Martinsson and Tropp 2011)."""
from __future__ import annotations

import torch

from ..errors import CodecError
from .arguments import check_int
from .base import Codec, Factors, register_codec

__all__ = ["SVDCodec", "RandomizedSVDCodec", "split_balanced", "mask_ranks"]


def mask_ranks(a: torch.Tensor, b: torch.Tensor, ranks: torch.Tensor) -> Factors:
    """Zero components past each image's rank: ``a`` (n, K, q), ``b`` (n, q, C) -> :class:`Factors`."""
    q = a.shape[-1]
    keep = (torch.arange(q, device=a.device)[None, :] < ranks.to(a.device)[:, None]).to(a.dtype)
    return Factors(a=a * keep[:, None, :], b=b * keep[:, :, None], ranks=ranks.cpu())


def split_balanced(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor):
    """Split ``u diag(s) vh`` as ``(u sqrt(s)) (sqrt(s) vh)``.

    Balancing keeps both factors in the same dynamic range, which matters for fp16/bf16/int8 storage.
    """
    root = s.clamp_min(0).sqrt()
    return u * root[:, None, :], root[:, :, None] * vh


@register_codec
class SVDCodec(Codec):
    """Exact truncated SVD (Eckart-Young optimal in Frobenius norm for each rank)."""

    codec_id = "svd"

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        q = int(ranks.max()) if ranks.numel() else 0
        u, s, vh = torch.linalg.svd(y, full_matrices=False)
        a, b = split_balanced(u[..., :q], s[..., :q], vh[..., :q, :])
        return mask_ranks(a, b, ranks)


@register_codec
class RandomizedSVDCodec(Codec):
    """Randomized SVD: a range finder with ``oversample`` extra columns and ``niter`` power iterations.

    Uses ``torch.svd_lowrank`` (Halko et al. Algorithm 5.1); the random test matrix comes from a
    generator seeded with ``seed`` so encoding is deterministic.
    """

    codec_id = "rsvd"

    def __init__(self, oversample: int = 8, niter: int = 2, seed: int = 0) -> None:
        super().__init__(oversample=oversample, niter=niter, seed=seed)
        self.oversample = check_int("rsvd: oversample", oversample, 0, error=CodecError)
        self.niter = check_int("rsvd: niter", niter, 0, error=CodecError)
        self.seed = check_int("rsvd: seed", seed, 0, error=CodecError)

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        q = int(ranks.max()) if ranks.numel() else 0
        qq = min(q + self.oversample, y.shape[1], y.shape[2])
        if q == 0:
            n, k, c = y.shape
            return mask_ranks(y.new_zeros(n, k, 0), y.new_zeros(n, 0, c), ranks)
        # svd_lowrank draws from the global generator; fork and pin it so encoding is repeatable
        with torch.random.fork_rng(devices=[y.device] if y.is_cuda else []):
            torch.manual_seed(self.seed)
            u, s, v = torch.svd_lowrank(y, q=qq, niter=self.niter)
        a, b = split_balanced(u[..., :q], s[..., :q], v[..., :q].transpose(-1, -2))
        return mask_ranks(a, b, ranks)
