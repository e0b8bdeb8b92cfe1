"""Split a byte budget between label epochs and the codec: pooling (keeping a subset of epochs).

A ratio X gives a store of R source rows the budget ``2 C R / X`` bytes.  It can be spent on every row at a
low inner setting (a small global-basis rank), or on fewer label epochs at a higher one.  Coding every row
past the point where the decoded labels drift from the teacher's destroys what a student learns from them,
while dropping epochs loses augmentation diversity only gradually, so :func:`allocate`:

1. fits the codec's full basis once (on the same sample the writer would fit on);
2. measures KL(T=1) between the source rows and their decoded rows on a probe sample of rows, and finds the
   smallest basis rank whose KL stays at or below ``max_kl`` (:attr:`CodecOptions.max_kl`);
3. keeps every epoch when the budget pays for that rank on every row (the store then is what it would be
   without pooling); otherwise keeps the most epochs it does pay for, evenly spaced and including the first,
   and codes them at the budget's inner ratio (a rank at or above the smallest useful one).  A record is
   counted as stored, after zstd: the records of a sample of images (:func:`record_sample`; the probe's
   rows, :func:`wrap_rows`, where no image's rows are at hand) are packed with the store's options and
   measured, so the budget is met on disk to within the sample's error (:data:`RATIO_TOLERANCE`);
4. raises :class:`~score_codec.errors.BudgetError` when even one epoch at that rank does not fit.

The automatic split applies to the global codec (whose fidelity is set by one rank and measured cheaply).
Other codecs keep every epoch unless ``keep_epochs`` is given; their KL is measured on the written store.
Only stores whose views are label epochs can be pooled: every image has one row per epoch (the rows of
:class:`~score_codec.store.meta.AugMeta` say which; without metadata, row j of every image is epoch j).
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..codecs.global_basis import BasisEntry, BasisSet, FitSource, row_cost, unit_rows
from ..codecs.quantize import roundtrip
from ..codecs.arguments import check_real
from ..codecs.ratecontrol import largest_fitting
from ..errors import BudgetError, InputError
from .meta import AugMeta
from .options import CodecOptions
from .record import HEADER, pack_coefficient_records

__all__ = ["Allocation", "allocate", "epoch_values", "even_epochs", "prune_meta", "probe_kl", "probe_coefficients",
           "project_rows", "mean_record_size", "wrap_rows", "SampleRecordBytes", "fit_rate_control",
           "plan_ratios", "plan_entry", "check_ratios", "check_plan_method", "check_plannable", "probe_from_matrices",
           "probe_from_rows", "record_sample", "matrix_inputs", "kl_t1", "store_kl", "finish", "plan_and_prune", "KeptViews",
           "PROBE_ROWS", "PROBE_VIEWS", "RECORD_IMAGES", "RATIO_TOLERANCE", "POOL_BUDGET_ADVICE"]

log = logging.getLogger(__name__)

#: rows of the probe sample on which KL(T=1) is measured
PROBE_ROWS = 1024
#: images whose kept rows are packed as records to measure the record size zstd leaves
RECORD_IMAGES = 64
#: how far below its target a ratio may land before the encode warns: record sizes after zstd are measured
#: on a sample, so the whole store meets the budget to within the sample's error
RATIO_TOLERANCE = 0.01
#: views per probe image (int8 scales are shared by an image's rows, so the probe keeps images' rows together)
PROBE_VIEWS = 8
#: the advice of the BudgetError raised when one kept epoch at the smallest useful rank exceeds the budget
POOL_BUDGET_ADVICE = "Ask for a lower ratio, raise max_kl, or pass keep_epochs= / pool=False to code harder"


def even_epochs(n: int, k: int) -> np.ndarray:
    """Positions (n,) int64 of ``n`` of ``k`` epochs, evenly spaced and starting with the first."""
    if not 1 <= n <= k:
        raise InputError(f"cannot keep {n} of {k} epochs (need 1 <= keep_epochs <= {k})")
    return (np.arange(n, dtype=np.int64) * k) // n


def epoch_values(meta: Optional[AugMeta], ks: np.ndarray) -> Optional[np.ndarray]:
    """The source epoch number of each view position (K,) int64 when the views are label epochs, else None.

    Views are label epochs when every image has the same K rows and its row j is its row of the j-th epoch
    (in increasing ``epoch`` order of the metadata), and every stored batch lies in one epoch.  Without
    metadata rows, row j of every image is epoch j."""
    ks = np.asarray(ks, dtype=np.int64)
    if not len(ks) or ks.min() != ks.max():
        return None
    k = int(ks[0])
    if meta is None or len(meta.rows) == 0:
        return np.arange(k, dtype=np.int64)
    rows = meta.rows
    vals = np.unique(rows["epoch"]).astype(np.int64)
    if len(vals) != k or len(rows) != k * len(ks):
        return None
    if not np.array_equal(np.searchsorted(vals, rows["epoch"]), rows["aug"]):
        return None
    b = meta.batches
    if len(b) and not np.array_equal(np.repeat(b["epoch"], b["size"].astype(np.int64)), rows["epoch"]):
        return None
    return vals


def prune_meta(meta: AugMeta, kept: np.ndarray, values: np.ndarray) -> AugMeta:
    """The metadata of the kept view positions ``kept`` only, renumbered: kept view j has ``aug`` = ``epoch``
    = j (the source epoch number is ``values[kept[j]]``, recorded in the store's pool)."""
    if len(meta.rows) == 0:
        return meta
    remap = np.full(len(values), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    rows = meta.rows[np.isin(meta.rows["aug"], kept)].copy()
    rows["aug"] = remap[rows["aug"]]
    rows["epoch"] = rows["aug"]
    b = meta.batches
    if len(b):
        b = b[np.isin(b["epoch"], values[kept])].copy()
        b["epoch"] = remap[np.searchsorted(values, b["epoch"])]
        b["row_start"] = np.concatenate([[0], np.cumsum(b["size"].astype(np.int64))[:-1]])
    return AugMeta(rows=rows, batches=b, images=meta.images, attrs=dict(meta.attrs))


class KeptViews:
    """An indexable of (K, C) matrices seen through the kept view positions: item i is ``matrices[i][kept]``."""

    def __init__(self, matrices: Sequence[Any], kept: Optional[np.ndarray]) -> None:
        self.matrices, self.kept = matrices, kept

    def __len__(self) -> int:
        return len(self.matrices)

    def __getitem__(self, i: int) -> Any:
        m = self.matrices[i]
        return m if self.kept is None else m[torch.as_tensor(self.kept) if isinstance(m, torch.Tensor) else self.kept]


@dataclass
class Allocation:
    """How a ratio was spent: which epochs were kept and how they were coded.

    Attributes:
        source_epochs: K, label epochs of the source.
        kept: (n,) int64 positions (0..K-1) of the kept epochs, increasing.
        inner_ratio: the ratio the kept rows are coded at (fp16 bytes of the kept rows over stored bytes), or
            None when no ratio was asked for.
        rank: the global-basis rank chosen (global codec with a ratio), else None.
        min_rank: the smallest rank whose probe KL(T=1) is at or below ``max_kl`` (automatic split only).
        kl_t1: mean KL(T=1) of the decoded probe rows at ``rank`` (global codec with a ratio), else None.
        max_kl: the threshold used.
        label_bytes: the store's label bytes the split predicts (records after zstd, measured on a sample,
            plus the basis; residual entries and row means counted as stored raw, so a store with a
            residual comes out smaller), or None where nothing was split.
        bases: the fitted global basis truncated to ``rank``, for the writer (None: the writer fits).
    """

    source_epochs: int
    kept: np.ndarray
    inner_ratio: Optional[float] = None
    rank: Optional[int] = None
    min_rank: Optional[int] = None
    kl_t1: Optional[float] = None
    max_kl: float = 0.01
    label_bytes: Optional[float] = None
    bases: Optional[BasisSet] = field(default=None, repr=False)

    @property
    def pooled(self) -> bool:
        """True when some epochs were dropped."""
        return len(self.kept) < self.source_epochs

    def writer_options(self, opts: CodecOptions) -> CodecOptions:
        """The options the store writer codes the kept rows with: the inner ratio, no epoch selection."""
        return opts.replace(ratio=opts.ratio if self.inner_ratio is None else self.inner_ratio, keep_epochs=None)

    def record(self) -> Dict[str, Any]:
        """The JSON-serialisable summary written into the store's ``encoding`` (informative)."""
        return {"source_epochs": int(self.source_epochs), "keep_epochs": int(len(self.kept)),
                "inner_ratio": self.inner_ratio, "rank": self.rank, "min_rank": self.min_rank,
                "kl_t1": self.kl_t1, "max_kl": self.max_kl}


def _spread(n: int, count: int) -> np.ndarray:
    """Up to ``count`` indices (int64, increasing) evenly spread over [0, n), the first and last included."""
    return np.unique(np.linspace(0, n - 1, max(1, min(n, count))).round().astype(np.int64))


def _probe_images(n: int, k: int, rows: int = PROBE_ROWS) -> np.ndarray:
    return _spread(n, math.ceil(rows / min(k, PROBE_VIEWS)))


def probe_from_matrices(matrices: Sequence[Any], kept: Optional[np.ndarray] = None) -> torch.Tensor:
    """A probe (g, v, C) float32 of centred rows: images spread over ``matrices``, ``PROBE_VIEWS`` views each
    (among ``kept`` positions when given), ``PROBE_ROWS`` rows in all."""
    n = len(matrices)
    k0 = int(len(kept)) if kept is not None else int(np.asarray(matrices[0]).shape[0])
    per = min(k0, PROBE_VIEWS)
    out = []
    for i in _probe_images(n, k0):
        m = torch.as_tensor(np.asarray(matrices[int(i)], dtype=np.float32))
        pos = np.asarray(kept) if kept is not None else np.arange(m.shape[0])
        if len(pos) < per:
            continue
        sel = pos[(np.arange(per) * len(pos)) // per]
        out.append(m[torch.as_tensor(sel)])
    y = torch.stack(out)
    return y - y.mean(-1, keepdim=True)


def record_sample(matrices: Sequence[Any], kept: np.ndarray, images: int = RECORD_IMAGES) -> torch.Tensor:
    """Centred rows (g, n, C) float32 of ``images`` images spread over ``matrices`` at the view positions
    ``kept`` (n,): the records the writer would pack for them, on which record sizes are measured."""
    ids = _spread(len(matrices), images)
    pos = np.asarray(kept, dtype=np.int64)
    y = torch.stack([torch.as_tensor(np.asarray(matrices[int(i)][pos], dtype=np.float32)) for i in ids])
    return y - y.mean(-1, keepdim=True)


def probe_from_rows(blocks: Sequence[np.ndarray], group: int) -> torch.Tensor:
    """A probe (g, group, C) float32 of centred rows from blocks of rows spread over a dump (at most
    ``PROBE_ROWS`` rows, evenly taken)."""
    sizes = np.asarray([len(b) for b in blocks], dtype=np.int64)
    total = int(sizes.sum())
    take = np.arange(total) if total <= PROBE_ROWS else np.linspace(0, total - 1, PROBE_ROWS).round().astype(np.int64)
    # only the chosen rows are widened to float32 (the blocks may be memory-mapped views of a large sample)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    which = np.searchsorted(starts, take, side="right") - 1
    y = torch.as_tensor(np.concatenate([np.asarray(blocks[j][take[which == j] - starts[j]], dtype=np.float32)
                                        for j in np.unique(which)]))
    group = max(1, min(group, len(y)))
    y = y[: (len(y) // group) * group].reshape(-1, group, y.shape[-1])
    return y - y.mean(-1, keepdim=True)


def kl_t1(y: torch.Tensor, yhat: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(y) || softmax(yhat)) at T = 1, in float64."""
    p = torch.log_softmax(y.double().reshape(-1, y.shape[-1]), -1)
    q = torch.log_softmax(yhat.double().reshape(-1, y.shape[-1]), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def project_rows(y: torch.Tensor, rows: torch.Tensor, mean: Optional[torch.Tensor]) -> torch.Tensor:
    """Least-squares coefficients (..., r) of the centred rows ``y`` (..., C) on the basis ``rows`` (r, C)
    (mutually orthogonal, of any norms) with mean row ``mean``."""
    unit, norms = unit_rows(rows)
    return (y - (0 if mean is None else mean)) @ unit.T / norms


def probe_coefficients(codec: Any, full: BasisSet, probe: torch.Tensor, rank: int,
                       project: bool = False) -> torch.Tensor:
    """Unrounded coefficients (g, v, rank) of the ``probe`` rows (g, v, C, centred) on the first ``rank`` rows
    of ``full``'s basis (``project``: the least-squares projection alone, which the codec's KL fit only
    improves on)."""
    rows, mean = full.full(0)
    rows, mean = rows.to(probe.device), None if mean is None else mean.to(probe.device)
    if rank == 0:
        return probe.new_zeros(probe.shape[:-1] + (0,))
    if project:
        return project_rows(probe, rows[:rank], mean)
    return codec.coefficients(probe, BasisSet([BasisEntry(rows[:rank], -1, mean)]), 0)


def probe_kl(codec: Any, full: BasisSet, probe: torch.Tensor, rank: int, quant: str, project: bool = False,
             coefficients: Optional[torch.Tensor] = None) -> float:
    """KL(T=1) of the ``probe`` rows (g, v, C, centred) coded on the first ``rank`` rows of ``full``'s basis
    (``project``: coefficients by the least-squares projection alone; ``coefficients``:
    :func:`probe_coefficients` of the same arguments, when already computed)."""
    rows, mean = full.full(0)
    rows, mean = rows.to(probe.device), None if mean is None else mean.to(probe.device)
    a = probe_coefficients(codec, full, probe, rank, project) if coefficients is None else coefficients
    if rank == 0:
        approx = torch.zeros_like(probe) + (0 if mean is None else mean)
    else:
        # as the writer stores them: int8 scales over each probe image's rows, per component or one per image
        a_q = roundtrip(a.transpose(-1, -2), quant, codec.record_one_scale(rows[:rank])).transpose(-1, -2)
        approx = a_q @ rows[:rank] + (0 if mean is None else mean)
    return kl_t1(probe, approx)


def mean_record_size(coefficients: torch.Tensor, quant: str, c: int, zstd_level: int, shuffle: bool,
                     one_scale: bool) -> float:
    """Mean bytes (header included) of the records the writer packs (quantised, shuffled and zstd-compressed
    as the options say) for ``coefficients`` (g, n, r): one record of n rows per item.  zstd gains most on
    the coefficients of low-spread components (few int8 levels), which a byte count before compression
    cannot see."""
    recs = pack_coefficient_records(coefficients.float().cpu(), quant, c=c, zstd_level=zstd_level, shuffle=shuffle,
                                    one_scale=one_scale)
    return sum(len(r) for r in recs) / len(recs)


def wrap_rows(coefficients: torch.Tensor, rows: int) -> torch.Tensor:
    """The rows of ``coefficients`` (g, v, r), taken in order and wrapped around, cut into (m, rows, r)
    stand-in records until every row is in one (when no image's own kept rows are at hand)."""
    a = coefficients.reshape(-1, coefficients.shape[-1])
    total = a.shape[0]
    m = max(1, math.ceil(total / rows))
    return a[torch.arange(m * rows) % total].reshape(m, rows, a.shape[-1])


class SampleRecordBytes:
    """Bytes per row of the records the writer packs on a given basis, after zstd and without the header,
    measured on a sample of a :class:`~score_codec.codecs.global_basis.FitSource` (the ``record_bytes``
    hook of :meth:`GlobalCodec.fit <score_codec.codecs.global_basis.GlobalCodec.fit>`, which the store
    writer's own rate control uses when no allocation chose the rank).

    The sample is ``images`` items spread over the source, at most the store's mean row count of rows from
    each (its first rows): a record per image when the items are images, a stand-in record of consecutive
    rows when they are blocks of a dump.  Coefficients are the projection onto the basis (the codec's KL fit
    moves them too little to change their size); scales and coefficients are counted, the header (counted
    by the caller at the store's row count), residual entries and row means are not."""

    def __init__(self, src: FitSource, quant: str, zstd_level: int, shuffle: bool,
                 images: int = RECORD_IMAGES) -> None:
        self.src, self.quant, self.zstd_level, self.shuffle, self.images = src, quant, zstd_level, shuffle, images
        self._sample: Optional[List[torch.Tensor]] = None

    def sample(self) -> List[torch.Tensor]:
        """The centred (n_i, C) float32 rows whose records are measured (read once, on the CPU)."""
        if self._sample is None:
            n = len(self.src)
            rows = max(1, math.ceil(self.src.total_rows / max(self.src.num_images, 1)))
            self._sample = [self.src.centred(int(i))[:rows].float().cpu() for i in _spread(n, self.images)]
        return self._sample

    def __call__(self, rows: torch.Tensor, mean: Optional[torch.Tensor], one_scale: bool) -> float:
        """Mean bytes per row, header excluded, of the sample's records on the basis ``rows`` (r, C) with
        mean row ``mean``."""
        rows, mean = rows.float().cpu(), None if mean is None else mean.float().cpu()
        c = int(rows.shape[1])
        total = nrows = 0
        for y in self.sample():
            a = project_rows(y, rows, mean)
            total += mean_record_size(a[None], self.quant, c, self.zstd_level, self.shuffle, one_scale) - HEADER.size
            nrows += int(y.shape[0])
        return total / nrows


def fit_rate_control(opts: Any, src: FitSource, budget_per_row: Optional[float]) -> Tuple[Optional[float], Dict[str, Any]]:
    """The byte budget per row and the extra keywords that a store-scope codec's own rate control fits with
    (the store writer's and a distributed encode's, where no allocation chose the rank): row means
    (``keep_mean``) come off the budget as stored, and the ``global`` codec measures its record sizes after
    zstd (:class:`SampleRecordBytes`)."""
    if budget_per_row is None:
        return None, {}
    if opts.keep_mean:
        budget_per_row -= 4.0
    kw: Dict[str, Any] = {}
    if opts.zstd_level > 0 and opts.method == "global":
        kw["record_bytes"] = SampleRecordBytes(src, opts.quant, opts.zstd_level, opts.shuffle)
    return budget_per_row, kw


def _smallest_rank(kl: Callable[[int], float], max_kl: float, qmax: int,
                   bound: Optional[Callable[[int], float]] = None) -> Optional[int]:
    """Smallest r in [0, qmax] with kl(r) <= max_kl (kl decreasing in r), or None if even qmax misses it.
    ``bound``: a cheaper upper bound of kl; its smallest rank bounds the search from above."""
    hi = qmax
    if bound is not None and bound(qmax) <= max_kl:
        hi = _smallest_rank(bound, max_kl, qmax)
    if kl(hi) > max_kl:
        return None if hi == qmax else _smallest_rank(kl, max_kl, qmax)
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if kl(mid) <= max_kl:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _initial(opts: CodecOptions, k: Optional[int]) -> Allocation:
    """The allocation before any budget is split: ``keep_epochs`` evenly spaced, else every epoch."""
    if opts.keep_epochs is not None:
        if k is None:
            raise InputError("keep_epochs needs views that are label epochs (every image one row per epoch); "
                             "this input's views are not")
        kept = even_epochs(int(opts.keep_epochs), k)
    else:
        kept = np.arange(k if k is not None else 0, dtype=np.int64)
    return Allocation(source_epochs=k or 0, kept=kept, max_kl=opts.max_kl)


class _Split:
    """The fitted global basis and the measurements on which one budget is split between kept epochs and
    rank: fitted once, so that several ratios can be split on one fit (:func:`plan_ratios`).  Every
    measurement is cached by rank (and by kept-epoch count for record sizes)."""

    def __init__(self, opts: CodecOptions, num_classes: int, num_images: int, source_epochs: int,
                 fit_source: Callable[[], FitSource], probe: Callable[[], torch.Tensor], head: Optional[Any],
                 device: str, records: Optional[Callable[[np.ndarray], torch.Tensor]]) -> None:
        from ..codecs import get_codec
        self.opts, self.c, self.num_images, self.k, self.records = opts, int(num_classes), int(num_images), \
            int(source_epochs), records
        self.codec = get_codec("global", **dict(opts.codec_config or {}))
        self.full = self.codec.fit(fit_source(), opts.quant, head=head, device=device, residual=opts.residual)
        self.rows, self.mean = self.full.full(0)
        self.qmax = int(self.rows.shape[0])
        self.probe_rows = probe().to(device)
        self._coef: Dict[int, torch.Tensor] = {}
        self._kl: Dict[int, float] = {}
        self._projected: Dict[int, float] = {}
        self._sizes: Dict[Tuple[int, int], float] = {}
        self._samples: Dict[int, torch.Tensor] = {}

    def coefficients(self, r: int) -> torch.Tensor:
        if r not in self._coef:
            self._coef[r] = probe_coefficients(self.codec, self.full, self.probe_rows, r)
        return self._coef[r]

    def kl(self, r: int) -> float:
        if r not in self._kl:
            self._kl[r] = probe_kl(self.codec, self.full, self.probe_rows, r, self.opts.quant,
                                   coefficients=self.coefficients(r))
        return self._kl[r]

    def kl_projected(self, r: int) -> float:
        if r not in self._projected:
            self._projected[r] = probe_kl(self.codec, self.full, self.probe_rows, r, self.opts.quant, project=True)
        return self._projected[r]

    def per_row(self, n: int, r: int, measured: bool = True) -> float:
        """Bytes per kept row of ``n`` epochs per image at rank ``r``: the record's share plus the fp16 basis
        and its float32 mean spread over the kept rows.  The record is measured as the writer packs it, zstd
        included, on a sample of images (``measured=False``: counted before zstd, an upper bound); residual
        entries and row means are counted as stored raw."""
        opts, c = self.opts, self.c
        one = self.codec.record_one_scale(self.rows[:r])
        raw = row_cost(r, float(n), opts.quant, opts.residual, c, one)
        if measured and opts.zstd_level > 0 and r > 0:
            if (n, r) not in self._sizes:
                if self.records is None:
                    a = wrap_rows(self.coefficients(r), n)
                else:
                    if n not in self._samples:
                        self._samples.clear()   # one sample at a time: a sample of many kept epochs is large
                        self._samples[n] = self.records(even_epochs(n, self.k)).cpu()   # packed on the CPU
                    # the projection alone: the codec's KL fit moves the coefficients too little to change
                    # their size after zstd, and costs a fit per (n, r) step of the searches
                    a = probe_coefficients(self.codec, self.full, self._samples[n], r, project=True)
                self._sizes[(n, r)] = mean_record_size(a, opts.quant, c, opts.zstd_level, opts.shuffle, one) / n
            record = self._sizes[(n, r)] + raw - row_cost(r, float(n), opts.quant, 0, c, one)
        else:
            record = raw
        return record + (4.0 if opts.keep_mean else 0.0) + (2 * c * r + 4 * c) / (self.num_images * n)

    def cost(self, n: int, r: int, measured: bool = True) -> float:
        """Label bytes of the whole store with ``n`` kept epochs at rank ``r`` (see :meth:`per_row`)."""
        return self.per_row(n, r, measured) * self.num_images * n

    def split(self, x: float, out: Allocation) -> Allocation:
        """Spend the budget of ratio ``x`` (steps 2-4 of the module docstring) on ``out``'s kept epochs, or on
        fewer when pooling is automatic; fills ``out`` and returns it."""
        opts, c, k, qmax = self.opts, self.c, self.k, self.qmax
        budget = 2.0 * c * self.num_images * k / x
        kept = out.kept
        if opts.pool and opts.keep_epochs is None:
            r_min = _smallest_rank(self.kl, opts.max_kl, qmax, bound=self.kl_projected)
            out.min_rank = qmax if r_min is None else r_min
            if r_min is None:
                log.warning("no global-basis rank reaches KL(T=1) <= %g on the probe (rank %d gives %.3g)",
                            opts.max_kl, qmax, self.kl(qmax))
            if self.cost(k, out.min_rank) > budget:
                # the count before zstd fits (zstd never grows a record), so the search starts there
                start = largest_fitting(lambda m: self.cost(m, out.min_rank, False) <= budget, 1, k)
                fits = largest_fitting(lambda m: self.cost(m, out.min_rank) <= budget, start or 1, k)
                if fits is None:
                    need = self.cost(1, out.min_rank)
                    which = ("the smallest whose KL(T=1) stays at or below" if r_min is not None else
                             "the full basis, whose KL(T=1) still exceeds")
                    most = 2.0 * c * self.num_images * k / need
                    raise BudgetError(
                        f"ratio {x:g}x leaves {budget:,.0f} label bytes ({budget / (self.num_images * k):.2f} B per "
                        f"source row); even one kept epoch needs {need:,.0f} B at global-basis rank {out.min_rank}, "
                        f"{which} max_kl={opts.max_kl:g} (measured {self.kl(out.min_rank):.3g}), i.e. a ratio of "
                        f"at most {most:.1f}x", advice=POOL_BUDGET_ADVICE, max_ratio=most)
                kept = even_epochs(fits, k)
        out.kept = kept
        n = len(kept)
        # the rank the writer's rate control would choose for the kept rows under the whole budget
        inner = x if n == k else x * n / k
        start = largest_fitting(lambda r: self.per_row(n, r, False) <= 2.0 * c / inner, 0, qmax)
        fit_r = largest_fitting(lambda r: self.per_row(n, r) <= 2.0 * c / inner, start or 0, qmax)
        if fit_r is None:
            raise BudgetError(f"ratio {x:g}x leaves {2.0 * c / inner:.2f} B per kept row, below what a rank-0 "
                              f"global record needs ({self.per_row(n, 0):.2f} B per row with {n} kept epochs)")
        out.rank = fit_r
        if out.rank == 0 and not opts.residual:
            # a rank-0 basis decodes every row to the mean row: no labels would be stored
            raise BudgetError(f"ratio {x:g}x leaves {2.0 * c / inner:.2f} B per kept row: the global basis at rank "
                              f"0, which stores no labels; rank 1 needs {self.per_row(n, 1):.2f} B per row with {n} "
                              f"kept epochs")
        out.inner_ratio = inner
        out.kl_t1 = self.kl(out.rank)
        out.label_bytes = self.cost(n, out.rank)
        out.bases = BasisSet([BasisEntry(self.rows[:out.rank], -1, self.mean)])
        return out


def allocate(opts: CodecOptions, *, num_classes: int, num_images: int, source_epochs: Optional[int],
             fit_source: Callable[[], FitSource], probe: Callable[[], torch.Tensor],
             head: Optional[Any] = None, bases: Optional[BasisSet] = None, device: str = "cpu",
             records: Optional[Callable[[np.ndarray], torch.Tensor]] = None) -> Allocation:
    """Decide the kept epochs and the inner coding of a store (see the module docstring).

    Args:
        opts: the codec options (``ratio`` already resolved from ``target_bytes``; ``pool``, ``keep_epochs``,
            ``max_kl`` read here).
        num_classes, num_images: C and N of the store.
        source_epochs: K when the views are label epochs (:func:`epoch_values`), None when they are not (then
            nothing can be pooled).
        fit_source: the sample the writer would fit the global basis on (called only when fitting).
        probe: centred probe rows (g, v, C) from the source (called only when measuring).
        records: centred rows (g, n, C) of a sample of images at given kept positions (n,)
            (:func:`record_sample`), on which the size of a record after zstd is measured; None: the probe's
            rows stand in for records (:func:`wrap_rows`).
        head, bases: as :func:`score_codec.encode` (``bases``: nothing is fitted or pooled automatically).

    Returns:
        The :class:`Allocation`; ``bases`` set when the global basis was fitted here (hand it to the writer).

    Raises:
        BudgetError: the ratio cannot hold a useful label: one kept epoch at the smallest rank whose KL stays
            at or below ``max_kl`` exceeds the budget, or (``pool=False`` / ``keep_epochs``) not even a rank-0
            record fits.
        InputError: ``keep_epochs`` on a store whose views are not label epochs, or outside [1, K].
    """
    k = source_epochs
    out = _initial(opts, k)
    if opts.ratio is None:
        return out
    x = float(opts.ratio)
    if k is None or opts.method != "global" or bases is not None:
        # the inner ratio of the kept rows: the whole budget spread over fewer rows
        out.inner_ratio = x * len(out.kept) / k if k else x
        return out
    out = _Split(opts, num_classes, num_images, k, fit_source, probe, head, device, records).split(x, out)
    n = len(out.kept)
    if out.kl_t1 > opts.max_kl:
        warnings.warn(f"ratio {x:g}x codes {n} of {k} epochs at global-basis rank {out.rank}: measured KL(T=1) "
                      f"{out.kl_t1:.3g} exceeds max_kl={opts.max_kl:g}; students trained on labels this far from "
                      f"the teacher's lose accuracy (keep fewer epochs, or ask for a lower ratio)", stacklevel=3)
    log.info("allocation: %d of %d epochs, inner ratio %.1fx, global rank %s, KL(T=1) %.3g", n, k,
             out.inner_ratio, out.rank, out.kl_t1)
    return out


def plan_ratios(opts: CodecOptions, ratios: Sequence[float], *, num_classes: int, num_images: int,
                source_epochs: Optional[int], fit_source: Callable[[], FitSource],
                probe: Callable[[], torch.Tensor], head: Optional[Any] = None, device: str = "cpu",
                records: Optional[Callable[[np.ndarray], torch.Tensor]] = None) -> List[Any]:
    """:func:`allocate` at each of several ratios on one fit of the global basis, writing nothing.

    Args:
        opts: the codec options, used as :func:`allocate` uses them with each ratio in turn (their own
            ``ratio`` is ignored).
        ratios: target ratios against fp16 logits (positive finite numbers).
        num_classes, num_images, source_epochs, fit_source, probe, head, device, records: as :func:`allocate`
            (``source_epochs`` must be given: only label epochs can be split).

    Returns:
        One entry per ratio, in order: the :class:`Allocation` (with ``label_bytes``, the store's predicted
        label bytes) or the :class:`~score_codec.errors.BudgetError` that encoding at that ratio would raise.

    Raises:
        InputError: a method other than ``global``, views that are not label epochs, a ratio that is not a
            positive finite number, or ``keep_epochs`` outside [1, K].
    """
    xs = check_ratios(ratios)
    check_plannable(opts, source_epochs)
    _initial(opts, source_epochs)   # keep_epochs outside [1, K] is refused before the fit
    split = _Split(opts, num_classes, num_images, source_epochs, fit_source, probe, head, device, records)
    out: List[Any] = []
    for x in xs:
        try:
            out.append(split.split(x, _initial(opts, source_epochs)))
        except BudgetError as exc:
            out.append(exc)
    return out


def check_ratios(ratios: Any) -> List[float]:
    """``ratios`` (a sequence or iterable of numbers) as a non-empty list of positive finite floats; else
    :class:`~score_codec.errors.InputError` naming what was found."""
    try:
        values = list(ratios)
    except TypeError:
        raise InputError(f"ratios must be a sequence of positive numbers, found {ratios!r}") from None
    if not values:
        raise InputError("ratios is empty: give at least one target ratio")
    return [check_real("ratio", x, 0.0) for x in values]


def check_plan_method(opts: CodecOptions) -> None:
    """Refuse a method other than ``global``: only its budget is split between epochs and rank."""
    if opts.method != "global":
        raise InputError(f"planning splits a budget for the global codec; method {opts.method!r} has no split "
                         f"(encode with it and read the ratio it reports)")


def check_plannable(opts: CodecOptions, source_epochs: Optional[int], where: str = "") -> None:
    """Refuse what has no split to plan: a method other than ``global`` (:func:`check_plan_method`), or views
    that are not label epochs (``source_epochs`` None; ``where``, a file, prefixes that message)."""
    check_plan_method(opts)
    if source_epochs is None:
        at = f"{where}: " if where else ""
        raise InputError(f"{at}planning needs views that are label epochs (every image one row per epoch); "
                         f"these views are not")


def plan_entry(x: float, result: Any, num_classes: int, num_images: int, source_epochs: int) -> Dict[str, Any]:
    """One ratio of a plan as a JSON-serialisable dict.

    Args:
        x: the ratio asked for.
        result: what :func:`plan_ratios` returned for it (an :class:`Allocation` or a BudgetError).
        num_classes, num_images, source_epochs: C, N and K of the source.

    Returns:
        ``ratio``; ``keep_epochs`` of ``source_epochs``; ``inner_ratio`` (fp16 bytes of the kept rows over
        stored bytes); ``rank`` and ``min_rank`` of the global basis; ``kl_t1`` (mean probe KL(T=1), nats);
        ``label_bytes`` (int, the store's predicted label bytes) and ``predicted_ratio`` (fp16 bytes of every
        source row over them).  Where the ratio cannot hold a useful label these are None and ``error`` (the
        BudgetError's reason) and ``max_ratio`` (the largest ratio that would, where measured) are set.
    """
    entry: Dict[str, Any] = {"ratio": float(x), "source_epochs": int(source_epochs), "keep_epochs": None,
                             "inner_ratio": None, "rank": None, "min_rank": None, "kl_t1": None, "label_bytes": None,
                             "predicted_ratio": None, "error": None, "max_ratio": None}
    if isinstance(result, BudgetError):
        entry.update(error=result.reason, max_ratio=result.max_ratio)
        return entry
    raw = 2.0 * num_classes * num_images * source_epochs
    entry.update(keep_epochs=int(len(result.kept)), inner_ratio=result.inner_ratio, rank=result.rank,
                 min_rank=result.min_rank, kl_t1=result.kl_t1, label_bytes=int(round(result.label_bytes)),
                 predicted_ratio=raw / result.label_bytes)
    return entry


def store_kl(store: Any, matrices: Sequence[Any], kept: Optional[np.ndarray]) -> float:
    """KL(T=1) of a written store's decoded rows against the source ``matrices`` on the probe images' views
    (``kept``: the source positions of the store's views; None: view j is source row j)."""
    n = len(store)
    k = int(store.ks.min())
    per = min(k, PROBE_VIEWS)
    imgs = _probe_images(n, k)
    views = (np.arange(per) * k) // per
    ids = np.repeat(imgs, per)
    vs = np.tile(views, len(imgs))
    got = store.rows(ids, vs)
    src_pos = vs if kept is None else np.asarray(kept)[vs]
    want = torch.stack([torch.as_tensor(np.asarray(matrices[int(i)], dtype=np.float32)[int(p)])
                        for i, p in zip(ids, src_pos)])
    return kl_t1(want, got)


def finish(stats: Dict[str, Any], opts: CodecOptions, alloc: Allocation,
           measure: Optional[Callable[[], float]]) -> Dict[str, Any]:
    """Add the allocation's fields to a store's stats dict (measuring KL on the store when the allocation did
    not) and warn when a ratio's KL exceeds ``max_kl``."""
    if opts.ratio is None and opts.keep_epochs is None:
        return stats
    if stats.get("kl_t1") is None and measure is not None:
        stats["kl_t1"] = measure()
        if opts.ratio is not None and stats["kl_t1"] > opts.max_kl:
            warnings.warn(f"ratio {opts.ratio:g}x with method {opts.method!r}: measured KL(T=1) {stats['kl_t1']:.3g} "
                          f"exceeds max_kl={opts.max_kl:g}; students trained on labels this far from the teacher's "
                          f"lose accuracy (keep fewer epochs with keep_epochs=, or ask for a lower ratio)", stacklevel=3)
    stats["min_rank"] = alloc.min_rank
    got = stats.get("ratio")
    if opts.ratio is not None and got is not None and got < opts.ratio * (1 - RATIO_TOLERANCE):
        warnings.warn(f"ratio {opts.ratio:g}x: the store came out at {got:.4g}x, more than {RATIO_TOLERANCE:.0%} "
                      f"over the budget (record sizes after zstd are measured on a sample of images)", stacklevel=3)
    return stats


def matrix_inputs(matrices: Sequence[Any], labels: Optional[Sequence[int]] = None,
                  ks: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """``fit_source``, ``probe`` and ``records`` of :func:`allocate` / :func:`plan_ratios` for per-image
    matrices held (or memory-mapped) as an indexable (``ks``: their row counts, where reading every matrix
    to count them would cost a pass)."""
    return dict(fit_source=lambda: FitSource(matrices, labels, ks), probe=lambda: probe_from_matrices(matrices),
                records=lambda kept: record_sample(matrices, kept))


def plan_and_prune(opts: CodecOptions, matrices: Sequence[Any], meta: Optional[AugMeta], ks: np.ndarray,
                   num_classes: int, labels: Optional[Sequence[int]] = None, head: Optional[Any] = None,
                   bases: Optional[BasisSet] = None):
    """:func:`allocate` for per-image matrices held (or memory-mapped) as an indexable.

    Returns ``(allocation, epoch values or None, codec options for the kept rows, metadata of the kept rows)``."""
    values = epoch_values(meta, ks)
    alloc = allocate(opts, num_classes=num_classes, num_images=len(matrices),
                     source_epochs=None if values is None else len(values), head=head, bases=bases,
                     device=opts.device, **matrix_inputs(matrices, labels))
    inner = alloc.writer_options(opts)
    if alloc.pooled and meta is not None:
        meta = prune_meta(meta, alloc.kept, values)
    return alloc, values, inner, meta
