"""Incremental greedy maximisation of the SCORE objective (paper Eq. 4) with per-class budgets.

``F(S) = R(Z_S) - alpha Rc(Z_S) - beta sum_{x in S} R(Y_x)`` (see :mod:`score_select.coding_rate`).
By the matrix determinant lemma, with ``M = I + a Z_S^T Z_S`` and ``q_x = x^T M^{-1} x``::

    gain(x | S) = 1/2 log(1 + a q_x) - alpha n_c/(2n) log(1 + a_c qc_x) - beta R(Y_x)

where ``qc_x`` is the same quantity for the class matrix ``M_c`` of x's class.  After adding ``z`` every
candidate is updated with one Sherman-Morrison step ``q_x -= (x^T u)^2``, ``u = sqrt(a / (1 + a q_z)) M^{-1} z``,
so a pick costs O(N d) instead of O(N d^3).

Exact laziness (ours): a pick in class c lowers ``q_x`` of every candidate and ``qc_x`` only of class c's
candidates.  The first term grows with ``q_x``; the class and label terms of a class-c' candidate do not
change when c != c' is picked.  So the gains of all *other* classes can only fall, and a class's best gain,
computed at its last refresh, is an upper bound until that class is picked from.  Minoux's lazy greedy is
therefore valid per class (not per candidate: a candidate's gain can rise as its own class fills, because
``-alpha Rc`` is supermodular).  The Sherman-Morrison vectors ``u`` of picks a class has not seen yet are
applied in one matrix-matrix product when the class is next examined, which turns N d matvecs per pick into
GEMMs over each class's candidates.  The picks equal those of plain incremental greedy (``lazy=False``), ties
broken by the smallest original index, up to floating-point summation order.

``order="round_robin"`` (ours, opt-in) is a blocked round-robin: rounds over classes in class order, each class adding its best candidate; it is a different selection from the global greedy.
"""
from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

from score_codec.codecs.base import all_finite
from score_codec.errors import InputError

from .coding_rate import DEFAULT_EPS_SQ

__all__ = ["GreedyResult", "prepare", "budgets_from_ipc", "greedy_select", "sequence_gains"]

log = logging.getLogger(__name__)

Device = Union[str, torch.device]


@dataclass
class GreedyResult:
    """Greedy output: ``indices`` (n,) int64 original candidate indices in pick order and ``gains`` (n,)
    float64 marginal objective gains in nats (they sum to ``F(S)``)."""

    indices: torch.Tensor
    gains: torch.Tensor


def prepare(features: torch.Tensor, labels: torch.Tensor, normalize: bool = True):
    """Validate ``features`` (N, d) and ``labels`` (N,); returns them as tensors (features unnormalised here,
    normalisation happens chunk-wise on the compute device) plus the class count."""
    X = torch.as_tensor(features)
    y = torch.as_tensor(labels)
    if X.ndim != 2:
        raise InputError(f"features must have shape (N, d), found {tuple(X.shape)}")
    if not X.is_floating_point():
        X = X.float()
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise InputError(f"labels must have shape ({X.shape[0]},), found {tuple(y.shape)}")
    if y.is_floating_point() or (y.numel() and int(y.min()) < 0):
        raise InputError("labels must be non-negative integer class ids")
    if not all_finite(X):
        raise InputError("features contain NaN or Inf")
    return X, y.long()


def budgets_from_ipc(labels: torch.Tensor, ipc: Union[int, Sequence[int], torch.Tensor],
                     num_classes: Optional[int] = None) -> torch.Tensor:
    """Per-class budgets ``(C,)`` int64 from an IPC (int: the same for every class present in ``labels``;
    sequence: one per class).  Raises :class:`InputError` if a class has fewer candidates than its budget."""
    labels = torch.as_tensor(labels).long().cpu()
    C = num_classes if num_classes is not None else (int(labels.max()) + 1 if labels.numel() else 0)
    counts = torch.bincount(labels, minlength=C)
    if isinstance(ipc, int):
        if ipc <= 0:
            raise InputError(f"ipc must be a positive integer, got {ipc}")
        budgets = torch.where(counts > 0, torch.full_like(counts, ipc), torch.zeros_like(counts))
    else:
        budgets = torch.as_tensor(ipc, dtype=torch.long).cpu()
        if budgets.shape != (C,) or bool((budgets < 0).any()):
            raise InputError(f"per-class ipc must be {C} non-negative integers, got shape {tuple(budgets.shape)}")
    short = (budgets > counts).nonzero().flatten().tolist()
    if short:
        c = short[0]
        raise InputError(f"class {c} has {int(counts[c])} candidates but a budget of {int(budgets[c])} "
                         f"({len(short)} class(es) short); lower --ipc")
    return budgets


class _Sorted:
    """Candidates sorted by class (stable, so original order is kept inside a class), stored on ``device``
    in ``storage`` dtype and upcast chunk-wise to the compute ``dtype`` (fp16 storage halves memory)."""

    def __init__(self, X, y, C, device, dtype, normalize, chunk_size):
        order = torch.argsort(y, stable=True)
        self.order = order
        self.counts = torch.bincount(y, minlength=C).tolist()
        self.starts = [0] + torch.cumsum(torch.tensor(self.counts), 0).tolist()
        storage = X.dtype if X.dtype in (torch.float16, torch.bfloat16) else dtype
        N, d = X.shape
        self.X = torch.empty(N, d, dtype=storage, device=device)
        self.norm_sq = torch.empty(N, dtype=dtype, device=device)
        for s in range(0, N, chunk_size):
            xk = X[order[s:s + chunk_size]].to(device=device, dtype=dtype)
            if normalize:
                xk = xk / xk.norm(dim=1, keepdim=True).clamp_min(1e-12)
            self.X[s:s + chunk_size] = xk.to(storage)
            sq = xk.to(storage).to(dtype).square().sum(1)
            if normalize:  # exactly 1 (0 for zero rows), so the first step's ties are exact ties
                sq = (sq > 0).to(dtype)
            self.norm_sq[s:s + chunk_size] = sq
        self.dtype = dtype
        self.chunk = chunk_size

    def row(self, p: int) -> torch.Tensor:
        return self.X[p].to(self.dtype)


class _State:
    """``M^{-1}`` (dense d x d) and each class's ``M_c^{-1} = I - U_c^T U_c`` (rank <= budget, so memory is
    n x d in all rather than C d^2)."""

    def __init__(self, d, budgets, a, a_c, device, dtype):
        self.Minv = torch.eye(d, dtype=dtype, device=device)
        self.a, self.a_c = a, a_c
        self.Uc = [torch.empty(int(b), d, dtype=dtype, device=device) for b in budgets]
        self.kc = [0] * len(budgets)

    def add(self, z: torch.Tensor, c: int):
        """Add feature ``z`` (d,) of class ``c``; returns ``(q, qc, u, uc)`` before the update."""
        w = self.Minv @ z
        q = float(z @ w)
        u = w * math.sqrt(self.a / (1.0 + self.a * max(q, 0.0)))
        self.Minv -= torch.outer(u, u)
        U = self.Uc[c][:self.kc[c]]
        wc = z - U.T @ (U @ z)
        qc = float(z @ wc)
        uc = wc * math.sqrt(self.a_c[c] / (1.0 + self.a_c[c] * max(qc, 0.0)))
        self.Uc[c][self.kc[c]] = uc
        self.kc[c] += 1
        return q, qc, u, uc


def _scales(d: int, budgets: torch.Tensor, eps_sq: float):
    n = int(budgets.sum())
    if eps_sq <= 0:
        raise InputError(f"eps_sq must be positive, got {eps_sq}")
    a = d / (n * eps_sq)
    a_c = [d / (int(b) * eps_sq) if b > 0 else 0.0 for b in budgets]
    w_c = [int(b) / (2.0 * n) for b in budgets]
    return n, a, a_c, w_c


def greedy_select(features: torch.Tensor, labels: torch.Tensor, budgets: torch.Tensor, *,
                  alpha: float = 0.0, beta: float = 0.0, eps_sq: float = DEFAULT_EPS_SQ,
                  label_rates: Optional[torch.Tensor] = None, order: str = "greedy", lazy: bool = True,
                  normalize: bool = True, device: Device = "cpu", dtype: torch.dtype = torch.float32,
                  chunk_size: int = 65536, progress: bool = False) -> GreedyResult:
    """Greedily maximise ``R - alpha Rc - beta sum R(Y)`` subject to exactly ``budgets[c]`` picks per class.

    Args:
        features: ``(N, d)`` teacher features (fp16/bf16 inputs are kept in that dtype on ``device``).
        labels: ``(N,)`` int class ids.
        budgets: ``(C,)`` picks per class (:func:`budgets_from_ipc`); ``n = budgets.sum()`` sets the scales.
        alpha, beta: weights of the class term and the soft-label term.
        eps_sq: squared distortion eps^2 (MCR^2 convention).
        label_rates: ``(N,)`` precomputed ``R(Y_x)`` (:func:`~score_select.coding_rate.label_coding_rate`);
            None means the term is absent.
        order: ``"greedy"`` (global argmax each step) or ``"round_robin"`` (classes take turns).
        lazy: exact per-class lazy evaluation (see module doc); ``False`` updates every class every step.
        normalize: L2-normalise features first (MCR^2 convention).
        device, dtype: where and in which precision to compute (float64 for tests).
        chunk_size: candidate rows per matrix product; bounds temporaries to ``chunk x (C + 1)`` values.
        progress: show a tqdm bar on stderr.
    """
    X, y = prepare(features, labels)
    budgets = torch.as_tensor(budgets, dtype=torch.long).cpu()
    C = len(budgets)
    if y.numel() and int(y.max()) >= C:
        raise InputError(f"labels go up to {int(y.max())} but only {C} class budgets were given")
    if order not in ("greedy", "round_robin"):
        raise InputError(f"order must be 'greedy' or 'round_robin', got {order!r}")
    N, d = X.shape
    n, a, a_c, w_c = _scales(d, budgets, eps_sq)
    S = _Sorted(X, y, C, device, dtype, normalize, chunk_size)
    if any(int(budgets[c]) > S.counts[c] for c in range(C)):
        budgets_from_ipc(y, budgets, C)  # raises the explained error
    state = _State(d, budgets.tolist(), a, a_c, device, dtype)
    q = S.norm_sq.clone()
    qc = S.norm_sq.clone()
    if label_rates is not None:
        r = torch.as_tensor(label_rates).reshape(-1)
        if r.shape[0] != N:
            raise InputError(f"label_rates must have shape ({N},), found {tuple(r.shape)}")
        penalty = (beta * r.to(device=device, dtype=dtype))[S.order.to(device)]
    else:
        penalty = torch.zeros(N, dtype=dtype, device=device)
    taken = torch.zeros(N, dtype=torch.bool, device=device)
    Ug = torch.empty(n, d, dtype=dtype, device=device)  # Sherman-Morrison vectors of the global term
    t = 0
    applied = [0] * C
    picked = [0] * C
    bound = [-math.inf] * C
    best = [-1] * C  # sorted position of each class's best candidate
    orig = S.order.cpu().tolist()   # original index of each sorted position (the picks' ids, the ties' key)
    # classes by (-bound, original index of their best): the lazy greedy's queue; an entry whose version
    # is not its class's current one is void and dropped when it reaches the top
    heap: List[tuple] = []
    version = [0] * C

    def refresh(c: int, uc: Optional[torch.Tensor] = None) -> None:
        s, e = S.starts[c], S.starts[c + 1]
        P = Ug[applied[c]:t]
        k = P.shape[0]
        if k or uc is not None:
            B = torch.cat([P, uc[None]]) if uc is not None else P
            for cs in range(s, e, S.chunk):
                ce = min(cs + S.chunk, e)
                proj = S.X[cs:ce].to(dtype) @ B.T
                if k:
                    q[cs:ce] -= proj[:, :k].square().sum(1)
                if uc is not None:
                    qc[cs:ce] -= proj[:, k].square()
        applied[c] = t
        g = 0.5 * torch.log1p(a * q[s:e].clamp_min(0)) - penalty[s:e]
        if alpha:
            g = g - (alpha * w_c[c]) * torch.log1p(a_c[c] * qc[s:e].clamp_min(0))
        g = g.masked_fill(taken[s:e], -math.inf)
        j = int(torch.argmax(g))  # first maximum = smallest original index within the class
        bound[c] = float(g[j])
        best[c] = s + j
        version[c] += 1   # the class's earlier heap entries are void
        heapq.heappush(heap, (-bound[c], orig[s + j], version[c], c))

    active = [c for c in range(C) if budgets[c] > 0]
    for c in active:
        refresh(c)
    indices: List[int] = []
    gains: List[float] = []

    def pick(c: int) -> None:
        nonlocal t
        p = best[c]
        gains.append(bound[c])
        indices.append(orig[p])
        taken[p] = True
        _, _, u, uc = state.add(S.row(p), c)
        Ug[t] = u
        t += 1
        picked[c] += 1
        if picked[c] < budgets[c]:
            refresh(c, uc)
        else:
            bound[c] = -math.inf
            version[c] += 1
            active.remove(c)

    from score_codec.progress import progress_bar

    bar = progress_bar(total=n, desc="score-select", unit="pick", enabled=progress, leave=False)
    evaluations = 0
    try:
        if order == "round_robin":
            while active:
                for c in list(active):
                    if applied[c] != t:
                        refresh(c)
                    pick(c)
                    bar.update(1)
        else:
            for _ in range(n):
                while True:
                    # the top of (-gain, original index): stale keys are exact upper bounds (see module doc)
                    _, _, v, c = heap[0]
                    if v != version[c]:
                        heapq.heappop(heap)
                        continue
                    if applied[c] == t:
                        break
                    refresh(c)   # pushes the class's fresh entry; this one is void now
                    evaluations += 1
                pick(c)
                if not lazy:
                    for k in active:
                        if applied[k] != t:
                            refresh(k)
                bar.update(1)
    finally:
        bar.close()
    log.debug("greedy: %d picks, %d lazy class refreshes", n, evaluations)
    return GreedyResult(torch.tensor(indices, dtype=torch.long), torch.tensor(gains, dtype=torch.float64))


def sequence_gains(features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, budgets: torch.Tensor,
                   *, alpha: float = 0.0, beta: float = 0.0, eps_sq: float = DEFAULT_EPS_SQ,
                   label_rates: Optional[torch.Tensor] = None, normalize: bool = True, device: Device = "cpu",
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Marginal SCORE gains (n,) float64, in nats, of adding ``indices`` in the given order.

    Used to report comparable gains for every selection method (they sum to ``F(S)``); O(n d^2).
    """
    X, y = prepare(features, labels)
    idx = torch.as_tensor(indices, dtype=torch.long).cpu()
    budgets = torch.as_tensor(budgets, dtype=torch.long).cpu()
    d = X.shape[1]
    _, a, a_c, w_c = _scales(d, budgets, eps_sq)
    state = _State(d, budgets.tolist(), a, a_c, device, dtype)
    Z = X[idx].to(device=device, dtype=dtype)
    if normalize:
        Z = Z / Z.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cls = y[idx].tolist()
    rates = torch.as_tensor(label_rates)[idx].double().tolist() if label_rates is not None else None
    out = []
    for i, c in enumerate(cls):
        q, qc, _, _ = state.add(Z[i], c)
        g = 0.5 * math.log1p(a * max(q, 0.0)) - alpha * w_c[c] * math.log1p(a_c[c] * max(qc, 0.0))
        if rates is not None:
            g -= beta * rates[i]
        out.append(g)
    return torch.tensor(out, dtype=torch.float64)
