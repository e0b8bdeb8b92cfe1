"""Sparse residual: the few entries per row that the low-rank part misses most.

Entries are chosen per row by a score; ``"kl"`` (default) scores an entry by ``p * R^2``, its
second-order contribution to KL(softmax(Y) || softmax(Y_hat)) at T=1 (p = softmax of the original
row), ``"abs"`` by ``|R|``.  Values are stored in fp16 and indices delta-coded per row.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["select_residual", "RESIDUAL_SCORES"]

RESIDUAL_SCORES = ("kl", "abs")


def select_residual(
    y: torch.Tensor,
    approx: torch.Tensor,
    per_row: int,
    score: str = "kl",
    candidates: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Pick the residual to store.

    ``y`` and ``approx`` (n, K, C) float32 are the target and the decoded low-rank part; keeps
    ``per_row`` entries of ``R = y - approx`` per row (``candidates``, if given, restricts the choice to
    its non-zeros, e.g. RPCA's sparse part).  Returns a dense (n, K, C) tensor that is zero except at the
    kept entries, whose values are already rounded to fp16 (what the store holds).
    """
    if per_row <= 0:
        return torch.zeros_like(y)
    resid = y - approx
    per_row = min(per_row, y.shape[-1])
    if score == "kl":
        weight = torch.softmax(y, dim=-1) * resid.pow(2)
    elif score == "abs":
        weight = resid.abs()
    else:
        from ..errors import CodecError

        raise CodecError(f"unknown residual score {score!r}; choose one of {RESIDUAL_SCORES}")
    if candidates is not None:
        weight = torch.where(candidates != 0, weight, torch.full_like(weight, -1.0))
    idx = torch.topk(weight, per_row, dim=-1, sorted=False).indices
    keep = torch.zeros_like(y, dtype=torch.bool).scatter_(-1, idx, True)
    keep &= weight > 0  # never store an entry that does not help (exact fits, excluded candidates)
    return torch.where(keep, resid, torch.zeros_like(resid)).to(torch.float16).to(y.dtype)
