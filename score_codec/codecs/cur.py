"""CUR decomposition (``cur``): actual columns and rows of the matrix with an optimal core.

Column and row selection is *deterministic leverage-score selection*: the ``r`` columns (rows) with the
largest rank-``r`` leverage scores ``||V_r[j, :]||^2`` (``||U_r[i, :]||^2``) of the exact SVD.  The core is
the Frobenius-optimal ``U = C^+ Y R^+``.  The stored factors are ``A = C U`` (K, r) and ``B = R`` (r, C),
so decoding is the same matmul as every other codec.
"""
from __future__ import annotations

import torch

from .base import Codec, Factors, register_codec
from .svd import mask_ranks

__all__ = ["CURCodec"]


def _top_leverage(vecs: torch.Tensor, r: int) -> torch.Tensor:
    """Indices (n, r) of the largest leverage scores of ``vecs`` (n, m, >=r), ties to the lower index."""
    lev = vecs[..., :r].pow(2).sum(-1)
    # stable sort so equal scores pick the lower index: deterministic across devices
    return torch.sort(lev, dim=-1, descending=True, stable=True).indices[..., :r]


@register_codec
class CURCodec(Codec):
    """CUR with deterministic leverage-score column and row selection and optimal core."""

    codec_id = "cur"

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        n, k, c = y.shape
        q = int(ranks.max()) if ranks.numel() else 0
        a = y.new_zeros(n, k, q)
        b = y.new_zeros(n, q, c)
        if q == 0:
            return Factors(a=a, b=b, ranks=ranks.cpu())
        u, _, vh = torch.linalg.svd(y, full_matrices=False)
        # images of equal rank are handled as one batch
        for r in torch.unique(ranks).tolist():
            if r == 0:
                continue
            sel = (ranks == r).nonzero().flatten().to(y.device)
            ys = y[sel]
            cols = _top_leverage(vh[sel].transpose(-1, -2), r)        # (m, r)
            rows = _top_leverage(u[sel], r)                           # (m, r)
            cmat = torch.gather(ys, 2, cols[:, None, :].expand(-1, k, -1))   # (m, K, r)
            rmat = torch.gather(ys, 1, rows[:, :, None].expand(-1, -1, c))   # (m, r, C)
            core = torch.linalg.pinv(cmat) @ ys @ torch.linalg.pinv(rmat)    # (m, r, r)
            a[sel, :, :r] = cmat @ core
            b[sel, :r, :] = rmat
        return mask_ranks(a, b, ranks)
