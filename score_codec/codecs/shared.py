"""Shared basis (``shared``): one orthonormal basis per group of images (a class, or the whole store).

Each image stores only its coefficients ``A = Y B^T`` (K, r); the basis ``B`` (r, C) is stored once per
group.  The basis is the top-``r`` eigenvectors of the group's pooled Gram matrix ``sum_i Y_i^T Y_i``,
which minimises the group's total squared error for a rank-``r`` subspace.  This goes beyond the SCORE
paper; the codec benchmark measures it against the per-image methods.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .base import Codec, Factors, register_codec
from .svd import mask_ranks

__all__ = ["SharedBasisCodec"]


@register_codec
class SharedBasisCodec(Codec):
    """Per-group shared basis from the pooled Gram matrix; ``group`` is ``"class"`` or ``"all"``."""

    codec_id = "shared"
    shared_basis = True

    def __init__(self, group: str = "class") -> None:
        if group not in ("class", "all"):
            from ..errors import CodecError

            raise CodecError(f"shared codec: group must be 'class' or 'all', found {group!r}")
        super().__init__(group=group)
        self.group = group

    @staticmethod
    def gram(y: torch.Tensor) -> torch.Tensor:
        """Pooled Gram matrix of a batch ``y`` (n, K, C) -> (C, C), float64 for a stable eigensolve."""
        y64 = y.to(torch.float64).reshape(-1, y.shape[-1])
        return y64.T @ y64

    @staticmethod
    def basis_from_gram(gram: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eigen-decompose a Gram matrix (C, C): returns (eigenvalues descending (C,), basis rows (C, C))."""
        evals, evecs = torch.linalg.eigh(gram)
        order = torch.argsort(evals, descending=True)
        return evals[order].clamp_min(0), evecs[:, order].T

    def project(self, y: torch.Tensor, basis: torch.Tensor, ranks: torch.Tensor) -> Factors:
        """Coefficients of ``y`` (n, K, C) on ``basis`` (q, C): ``a`` (n, K, q), ``b`` the broadcast basis."""
        b = basis.to(y.dtype)[None].expand(y.shape[0], -1, -1)
        return mask_ranks(y @ b.transpose(-1, -2), b, ranks)

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        """Fit one basis on the whole batch and project on it (used when no grouping is given)."""
        q = int(ranks.max()) if ranks.numel() else 0
        _, basis = self.basis_from_gram(self.gram(y))
        return self.project(y, basis[:q], ranks)
