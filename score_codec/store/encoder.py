"""The encoding pipeline for one chunk of images: centre, allocate ranks, factorise, quantise, residual.

Images are bucketed by row count K so each codec call is one batched torch computation.  The result
is one record (bytes) per image plus any shared bases the chunk introduced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from ..codecs import Codec, get_codec
from ..codecs.arguments import check_int, check_real
from ..codecs.base import all_finite, check_matrix
from ..errors import BudgetError, InputError, UnknownCodecError
from ..codecs.quantize import QUANT_CODES, bytes_per_value, roundtrip
from ..codecs.ratecontrol import allocate_ranks
from .record import HEADER, pack_record
from ..codecs.residual import select_residual

log = logging.getLogger(__name__)

__all__ = ["CodingFields", "EncodeOptions", "default_quant", "EncodedChunk", "encode_chunk", "encode_store_chunk", "check_matrices"]


#: largest rank a record header can hold (a 16-bit field, docs/FORMAT.md 5.1)
MAX_RANK = 0xFFFF


@dataclass(frozen=True)
class CodingFields:
    """The settings that decide how rows are coded, declared once for :class:`EncodeOptions` and the public
    :class:`~score_codec.store.options.CodecOptions` (which documents each field)."""

    method: str = "global"
    rank: Optional[int] = None
    energy: Optional[float] = None
    ratio: Optional[float] = None
    target_bytes: Optional[int] = None
    quant: Optional[str] = None   # None: default_quant(method)
    residual: int = 0
    residual_score: str = "kl"
    keep_mean: bool = False
    zstd_level: int = 3
    shuffle: bool = False
    codec_config: Optional[Mapping[str, Any]] = field(default=None, hash=False)

    def coding_fields(self) -> Dict[str, Any]:
        """The coding fields as keywords (``codec_config`` copied)."""
        d = {f.name: getattr(self, f.name) for f in fields(CodingFields)}
        d["codec_config"] = dict(self.codec_config or {})
        return d


def default_quant(method: str) -> str:
    """The quantisation of ``method``'s factors when none is given: ``"int8"`` for the store-scope codecs
    (``global``, ``two-level``: per-row coefficients on a basis that is paid for once, where int8 buys
    about twice the coefficients of fp16 at a small KL cost), ``"fp16"`` for image-scope codecs (whose
    factors carry top-k and near-tied rows that int8's one scale per component can reorder)."""
    try:
        return "int8" if type(get_codec(method)).scope == "store" else "fp16"
    except UnknownCodecError:   # reported by the validation that follows
        return "fp16"


@dataclass(frozen=True)
class EncodeOptions(CodingFields):
    """The coding fields validated and completed (rank 8 when no target is given): the writer's form, stored
    in the index as JSON."""

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)   # frozen: normalised once, here

        put("codec_config", dict(self.codec_config or {}))
        if self.quant is None:
            put("quant", default_quant(self.method))
        if self.quant not in QUANT_CODES:
            raise InputError(f"unknown quantisation {self.quant!r}; choose one of {', '.join(QUANT_CODES)}")
        if sum(x is not None for x in (self.rank, self.energy, self.ratio, self.target_bytes)) > 1:
            raise InputError("give at most one of rank, energy, ratio, target_bytes")
        if self.rank is None and self.energy is None and self.ratio is None and self.target_bytes is None:
            put("rank", 8)
        # a rank of 0 (or a NaN ratio that rate control turns into one) would store no labels at all: every
        # row would decode to the same values, so such targets are refused rather than written
        if self.rank is not None:
            put("rank", check_int("rank", self.rank, 1, MAX_RANK))
        if self.energy is not None:
            put("energy", check_real("energy", self.energy, 0.0, 1.0))
        if self.ratio is not None:
            # below 1 the target allows more bytes than fp16 logits (e.g. fp32 factors): legitimate, if rare
            put("ratio", check_real("ratio", self.ratio, 0.0))
        if self.target_bytes is not None:
            put("target_bytes", check_int("target_bytes", self.target_bytes, 1))
        put("residual", check_int("residual entries per row", self.residual, 0))
        put("zstd_level", check_int("zstd_level", self.zstd_level, 0, 22))

    def as_json(self) -> Dict[str, Any]:
        """The fields as the JSON object the index records."""
        return self.coding_fields()

    def make_codec(self) -> Codec:
        return get_codec(self.method, **self.codec_config)


@dataclass
class EncodedChunk:
    """Records of one chunk, in input order, and the shared bases it created (group key -> (r, C))."""

    records: List[bytes]
    ranks: List[int]
    nnz: List[int]
    bases: Dict[int, torch.Tensor]
    basis_of: List[int]


def check_matrices(mats: Sequence[torch.Tensor], c: int, first_id: int = 0) -> None:
    """Validate per-image matrices: 2-D, ``c`` columns, at least one row, finite."""
    for j, m in enumerate(mats):
        check_matrix(m, c, f"image {first_id + j}")


def _unit_cost(k: int, c: int, quant: str, shared: bool) -> int:
    per = k + (0 if shared else c)
    return per * bytes_per_value(quant) + ((4 if shared else 8) if quant == "int8" else 0)


def _fixed_cost(k: int, c: int, opts: EncodeOptions) -> int:
    ib = 1 if c <= 0xFF else 2 if c <= 0xFFFF else 4
    res = (ib * k + (ib + 2) * k * min(opts.residual, c)) if opts.residual else 0
    return HEADER.size + (4 * k if opts.keep_mean else 0) + res


def _pack(a_q: torch.Tensor, b_q: Optional[torch.Tensor], res: torch.Tensor, idx: List[int], rk: torch.Tensor,
          means: List[torch.Tensor], basis_of: List[int], opts: EncodeOptions, c: int, records: List[Optional[bytes]],
          nnz: List[int], one_scale: bool = False) -> None:
    """Serialise one bucket's images into ``records`` / ``nnz`` (in place; ``one_scale``: shared-basis int8
    coefficients with one scale per record)."""
    for j, i in enumerate(idx):
        r = int(rk[j])
        mean = means[i] if opts.keep_mean else None
        records[i] = pack_record(a_q[j, :, :r].cpu(), None if b_q is None else b_q[j, :r].cpu(), opts.quant,
                                 mean=None if mean is None else mean.cpu(),
                                 residual=res[j].cpu() if opts.residual else None, basis=basis_of[i],
                                 zstd_level=opts.zstd_level, shuffle=opts.shuffle, c=c, one_scale=one_scale)
        nnz[i] = int((res[j] != 0).sum()) if opts.residual else 0


def _quantised(a: torch.Tensor, b: torch.Tensor, quant: str):
    """(A, B, A @ B) with ``a`` (n, K, r) and ``b`` (n, r, C) rounded as ``quant`` stores them."""
    a_q = roundtrip(a.transpose(-1, -2), quant).transpose(-1, -2)
    b_q = roundtrip(b, quant)
    return a_q, b_q, torch.bmm(a_q, b_q)


#: storing factors may move a decoded logit by at most this many steps of the quantisation's relative
#: precision times the image's largest logit: balanced SVD factors stay near one step at any rank (each
#: product term is at most about the matrix's scale), while ill-conditioned factors (a CUR core of 10^3
#: and more) exceed it by orders of magnitude
QUANT_DAMAGE_UNITS = 4.0
_REL_STEP = {"fp32": 2.0 ** -23, "fp16": 2.0 ** -10, "bf16": 2.0 ** -7, "int8": 1.0 / 127}


def _quantisation_damaged(y: torch.Tensor, exact: torch.Tensor, approx: torch.Tensor, quant: str) -> torch.Tensor:
    """(n,) bool: images whose decoded logits move further from the unrounded factors' product than
    :data:`QUANT_DAMAGE_UNITS` steps of ``quant`` allow."""
    scale = y.abs().amax(dim=(1, 2)).clamp_min(1e-30)
    damage = (approx - exact).abs().amax(dim=(1, 2))
    allowed = QUANT_DAMAGE_UNITS * _REL_STEP[quant] * scale
    return ~(damage <= allowed)          # NaN / inf damage counts as damaged


def _refactor(y: torch.Tensor, rk: torch.Tensor, bad: torch.Tensor, a_q: torch.Tensor, b_q: torch.Tensor,
              approx: torch.Tensor, opts: EncodeOptions, ids: List[int]):
    """Re-encode the images ``bad`` of a bucket with balanced SVD factors of the same rank (the same record
    layout and size; decoding is the same product), where the codec's own factors lose precision when
    rounded to ``opts.quant`` or miss the matrix at full rank."""
    from ..codecs.svd import SVDCodec

    sel = torch.nonzero(bad).flatten()
    f = SVDCodec().encode(y[sel], rk[sel])
    a2, b2, approx2 = _quantised(f.a, f.b, opts.quant)
    a_q, b_q, approx = a_q.clone(), b_q.clone(), approx.clone()
    q = a2.shape[-1]   # the bucket's factors are padded to its largest rank, the replacements to theirs
    a_q[sel], b_q[sel], approx[sel] = 0.0, 0.0, approx2
    a_q[sel, :, :q], b_q[sel, :q] = a2, b2
    still = _quantisation_damaged(y[sel], torch.bmm(f.a, f.b), approx2, opts.quant)
    log.warning("%s factors of %d image(s) (first: image %d of the chunk) do not decode to their labels within %s "
                "precision; stored as balanced SVD factors of the same rank instead%s", opts.method, len(sel),
                ids[int(sel[0])], opts.quant,
                f" ({int(still.sum())} still lose precision: consider quant='fp32')" if still.any() else "")
    return a_q, b_q, approx


def _check_finite(y: torch.Tensor, approx: torch.Tensor, res: torch.Tensor, quant: str) -> None:
    if not (all_finite(approx) and all_finite(res)):
        # fp16/bf16 factors or fp16 residual values overflowed: refuse rather than store infinities
        raise InputError(f"logits too large for quant={quant!r} factors or fp16 residual values "
                         f"(max |logit| {float(y.abs().max()):.3g}); use quant='fp32' or rescale the logits")


def encode_store_chunk(mats: Sequence[torch.Tensor], opts: EncodeOptions, bases: Any,
                       labels: Optional[Sequence[int]] = None, device: str = "cpu") -> EncodedChunk:
    """Encode a chunk with a store-scope codec whose ``bases`` (:class:`~score_codec.codecs.BasisSet`) were fitted
    on the whole store: per image, coefficients on its basis (the class's, or the global one)."""
    codec = opts.make_codec()
    n, c = len(mats), int(mats[0].shape[1])
    ys = [m.to(device=device, dtype=torch.float32) for m in mats]
    means = [y.mean(-1) for y in ys]
    ys = [y - mu[:, None] for y, mu in zip(ys, means)]
    basis_of = [bases.basis_for(None if labels is None else int(labels[i])) for i in range(n)]
    full = {b: bases.full(b) for b in set(basis_of)}
    per_row = opts.residual if bases.residual is None else bases.residual
    if per_row != opts.residual:
        opts = EncodeOptions(**{**opts.coding_fields(), "residual": per_row})
    buckets: Dict[tuple, List[int]] = {}
    for i, y in enumerate(ys):
        buckets.setdefault((int(y.shape[0]), basis_of[i]), []).append(i)
    records: List[Optional[bytes]] = [None] * n
    nnz, ranks = [0] * n, [0] * n
    for (k, bid), idx in buckets.items():
        y = torch.stack([ys[i] for i in idx])
        rows, mu = full[bid]
        rows = rows.to(device)
        a = codec.coefficients(y, bases, bid)
        one = codec.record_one_scale(rows)
        a_q = roundtrip(a.transpose(-1, -2), opts.quant, one).transpose(-1, -2)
        approx = a_q @ rows + (0 if mu is None else mu.to(device))
        res = select_residual(y, approx, opts.residual, opts.residual_score)
        _check_finite(y, approx, res, opts.quant)
        rk = torch.full((len(idx),), rows.shape[0], dtype=torch.int64)
        _pack(a_q, None, res, idx, rk, means, basis_of, opts, c, records, nnz, one)
        for i in idx:
            ranks[i] = int(rows.shape[0])
    return EncodedChunk(records=records, ranks=ranks, nnz=nnz, bases={}, basis_of=basis_of)


def encode_chunk(
    mats: Sequence[torch.Tensor],
    opts: EncodeOptions,
    labels: Optional[Sequence[int]] = None,
    device: str = "cpu",
    budget: Optional[float] = None,
    next_basis: int = 0,
) -> EncodedChunk:
    """Encode ``mats`` (list of (K_i, C) float tensors, already validated) under ``opts``.

    ``budget`` (bytes) applies to this chunk when ``opts`` uses a ratio or byte target; ``next_basis``
    is the first free shared-basis id.  (Store-scope codecs use :func:`encode_store_chunk`.)
    """
    codec = opts.make_codec()
    n = len(mats)
    c = int(mats[0].shape[1])
    ys = [m.to(device=device, dtype=torch.float32) for m in mats]
    means = [y.mean(-1) for y in ys]
    ys = [y - mu[:, None] for y, mu in zip(ys, means)]
    buckets: Dict[int, List[int]] = {}
    for i, y in enumerate(ys):
        buckets.setdefault(int(y.shape[0]), []).append(i)
    shared = codec.shared_basis
    if shared:
        groups: Dict[int, List[int]] = {}
        for i in range(n):
            key = int(labels[i]) if (labels is not None and codec.group == "class") else -1
            groups.setdefault(key, []).append(i)
        gkeys = sorted(groups)
        evals, bases = [], []
        for g in gkeys:
            # one Gram per group over all its rows (images of any K concatenate)
            gram = codec.gram(torch.cat([ys[i] for i in groups[g]])[None])
            ev, basis = codec.basis_from_gram(gram)
            evals.append(ev.sqrt())
            bases.append(basis.to(torch.float32))
        sv = torch.stack(evals)  # (G, C): square roots of the Gram eigenvalues act as singular values
        unit = torch.tensor([sum(_unit_cost(int(ys[i].shape[0]), c, opts.quant, True) for i in groups[g]) + c * bytes_per_value(opts.quant) for g in gkeys])
        fixed = torch.tensor([sum(_fixed_cost(int(ys[i].shape[0]), c, opts) for i in groups[g]) for g in gkeys])
    else:
        q = min(c, max(buckets))
        if budget is None and opts.energy is None:
            # a fixed rank needs no spectrum: skip the full SVD (it would dominate rsvd's cost)
            sv = torch.ones(n, q, dtype=torch.float64)
        else:
            sv = torch.zeros(n, q, dtype=torch.float64)
            for k, idx in buckets.items():
                s = torch.linalg.svdvals(torch.stack([ys[i] for i in idx])).cpu().double()
                sv[idx, : s.shape[1]] = s
        unit = torch.tensor([_unit_cost(int(y.shape[0]), c, opts.quant, False) for y in ys])
        fixed = torch.tensor([_fixed_cost(int(y.shape[0]), c, opts) for y in ys])
    if budget is not None:
        ranks = allocate_ranks(sv, budget=budget, unit_cost=unit, fixed_cost=fixed)
        if int(ranks.max()) == 0 and opts.residual == 0 and bool((sv > 0).any()):
            # rank 0 everywhere stores no labels: every row of these images would decode to zeros
            raise BudgetError(f"the byte budget of {budget:.0f} B for {n} images leaves every "
                              f"image at rank 0, which stores no labels; lower the ratio (rank 1 needs "
                              f"{float((unit + fixed).min()):.0f} B for the cheapest image)")
    else:
        ranks = allocate_ranks(sv, rank=opts.rank, energy=opts.energy)
    if not shared:
        # an image never needs more components than min(K_i, C)
        cap = torch.tensor([min(int(y.shape[0]), c) for y in ys], dtype=torch.int64)
        ranks = torch.minimum(ranks, cap)
    img_rank = torch.zeros(n, dtype=torch.int64)
    basis_of = [-1] * n
    new_bases: Dict[int, torch.Tensor] = {}
    if shared:
        for gi, g in enumerate(gkeys):
            r = int(ranks[gi])
            bid = next_basis + gi
            new_bases[bid] = roundtrip(bases[gi][:r], opts.quant).cpu()
            for i in groups[g]:
                img_rank[i] = r
                basis_of[i] = bid
    else:
        img_rank = ranks
    records: List[Optional[bytes]] = [None] * n
    nnz = [0] * n
    for k, idx in buckets.items():
        y = torch.stack([ys[i] for i in idx])
        rk = img_rank[idx]
        if shared:
            # each image's (already quantised) group basis, zero-padded to the bucket's largest rank
            rmax = int(rk.max())
            b_pad = torch.zeros(len(idx), rmax, c, device=device)
            for gid in set(basis_of[i] for i in idx):
                basis = new_bases[gid].to(device)
                rows = [j for j, i in enumerate(idx) if basis_of[i] == gid]
                b_pad[rows, : basis.shape[0]] = basis
            a_q = roundtrip(torch.bmm(y, b_pad.transpose(1, 2)).transpose(-1, -2), opts.quant).transpose(-1, -2)
            approx = torch.bmm(a_q, b_pad)
            b_q = None
        else:
            f = codec.encode(y, rk)
            a_q, b_q, approx = _quantised(f.a, f.b, opts.quant)
            bad = _quantisation_damaged(y, torch.bmm(f.a, f.b), approx, opts.quant)
            # at full rank every codec's product is the matrix itself: one that decodes to anything else
            # (RPCA keeps only its low-rank part) is replaced as well
            full = rk.to(bad.device) >= min(int(y.shape[1]), c)
            bad |= full & _quantisation_damaged(y, y, approx, opts.quant)
            if bad.any() and codec.codec_id != "svd":
                a_q, b_q, approx = _refactor(y, rk, bad, a_q, b_q, approx, opts, idx)
        # RPCA's outliers are exactly where y - approx is large, so the residual finds them unaided
        res = select_residual(y, approx, opts.residual, opts.residual_score)
        _check_finite(y, approx, res, opts.quant)
        _pack(a_q, b_q, res, idx, rk, means, basis_of, opts, c, records, nnz)
    return EncodedChunk(records=records, ranks=[int(r) for r in img_rank], nnz=nnz, bases=new_bases, basis_of=basis_of)
