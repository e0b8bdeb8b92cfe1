"""Store-scope codecs: one basis for every row of the store (``global``), plus per-class refinements (``two-level``).

A teacher's logits are ``W h + b`` with ``h`` its penultimate features, so every row of a dump, mixed by
CutMix or not, lies in one low-dimensional affine subspace; a per-image basis cannot exploit that (each
CutMix row mixes a different partner, so one image's K x C matrix is not low-rank) and pays ``r x C``
values per image.  Here the basis is fitted once (streaming PCA of the row-centred rows; memory C^2
whatever the row count), stored once, and each row stores only its ``r`` coefficients, chosen to
minimise KL at ``fit_temperature`` (:func:`~score_codec.codecs.basis.fit_coefficients`).

Coefficients minimise KL(T = ``fit_temperature``) plus ``penalty`` times a pull towards the least-squares
fit (``newton_steps`` damped Newton steps from the projection, at basis ranks up to ``newton_max_rank``;
0: the projection alone, fastest).  KL at one temperature alone pushes logits far below the top ones wherever
that is free, which a student at another temperature would see; the pull keeps the fit good at other
temperatures too.  Set ``fit_temperature`` to the student's temperature when it is known.

The global codec stores each basis row scaled to the spread of the store's coefficients along it (the
standard deviation of that component, relative to the first's), so the coefficients of every component share one range and a
record's int8 coefficients need one scale, not one per component (:data:`~score_codec.store.record.FLAG_ONE_SCALE`).
Coefficients are always fitted on the unit rows and divided by the rows' norms, so any stored basis can code
rows.  A basis whose rows all have norm 1 (one written before format 5, or a flat spectrum) does not carry
the spread: records on it keep one int8 scale per component (:func:`carries_spread`).

``two-level`` adds, per class, a basis of what the global basis leaves in that class's rows (orthogonal
to the global one), and its rate control spends the byte budget greedily on whichever of {more global
components, more class components, one more residual entry per row} lowers KL most per byte, measured
on a sample of classes.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import BudgetError, CodecError
from .base import Codec, check_matrix, register_codec, to_float32
from .basis import GramAccumulator, fit_coefficients, head_basis, kl_rows, orthonormal_rows
from .arguments import check_int, check_real
from .quantize import bytes_per_value, roundtrip
from .ratecontrol import largest_fitting
from .residual import select_residual

__all__ = ["BasisEntry", "BasisSet", "StoreScopeCodec", "GlobalCodec", "TwoLevelCodec", "FitSource", "row_cost",
           "spreads", "unit_rows", "carries_spread", "MIN_SPREAD", "SPREAD_NORM"]

log = logging.getLogger(__name__)

#: what every global basis is stored as (amortised over the whole store, so precision is cheap)
BASIS_QUANT = "fp16"
HEADER_BYTES = 32


@dataclass
class BasisEntry:
    """One stored basis: ``rows`` (r, C) float32 (already rounded to ``BASIS_QUANT``), ``parent`` basis id
    whose rows come first (-1: none), ``mean`` (C,) float32 of a root basis (or None)."""

    rows: torch.Tensor
    parent: int = -1
    mean: Optional[torch.Tensor] = None


@dataclass
class BasisSet:
    """The bases of a store-scope codec and which one each class uses (``default`` for the others)."""

    entries: List[BasisEntry]
    of_class: Dict[int, int] = field(default_factory=dict)
    default: int = 0
    residual: Optional[int] = None     # residual entries per row chosen by rate control (None: the option's)

    def full(self, j: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(all rows of basis ``j``: its ancestors' then its own (R, C), the root's mean or None)."""
        e = self.entries[j]
        if e.parent < 0:
            return e.rows, e.mean
        rows, mean = self.full(e.parent)
        return torch.cat([rows, e.rows]), mean

    def basis_for(self, label: Optional[int]) -> int:
        return self.of_class.get(int(label), self.default) if label is not None and label >= 0 else self.default


class FitSource:
    """Indexable (K_i, C) logit matrices plus their classes, as the fitting passes read them."""

    def __init__(self, matrices: Sequence[Any], labels: Optional[Sequence[int]] = None,
                 ks: Optional[Sequence[int]] = None, num_images: Optional[int] = None,
                 total_rows: Optional[int] = None) -> None:
        self.matrices = matrices
        self.labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        self.ks = np.asarray([len(m) for m in matrices] if ks is None else ks, dtype=np.int64)
        #: images of the store (rate control's per-image costs); differs from len() when the items are row blocks
        self.num_images = len(matrices) if num_images is None else int(num_images)
        #: rows of the store (rate control); differs from sum(ks) when the items are a sample of the store
        self._total_rows = None if total_rows is None else int(total_rows)
        self._c: Optional[int] = None

    def __len__(self) -> int:
        return len(self.matrices)

    @property
    def total_rows(self) -> int:
        return int(self.ks.sum()) if self._total_rows is None else self._total_rows

    def centred(self, i: int) -> torch.Tensor:
        """Matrix ``i`` (K_i, C) as float32 with each row's mean removed; InputError for a matrix that is
        not 2-D, has no rows, has a different C from matrix 0, or holds NaN/Inf."""
        m = self.matrices[i]
        m = to_float32(m)
        if self._c is None and m.ndim == 2:
            self._c = int(m.shape[1])
        check_matrix(m, self._c, f"fit: matrix {i}")
        return m - m.mean(-1, keepdim=True)


#: a component whose spread is below this share of the first one's keeps this share as its row norm: its
#: coefficients are near zero, and dividing by a vanishing norm would let them set the record's one scale
MIN_SPREAD = 1e-2
#: a basis carries the spread when some row's norm is below this (unit rows are 1 up to fp16 rounding)
SPREAD_NORM = 0.99


def row_cost(r: int, k: float, quant: str, residual: int = 0, c: int = 1000, one_scale: bool = False) -> float:
    """Record bytes per row of a store-scope record: coefficients, their int8 scales (one per component, or
    one per record with ``one_scale``) and the header, for ``k`` rows per record."""
    ib = 1 if c <= 0xFF else 2 if c <= 0xFFFF else 4
    scales = (4 if one_scale else 4 * r) / k if quant == "int8" and r else 0.0
    res = (ib + residual * (ib + 2)) if residual else 0.0
    return r * bytes_per_value(quant) + scales + HEADER_BYTES / k + res


class StoreScopeCodec(Codec):
    """Base of codecs whose bases are fitted on the whole store before any record is written."""

    scope = "store"
    shared_basis = True
    #: records hold int8 coefficients with one scale each when the basis carries the components' spread
    one_scale = False

    def record_one_scale(self, rows: torch.Tensor) -> bool:
        """Whether records on the basis ``rows`` (r, C) get one int8 scale (:attr:`one_scale` and
        :func:`carries_spread`) rather than one per component."""
        return self.one_scale and carries_spread(rows)

    def __init__(self, fit_temperature: float = 1.0, newton_steps: int = 1, penalty: float = 0.3,
                 fit_rows: int = 65_536, newton_max_rank: int = 128, **config: Any):
        super().__init__(fit_temperature=fit_temperature, newton_steps=newton_steps, penalty=penalty, fit_rows=fit_rows,
                         newton_max_rank=newton_max_rank, **config)
        name = self.codec_id
        self.fit_temperature = check_real(f"{name}: fit_temperature", fit_temperature, 0.0, error=CodecError)
        self.newton_steps = check_int(f"{name}: newton_steps", newton_steps, 0, error=CodecError)
        self.fit_rows = check_int(f"{name}: fit_rows", fit_rows, 1, error=CodecError)
        self.penalty = check_real(f"{name}: penalty", penalty, 0.0, low_open=False, error=CodecError)
        self.newton_max_rank = check_int(f"{name}: newton_max_rank", newton_max_rank, 0, error=CodecError)

    def steps_for(self, rank: int) -> int:
        """Newton steps of the KL fit at basis rank ``rank``: none above ``newton_max_rank``.  Each step solves
        an r x r system per row (r^3); at high ranks the projection is already as close in KL and the steps
        would dominate the encode time."""
        return self.newton_steps if rank <= self.newton_max_rank else 0

    def factorize(self, y, ranks):  # pragma: no cover - store codecs go through fit/coefficients
        raise CodecError(f"{self.codec_id} is a store-scope codec: fit it on the store (StoreWriter.fit) first")

    def coefficients(self, y: torch.Tensor, bases: BasisSet, basis_id: int) -> torch.Tensor:
        """Coefficients (n, K, R) of centred rows ``y`` (n, K, C) on basis ``basis_id`` (full rank R), whose rows
        are orthogonal with any norms: fitted on the unit rows, then divided by the norms."""
        rows, mean = bases.full(basis_id)
        n, k, c = y.shape
        unit, norms = unit_rows(rows.to(y.device))
        # the Hessian from the 64 most probable classes is as good and cheaper once r^2 outweighs the top-k cost
        a = fit_coefficients(y.reshape(-1, c), unit, mean, temperature=self.fit_temperature, steps=self.steps_for(rows.shape[0]),
                             penalty=self.penalty, hessian_classes=64 if rows.shape[0] >= 32 else None)
        return (a / norms).reshape(n, k, -1)

    # -- fitting ---------------------------------------------------------------------------------
    def _gram(self, src: FitSource, device: str) -> Tuple[GramAccumulator, int]:
        """Moments over about ``fit_rows`` rows from images spread evenly over the store; total rows."""
        n = len(src)
        first = src.centred(0)
        per = max(1.0, float(src.ks.sum()) / max(n, 1))
        want_images = max(1, min(n, math.ceil(self.fit_rows / per)))
        pick = np.unique(np.linspace(0, n - 1, want_images).round().astype(np.int64))
        acc = GramAccumulator(first.shape[1], torch.device(device))
        buf, held = [], 0
        for i in pick:
            buf.append(src.centred(int(i)))
            held += buf[-1].shape[0]
            if held >= 8192:   # large GEMMs: one (8192, C) chunk instead of many (K, C) ones
                acc.add(torch.cat(buf).to(device))
                buf, held = [], 0
        if buf:
            acc.add(torch.cat(buf).to(device))
        return acc, src.total_rows

    @staticmethod
    def _entry(rows: torch.Tensor, parent: int = -1, mean: Optional[torch.Tensor] = None) -> BasisEntry:
        return BasisEntry(rows=roundtrip(rows.to(torch.float32).cpu(), BASIS_QUANT), parent=parent,
                          mean=None if mean is None else mean.to(torch.float32).cpu())

    def fit(self, src: FitSource, quant: str, *, rank: Optional[int] = None, energy: Optional[float] = None,
            budget_per_row: Optional[float] = None, residual: int = 0, device: str = "cpu",
            head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None) -> BasisSet:
        raise NotImplementedError


@register_codec
class GlobalCodec(StoreScopeCodec):
    """One basis and mean row for the whole store (``head=(W, b)`` uses the teacher's last layer instead); its
    rows are scaled to the store's spread along them, and records hold int8 coefficients with one scale."""

    codec_id = "global"
    one_scale = True

    def fit(self, src: FitSource, quant: str, *, rank: Optional[int] = None, energy: Optional[float] = None,
            budget_per_row: Optional[float] = None, residual: int = 0, device: str = "cpu",
            head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
            record_bytes: Optional[Callable[[torch.Tensor, Optional[torch.Tensor], bool], float]] = None) -> BasisSet:
        """Fit the basis on ``src`` and choose its rank from ``rank``, ``energy`` or ``budget_per_row`` bytes.

        ``record_bytes(rows, mean, one_scale)``: bytes per row of the records' scales and coefficients on the
        basis ``rows`` (r, C) with mean row ``mean`` as they are stored (after compression), measured by the
        caller, without the header, residual entries and row means; without it the budget counts the record
        bytes before compression."""
        c = int(src.centred(0).shape[1])
        if head is not None:
            mean, basis = head_basis(*head, num_classes=c)
            # order the head's directions by the variance of this store's rows along them, so that a rank
            # below d keeps the directions that matter (the QR order is arbitrary)
            acc, total = self._gram(src, device)
            cov = acc.covariance()
            small = basis @ cov.to(basis.dtype) @ basis.T
            evals, rot = torch.linalg.eigh(small)
            order = torch.argsort(evals, descending=True)
            basis, variances = rot[:, order].T @ basis, evals[order].clamp_min(0)
        else:
            acc, total = self._gram(src, device)
            mean, basis, variances = acc.pca()
        k = total / max(src.num_images, 1)
        qmax = basis.shape[0]
        if budget_per_row is not None:
            def cost(r: int, measured: bool = True) -> float:
                # as the writer will store rank r: one scale when the rows carry the spread
                one = self.one_scale and bool((spreads(variances[:r]) < SPREAD_NORM).any())
                record = row_cost(r, k, quant, residual, c, one)
                if measured and record_bytes is not None and r > 0:
                    rows = basis[:r] * spreads(variances[:r]).to(basis.dtype)[:, None]
                    record += record_bytes(rows, mean, one) + HEADER_BYTES / k - row_cost(r, k, quant, 0, c, one)
                return record + (2 * c * r + 4 * c) / total
            # compression never grows a record, so the rank the bytes before it allow is (up to the sample's
            # error) a lower bound: the search starts there, and goes below it only when that rank misses
            start = _max_rank(lambda r: cost(r, False), budget_per_row, qmax)
            r = None if start is None else _max_rank(cost, budget_per_row, qmax, start)
            if r is None:
                r = _max_rank(cost, budget_per_row, qmax if start is None else start)
            if r is None:
                raise BudgetError(f"the byte budget of {budget_per_row:.2f} B per row is below what a rank-0 global "
                                  f"record needs ({row_cost(0, k, quant, residual, c):.2f} B per row)")
            if r == 0 and residual == 0 and float(variances.sum()) > 0:
                # a rank-0 basis decodes every row to the mean row: no labels would be stored
                raise BudgetError(f"the byte budget of {budget_per_row:.2f} B per row leaves the global basis at "
                                  f"rank 0, which stores no labels; rank 1 needs {cost(1):.2f} B per row")
        elif energy is not None:
            share = variances.cumsum(0) / variances.sum().clamp_min(1e-300)
            r = int((share < energy - 1e-12).sum()) + 1
        else:
            r = qmax if rank is None else int(rank)
        r = max(0, min(r, qmax, 0xFFFF))
        fitted_on = "the teacher head" if head is not None else "the store's rows"
        if rank is None and energy is None and budget_per_row is None:
            # every direction: the caller (the pool-and-code allocation) may still choose the rank
            log.info("global basis: %d directions (fitted on %s)", r, fitted_on)
        else:
            log.info("global basis: rank %d of %d (fitted on %s)", r, qmax, fitted_on)
        return BasisSet([self._entry(basis[:r] * spreads(variances[:r]).to(basis.dtype)[:, None], mean=mean)])


@register_codec
class TwoLevelCodec(StoreScopeCodec):
    """The global basis plus, per class, ``class_rank`` directions of what it leaves in that class's rows."""

    codec_id = "two-level"

    def __init__(self, class_rank: Optional[int] = None, plan_classes: int = 24, **config: Any) -> None:
        super().__init__(class_rank=class_rank, plan_classes=plan_classes, **config)
        if class_rank is not None:
            class_rank = check_int("two-level: class_rank", class_rank, 0, error=CodecError)
        self.class_rank = class_rank
        self.plan_classes = check_int("two-level: plan_classes", plan_classes, 1, error=CodecError)

    def _class_rows(self, src: FitSource, cls: int) -> torch.Tensor:
        ids = np.flatnonzero(src.labels == cls)
        return torch.cat([src.centred(int(i)) for i in ids])

    @staticmethod
    def _class_basis(rows: torch.Tensor, top: torch.Tensor, mean: torch.Tensor, r2: int) -> torch.Tensor:
        """``r2`` directions (orthonormal, orthogonal to ``top``) of a class's rows beyond the global basis."""
        if r2 <= 0:
            return rows.new_zeros(0, rows.shape[1])
        z = rows.to(torch.float64) - mean
        resid = z - (z @ top.T) @ top
        q = min(r2, *resid.shape)
        _, _, v = torch.svd_lowrank(resid, q=min(q + 6, *resid.shape), niter=3)
        return orthonormal_rows(v[:, :q].T, top)

    def _plan(self, src: FitSource, mean, basis, quant, budget_per_row, k, total, c, n_classes) -> Tuple[int, int, int]:
        """Greedy (global rank, class rank, residual entries) under the budget, by KL gain per byte on a sample."""
        classes = np.unique(src.labels[src.labels >= 0])
        rng = np.random.default_rng(0)
        sample = rng.choice(classes, size=min(self.plan_classes, len(classes)), replace=False)
        rows = {int(cl): self._class_rows(src, int(cl)) for cl in sample}
        t = self.fit_temperature

        def cost(r1: int, r2: int, s: int) -> float:
            basis_bytes = (2 * c * r1 + 4 * c + n_classes * 2 * c * r2) / total
            return row_cost(r1 + r2, k, quant, s, c) + basis_bytes

        def error(r1: int, r2: int, s: int) -> float:
            top = basis[:r1].to(torch.float64)
            kl, n = 0.0, 0
            for y in rows.values():
                b2 = self._class_basis(y, top, mean, r2)
                full = roundtrip(torch.cat([top, b2]).to(torch.float32), BASIS_QUANT)
                a = fit_coefficients(y, full, mean.to(torch.float32), temperature=t, steps=self.steps_for(full.shape[0]),
                                     penalty=self.penalty)
                # int8 coefficients are scaled per component over the image's rows; one scale per class is close
                approx = mean.to(torch.float32) + roundtrip(a.T.contiguous(), quant).T @ full
                approx = approx + select_residual(y[None], approx[None], s)[0]
                kl += float(kl_rows(torch.log_softmax(y / t, -1), approx, t).sum())
                n += y.shape[0]
            return kl / max(n, 1)

        state = (0, 0, 0)
        if cost(*state) > budget_per_row:
            raise BudgetError(f"the byte budget of {budget_per_row:.2f} B per row is below what a rank-0 two-level "
                              f"record needs ({cost(*state):.2f} B per row)")
        err = error(*state)
        rmax = basis.shape[0]
        while True:
            moves = []
            for d in ((min(8, rmax - state[0]), 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)):
                nxt = (state[0] + d[0], state[1] + d[1], state[2] + d[2])
                if nxt == state or nxt[0] > rmax or nxt[1] > c - nxt[0] or nxt[2] > c or cost(*nxt) > budget_per_row:
                    continue
                moves.append(nxt)
            if not moves:
                break
            scored = []
            for nxt in moves:
                e = error(*nxt)
                scored.append(((err - e) / max(cost(*nxt) - cost(*state), 1e-9), e, nxt))
            gain, e, nxt = max(scored)
            if gain <= 0:
                break
            state, err = nxt, e
        log.info("two-level plan: global rank %d, class rank %d, %d residual entries per row (%.2f of %.2f B per "
                 "row; sample KL(T=%g) %.4g)", *state, cost(*state), budget_per_row, t, err)
        return state

    def fit(self, src: FitSource, quant: str, *, rank: Optional[int] = None, energy: Optional[float] = None,
            budget_per_row: Optional[float] = None, residual: int = 0, device: str = "cpu",
            head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None) -> BasisSet:
        """Global basis, then one basis per class (needs ``src.labels``); ranks from the options or the plan."""
        if src.labels is None or (src.labels < 0).all():
            raise CodecError("the two-level codec needs each image's class (labels=)")
        if energy is not None:
            raise CodecError("the two-level codec takes rank= (global), class_rank= or a byte budget, not energy=")
        c = int(src.centred(0).shape[1])
        if head is not None:
            mean, basis = head_basis(*head, num_classes=c)
            total = src.total_rows
        else:
            acc, total = self._gram(src, device)
            mean, basis, _ = acc.pca()
        k = total / max(src.num_images, 1)
        classes = np.unique(src.labels[src.labels >= 0])
        chosen_residual = None
        if budget_per_row is not None:
            r1, r2, chosen_residual = self._plan(src, mean, basis, quant, budget_per_row, k, total, c, len(classes))
            if r1 + r2 == 0 and not chosen_residual:
                raise BudgetError(f"the byte budget of {budget_per_row:.2f} B per row leaves the two-level bases at "
                                  f"rank 0 and no residual, which stores no labels; lower the ratio")
        else:
            r1 = basis.shape[0] if rank is None else min(int(rank), basis.shape[0])
            r2 = 2 if self.class_rank is None else int(self.class_rank)
            # a class basis extends the global one: together they can never span more than the C classes
            r2 = max(0, min(r2, c - r1))
        top = basis[:r1]
        entries = [self._entry(top, mean=mean)]
        of_class = {}
        for cl in classes:
            b2 = self._class_basis(self._class_rows(src, int(cl)), top.to(torch.float64), mean, r2)
            of_class[int(cl)] = len(entries)
            entries.append(self._entry(b2, parent=0))
        return BasisSet(entries, of_class=of_class, residual=chosen_residual)


def spreads(variances: torch.Tensor) -> torch.Tensor:
    """Row norms (r,) in (0, 1] of a scaled global basis from its components' variances (r,), decreasing: the
    standard deviations relative to the first (the fp16 basis keeps its precision whatever the logits' scale),
    each at least :data:`MIN_SPREAD` (all ones when the first is zero)."""
    sd = variances.to(torch.float64).clamp_min(0).sqrt()
    if not len(sd) or float(sd[0]) <= 0:
        return torch.ones_like(sd)
    return (sd / sd[0]).clamp_min(MIN_SPREAD)


def carries_spread(rows: torch.Tensor) -> bool:
    """True when some row of a global basis (r, C) has a norm below :data:`SPREAD_NORM`: its rows carry the
    components' spread (format 5 on), so its coefficients share one range and a record needs one int8 scale."""
    return bool(rows.shape[0]) and bool((rows.norm(dim=1) < SPREAD_NORM).any())


def unit_rows(rows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rows scaled to unit norm (r, C), their norms (r,)); a zero row stays zero with norm 1."""
    norms = rows.norm(dim=1)
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))
    return rows / norms[:, None], norms


def _max_rank(cost: Callable[[int], float], budget: float, qmax: int, lo: int = 0) -> Optional[int]:
    """Largest r in [lo, qmax] with cost(r) <= budget (cost increasing), or None if even r = lo does not fit."""
    return largest_fitting(lambda r: cost(r) <= budget, lo, qmax)
