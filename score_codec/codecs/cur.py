"""CUR decomposition (``cur``): actual columns and rows of the matrix with an optimal core.

Columns and rows are chosen by *column-pivoted QR* (Businger and Golub 1965): repeatedly take the
column with the largest norm orthogonal to those already taken (rows: the same on ``Y^T``).  The order is
deterministic and nested, so the rank-``r+1`` selection contains the rank-``r`` one and, with the
Frobenius-optimal core ``U = C^+ Y R^+``, the error never grows with the rank.  The stored factors are ``A = C U`` (K, r) and ``B = R`` (r, C),
so decoding is the same matmul as every other codec.
"""
from __future__ import annotations

import torch

from .base import Codec, Factors, register_codec
from .svd import mask_ranks

__all__ = ["CURCodec"]


def pivot_order(y: torch.Tensor, r: int) -> torch.Tensor:
    """First ``r`` pivots of column-pivoted QR of each matrix in ``y`` (n, K, C): indices (n, r).

    Batched modified Gram-Schmidt; ties go to the lower index (argmax), so the order is deterministic.
    """
    res = y.clone()
    picks = []
    for _ in range(r):
        norms = res.pow(2).sum(-2)                                    # (n, C)
        if picks:
            norms.scatter_(1, torch.stack(picks, 1), -1.0)            # never pick a column twice
        j = norms.argmax(-1)                                          # (n,)
        col = torch.gather(res, 2, j[:, None, None].expand(-1, res.shape[1], 1))   # (n, K, 1)
        nrm = col.norm(dim=1, keepdim=True)
        q = torch.where(nrm > 0, col / nrm.clamp_min(1e-30), torch.zeros_like(col))
        res = res - q @ (q.transpose(1, 2) @ res)
        picks.append(j)
    return torch.stack(picks, 1) if picks else torch.zeros(y.shape[0], 0, dtype=torch.int64, device=y.device)


@register_codec
class CURCodec(Codec):
    """CUR with column-pivoted-QR column and row selection and the optimal core."""

    codec_id = "cur"

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        n, k, c = y.shape
        q = int(ranks.max()) if ranks.numel() else 0
        a = y.new_zeros(n, k, q)
        b = y.new_zeros(n, q, c)
        if q == 0:
            return Factors(a=a, b=b, ranks=ranks.cpu())
        col_order = pivot_order(y, q)                                  # (n, q), nested in r
        row_order = pivot_order(y.transpose(1, 2), q)
        # images of equal rank are handled as one batch
        for r in torch.unique(ranks).tolist():
            if r == 0:
                continue
            sel = (ranks == r).nonzero().flatten().to(y.device)
            ys = y[sel]
            cols = col_order[sel, :r]
            rows = row_order[sel, :r]
            cmat = torch.gather(ys, 2, cols[:, None, :].expand(-1, k, -1))   # (m, K, r)
            rmat = torch.gather(ys, 1, rows[:, :, None].expand(-1, -1, c))   # (m, r, C)
            # the selected columns can be nearly dependent: solve for the core in float64
            c64, r64 = cmat.double(), rmat.double()
            core = torch.linalg.pinv(c64) @ ys.double() @ torch.linalg.pinv(r64)    # (m, r, r)
            a[sel, :, :r] = (c64 @ core).to(y.dtype)
            b[sel, :r, :] = rmat
        return mask_ranks(a, b, ranks)
