"""Rate control: choose each image's rank from a fixed rank, an energy share, or a byte budget.

With a budget, ranks are allocated across all images of a chunk to minimise the total squared error
(the sum of discarded squared singular values) under the byte budget: each extra rank unit of image i
costs ``unit_cost[i]`` bytes and removes ``s[i, r]^2`` of error, and since singular values decrease,
taking units in order of ``s^2 / cost`` is optimal for this separable problem (up to the last unit).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import BudgetError, CodecError

__all__ = ["allocate_ranks", "largest_fitting"]


def allocate_ranks(
    sv: torch.Tensor,
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    budget: Optional[float] = None,
    unit_cost: Optional[torch.Tensor] = None,
    fixed_cost: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-image ranks (n,) int64 from singular values ``sv`` (n, q), descending, zero-padded.

    Exactly one of ``rank`` (same rank for all, capped at q), ``energy`` (smallest r whose
    cumulative ``s^2`` share reaches it) or ``budget`` (bytes; needs ``unit_cost`` and ``fixed_cost``,
    both (n,) bytes) must be given.
    """
    given = [x is not None for x in (rank, energy, budget)]
    if sum(given) != 1:
        raise CodecError("give exactly one of rank=, energy= or a byte budget (ratio= / target_bytes=)")
    sv = sv.detach().to("cpu", torch.float64)
    n, q = sv.shape
    if rank is not None:
        if rank < 0:
            raise CodecError(f"rank must be >= 0, found {rank}")
        return torch.full((n,), min(rank, q), dtype=torch.int64)
    if energy is not None:
        if not 0 < energy <= 1:
            raise CodecError(f"energy must lie in (0, 1], found {energy}")
        e = sv.pow(2)
        total = e.sum(-1, keepdim=True)
        share = torch.where(total > 0, e.cumsum(-1) / total.clamp_min(1e-300), torch.ones_like(e))
        # tiny slack so that energy=1.0 is reached despite rounding
        return ((share < energy - 1e-12).sum(-1) + 1).clamp(max=q).where(total[:, 0] > 0, torch.zeros(n, dtype=torch.int64))
    if unit_cost is None or fixed_cost is None:
        raise CodecError("a byte budget needs unit_cost and fixed_cost")
    unit = unit_cost.to(torch.float64)
    fixed = float(fixed_cost.sum())
    if fixed > budget:
        raise BudgetError(f"the byte budget {budget:.0f} B is below the {fixed:.0f} B that headers and residuals need at rank 0")
    gain = sv.pow(2) / unit[:, None]
    order = torch.argsort(gain.flatten(), descending=True, stable=True)
    cost = unit[:, None].expand(n, q).flatten()[order]
    fits = (fixed + cost.cumsum(0)) <= budget
    # units with no energy buy nothing
    take = order[fits & (gain.flatten()[order] > 0)]
    ranks = torch.zeros(n, dtype=torch.int64)
    ranks.index_add_(0, take // q, torch.ones_like(take))
    return ranks


def largest_fitting(ok: Callable[[int], bool], lo: int, hi: int) -> Optional[int]:
    """The largest m in [lo, hi] with ``ok(m)`` (ok true up to some m, false beyond it: a cost under a
    budget), found by bisection; None when ``ok(lo)`` is false."""
    if not ok(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo
