"""One image's record: the bytes that hold its factors, row means and sparse residual.

Layout (little-endian; docs/FORMAT.md section "Record" is normative): a 32-byte header followed by a
body that is optionally byte-shuffled per section and optionally zstd-compressed as a whole.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import zstandard

from ..errors import CodecError, CorruptRecordError, SizeLimitError
from ..codecs.quantize import QUANT_CODES, QUANT_NAMES, dequantize, dequantize_raw, quantize, quantize_batch, quantized_nbytes

__all__ = ["MAGIC", "HEADER", "FLAG_MEAN", "FLAG_SHARED", "FLAG_ZSTD", "FLAG_SHUFFLE", "FLAG_ONE_SCALE", "FLAGS_KNOWN", "Record", "inflate", "pack_record", "pack_coefficient_records",
           "unpack_record"]

MAGIC = b"SLR1"
#: magic, K, C, rank, quant, flags, nnz, basis id, raw body length, stored body length
HEADER = struct.Struct("<4sIIHBBIiII")
FLAG_MEAN, FLAG_SHARED, FLAG_ZSTD, FLAG_SHUFFLE = 1, 2, 4, 8
#: int8 shared-basis coefficients with one scale for the whole (r, K) block instead of one per component
#: (format version 5 and later)
FLAG_ONE_SCALE = 16
FLAGS_KNOWN = 0x1F
#: zstd is kept only when it saves at least this share: decompression costs time on every read
MIN_ZSTD_GAIN = 0.03
#: largest K x C a record may declare: bounds what a damaged header can make a reader allocate
MAX_CELLS = 2**31
#: K x C a record of any size may declare (a rank-0 record decodes 2^26 float32 cells, 256 MiB, from its
#: header alone); beyond it the record must hold at least one byte per CELLS_PER_BYTE cells
FREE_CELLS = 2**26
CELLS_PER_BYTE = 2**14
#: a zstd body may inflate to at most this many times its size (plus FREE_RAW_BYTES): factors and residual
#: indices compress a few times at most; a frame that claims more is damaged or forged
ZSTD_MAX_EXPANSION = 1024
FREE_RAW_BYTES = 2**20


def max_cells(nbytes: int) -> int:
    """The most K x C cells a record of ``nbytes`` bytes may decode to."""
    return min(MAX_CELLS, FREE_CELLS + CELLS_PER_BYTE * max(int(nbytes), 0))

_compressors = {}
_decompressor = zstandard.ZstdDecompressor()


def inflate(frame: bytes, raw_len: int, where: str, expansion_limit: bool = True) -> bytes:
    """The ``raw_len`` bytes one zstd ``frame`` holds.  The frame must declare exactly ``raw_len`` (zstd
    allocates whatever a frame header declares, so a forged one is refused before that), at most
    ``FREE_RAW_BYTES + ZSTD_MAX_EXPANSION * len(frame)`` unless ``expansion_limit`` is False (a caller that
    bounds ``raw_len`` otherwise), and nothing may follow the frame.

    Raises:
        CorruptRecordError: another declared size, trailing bytes, a frame that does not decompress.
        SizeLimitError: ``raw_len`` past the expansion limit.
    """
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != raw_len:
            raise CorruptRecordError(f"{where}: zstd frame declares {declared} bytes, expected {raw_len}")
        if expansion_limit and raw_len > FREE_RAW_BYTES + ZSTD_MAX_EXPANSION * len(frame):
            raise SizeLimitError(f"{where}: a {len(frame)}-byte zstd body declares {raw_len} bytes, more than "
                                 f"{ZSTD_MAX_EXPANSION}x its size")
        # zstd refuses a frame whose content differs from its declared size, now bounded above
        dobj = _decompressor.decompressobj()
        body = dobj.decompress(frame)
        if dobj.unused_data:
            raise CorruptRecordError(f"{where}: {len(dobj.unused_data)} bytes follow the zstd frame")
    except zstandard.ZstdError as exc:
        raise CorruptRecordError(f"{where}: zstd body does not decompress: {exc}") from None
    if len(body) != raw_len:
        raise CorruptRecordError(f"{where}: body decompresses to {len(body)} bytes, expected {raw_len}")
    return body


@dataclass
class Record:
    """Decoded contents of one record (all float32 on CPU).

    ``a`` (K, r); ``b`` (r, C) or ``None`` for a shared basis (``basis`` names it); ``mean`` (K,) or
    ``None``; residual entries as ``res_rows``/``res_cols`` (nnz,) int64 and ``res_vals`` (nnz,).
    """

    k: int
    c: int
    a: torch.Tensor
    b: Optional[torch.Tensor]
    mean: Optional[torch.Tensor]
    res_rows: torch.Tensor
    res_cols: torch.Tensor
    res_vals: torch.Tensor
    basis: int = -1
    quant: str = "fp16"
    #: raw records (``unpack_record(raw=True)``) keep ``a`` / ``b`` in their stored dtype; int8 ones carry
    #: one float32 scale per rank component here (value = stored * scale; a one-scale record's repeated)
    a_scale: Optional[torch.Tensor] = None
    b_scale: Optional[torch.Tensor] = None

    @property
    def rank(self) -> int:
        return self.a.shape[1]

    def dequantized(self) -> "Record":
        """This record with float32 ``a`` and ``b`` (a raw record is widened; others are returned as they are)."""
        if self.a.dtype == torch.float32 and (self.b is None or self.b.dtype == torch.float32):
            return self
        a = self.a.float() * (self.a_scale[None, :] if self.a_scale is not None else 1.0)
        b = None if self.b is None else self.b.float() * (self.b_scale[:, None] if self.b_scale is not None else 1.0)
        return Record(self.k, self.c, a, b, self.mean, self.res_rows, self.res_cols, self.res_vals, self.basis, self.quant)

    def matrix(self, basis: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The decoded (K, C) logits; ``basis`` (r, C) is required for shared-basis records."""
        if self.a.dtype != torch.float32:
            return self.dequantized().matrix(basis)
        b = self.b if self.b is not None else basis
        if b is None:
            raise CorruptRecordError(f"record refers to shared basis {self.basis} but none was given")
        out = self.a @ b[: self.rank]
        if self.mean is not None:
            out = out + self.mean[:, None]
        out[self.res_rows, self.res_cols] += self.res_vals
        return out


def _index_dtype(c: int) -> str:
    """Residual index and count type: the narrowest that holds 0..C (counts reach C)."""
    return "u1" if c <= 0xFF else "<u2" if c <= 0xFFFF else "<u4"


def _shuffle(buf: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not buf:
        return buf
    return np.frombuffer(buf, np.uint8).reshape(-1, itemsize).T.tobytes()


def _unshuffle(buf: bytes, itemsize: int) -> bytes:
    if itemsize == 1 or not buf:
        return buf
    return np.frombuffer(buf, np.uint8).reshape(itemsize, -1).T.tobytes()


def _sections(k: int, c: int, rank: int, quant: str, flags: int, nnz: int) -> List[Tuple[int, int]]:
    """(byte length, item size) of each body section, in order."""
    isz = 2 if quant in ("fp16", "bf16") else (4 if quant == "fp32" else 1)
    secs = []
    if quant == "int8" and rank:
        secs += [(4 if flags & FLAG_ONE_SCALE else 4 * rank, 4), (rank * k, 1)]
        if not flags & FLAG_SHARED:
            secs += [(4 * rank, 4), (rank * c, 1)]
    else:
        secs.append((quantized_nbytes(quant, rank, k), isz))
        if not flags & FLAG_SHARED:
            secs.append((quantized_nbytes(quant, rank, c), isz))
    if flags & FLAG_MEAN:
        secs.append((4 * k, 4))
    if nnz:
        ib = np.dtype(_index_dtype(c)).itemsize
        secs += [(ib * k, ib), (ib * nnz, ib), (2 * nnz, 2)]
    return secs


def _check_rank(rank: int) -> None:
    if rank > 0xFFFF:
        raise CodecError(f"rank {rank} does not fit the record header (at most 65535)")


def pack_record(
    a: torch.Tensor,
    b: Optional[torch.Tensor],
    quant: str,
    mean: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    basis: int = -1,
    zstd_level: int = 3,
    shuffle: bool = False,
    c: Optional[int] = None,
    one_scale: bool = False,
) -> bytes:
    """Serialise one image.

    ``a`` (K, r) and ``b`` (r, C) float32 (``b=None`` with ``basis >= 0`` for a shared basis), ``mean``
    (K,), ``residual`` a dense (K, C) tensor whose non-zeros are stored (values as fp16); ``c`` is the
    class count, needed only when ``b`` is None.  ``one_scale``: int8 coefficients of a shared basis with
    one scale for all of them (:data:`FLAG_ONE_SCALE`).
    """
    k, rank = a.shape
    _check_rank(rank)
    one_scale = _one_scale(one_scale, quant, b is None, rank)
    if c is None:
        if b is None:
            raise CodecError("pack_record needs c= when the basis is shared")
        c = int(b.shape[1])
    if b is not None and (b.shape[1] != c or b.shape[0] < rank):
        raise CodecError(f"B has shape {tuple(b.shape)}, expected at least ({rank}, {c})")
    if residual is not None and tuple(residual.shape) != (k, c):
        raise CodecError(f"residual has shape {tuple(residual.shape)}, expected ({k}, {c})")
    flags = (FLAG_MEAN if mean is not None else 0) | (FLAG_SHARED if b is None else 0) | (FLAG_ONE_SCALE if one_scale else 0)
    parts = [quantize(a.T, quant, one_scale)]
    if b is not None:
        parts.append(quantize(b[:rank], quant))
    if mean is not None:
        parts.append(mean.detach().cpu().numpy().astype("<f4").tobytes())
    nnz = 0
    if residual is not None:
        rows, cols = torch.nonzero(residual.detach().cpu(), as_tuple=True)  # row-major order
        nnz = int(rows.numel())
        if nnz:
            idt = _index_dtype(c)
            counts = torch.bincount(rows, minlength=k).numpy().astype(idt)
            delta = cols.clone()
            same = torch.zeros_like(rows, dtype=torch.bool)
            same[1:] = rows[1:] == rows[:-1]
            delta[1:] = torch.where(same[1:], cols[1:] - cols[:-1], cols[1:])
            vals = residual.detach().cpu()[rows, cols].numpy().astype("<f2")
            parts += [counts.tobytes(), delta.numpy().astype(idt).tobytes(), vals.tobytes()]
    return _finish(b"".join(parts), k, c, rank, quant, flags, nnz, basis, zstd_level, shuffle)


def _one_scale(one_scale: bool, quant: str, shared: bool, rank: int) -> bool:
    """Whether a record gets :data:`FLAG_ONE_SCALE`: asked for, int8, shared-basis and rank >= 1 only (other
    quantisations have no scales, an own basis B keeps one scale per component, a rank-0 block has none)."""
    if one_scale and not shared:
        raise CodecError("one_scale applies to shared-basis coefficients only (b must be None)")
    return bool(one_scale) and quant == "int8" and rank > 0


def pack_coefficient_records(a: torch.Tensor, quant: str, *, c: int, means: Optional[torch.Tensor] = None,
                             basis: int = 0, zstd_level: int = 3, shuffle: bool = False,
                             one_scale: bool = False) -> List[bytes]:
    """:func:`pack_record` of shared-basis coefficients for a batch of images with the same row count:
    ``a`` (n, K, r) float32, ``c`` the class count, ``means`` (n, K) or None; the same bytes as ``[pack_record(a[i], None, quant,
    mean=means[i], basis=basis, one_scale=one_scale, ...) for i in range(n)]``, with the quantisation done once for the batch."""
    n, k, rank = a.shape
    _check_rank(rank)
    one_scale = _one_scale(one_scale, quant, True, rank)
    flags = (FLAG_MEAN if means is not None else 0) | FLAG_SHARED | (FLAG_ONE_SCALE if one_scale else 0)
    coef = quantize_batch(a.transpose(1, 2), quant, one_scale)
    mean_bytes = None if means is None else means.detach().cpu().numpy().astype("<f4")
    return [_finish(coef[i] if mean_bytes is None else coef[i] + mean_bytes[i].tobytes(), k, c, rank, quant, flags, 0,
                    basis, zstd_level, shuffle) for i in range(n)]


def _finish(raw: bytes, k: int, c: int, rank: int, quant: str, flags: int, nnz: int, basis: int, zstd_level: int,
            shuffle: bool) -> bytes:
    """Byte-shuffle and compress a record's sections, and put the header in front."""
    secs = _sections(k, c, rank, quant, flags, nnz)
    # int8 blocks are one part (scales + values) but two sections; re-split by the section table
    if shuffle:
        out, pos = [], 0
        for ln, isz in secs:
            out.append(_shuffle(raw[pos : pos + ln], isz))
            pos += ln
        raw = b"".join(out)
        flags |= FLAG_SHUFFLE
    body = raw
    if zstd_level > 0 and raw:
        comp = _compressors.get(zstd_level)
        if comp is None:
            comp = _compressors[zstd_level] = zstandard.ZstdCompressor(level=zstd_level)
        z = comp.compress(raw)
        if len(z) <= len(raw) * (1 - MIN_ZSTD_GAIN):
            body, flags = z, flags | FLAG_ZSTD
    head = HEADER.pack(MAGIC, k, c, rank, QUANT_CODES[quant], flags, nnz, basis, len(raw), len(body))
    return head + body


def unpack_record(buf: bytes, where: str = "record", raw: bool = False) -> Record:
    """Parse and validate one record; every size is checked before use.

    ``raw=True`` keeps the factors in their stored dtype (int8 with scales, fp16, bf16), as the dense
    decode tables hold them.  Raises :class:`CorruptRecordError` (naming ``where``) on any inconsistency.
    """
    if len(buf) < HEADER.size:
        raise CorruptRecordError(f"{where}: {len(buf)} bytes, shorter than the {HEADER.size}-byte header")
    magic, k, c, rank, qcode, flags, nnz, basis, raw_len, body_len = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise CorruptRecordError(f"{where}: bad magic {magic!r}, expected {MAGIC!r}")
    if qcode not in QUANT_NAMES:
        raise CorruptRecordError(f"{where}: unknown quantisation code {qcode}")
    quant = QUANT_NAMES[qcode]
    # shared-basis coefficients may use every basis row even when K is smaller than the rank
    max_rank = c if flags & FLAG_SHARED else min(k, c)
    if rank > max_rank or nnz > k * c or flags & ~FLAGS_KNOWN or k * c > MAX_CELLS:
        raise CorruptRecordError(f"{where}: header out of range (K={k}, C={c}, rank={rank}, nnz={nnz}, flags={flags})")
    one_scale = bool(flags & FLAG_ONE_SCALE)
    if one_scale and (quant != "int8" or not flags & FLAG_SHARED or rank == 0):
        raise CorruptRecordError(f"{where}: one-scale flag on a {quant} record of rank {rank}"
                                 f"{'' if flags & FLAG_SHARED else ' with its own basis'}; it applies to int8 "
                                 f"shared-basis records of rank 1 or more only")
    if k * c > max_cells(len(buf)):
        raise SizeLimitError(f"{where}: a {len(buf)}-byte record declares K={k} x C={c} cells; at most "
                             f"{max_cells(len(buf))} may decode from that many bytes")
    if bool(flags & FLAG_SHARED) != (basis >= 0):
        raise CorruptRecordError(f"{where}: shared-basis flag disagrees with basis id {basis}")
    if len(buf) - HEADER.size != body_len:
        raise CorruptRecordError(f"{where}: body is {len(buf) - HEADER.size} bytes, header says {body_len}")
    secs = _sections(k, c, rank, quant, flags, nnz)
    if sum(s for s, _ in secs) != raw_len:
        raise CorruptRecordError(f"{where}: body should hold {sum(s for s, _ in secs)} bytes, header says {raw_len}")
    body = bytes(buf[HEADER.size :])
    if flags & FLAG_ZSTD:
        body = inflate(body, raw_len, where)
    elif len(body) != raw_len:
        raise CorruptRecordError(f"{where}: raw body is {len(body)} bytes, expected {raw_len}")
    if flags & FLAG_SHUFFLE:
        out, pos = [], 0
        for ln, isz in secs:
            out.append(_unshuffle(body[pos : pos + ln], isz))
            pos += ln
        body = b"".join(out)
    mv = memoryview(body)
    a_scale = b_scale = None
    try:
        if raw:
            at, a_scale, n = dequantize_raw(mv, quant, rank, k, one_scale)
        else:
            at, n = dequantize(mv, quant, rank, k, one_scale)
        pos = n
        b = None
        if not flags & FLAG_SHARED:
            if raw:
                b, b_scale, n = dequantize_raw(mv[pos:], quant, rank, c)
            else:
                b, n = dequantize(mv[pos:], quant, rank, c)
            pos += n
    except CodecError as exc:   # sizes were checked above: what is left is a value no writer produces
        raise CorruptRecordError(f"{where}: {exc}") from None
    mean = None
    if flags & FLAG_MEAN:
        mean = torch.from_numpy(np.frombuffer(body, "<f4", count=k, offset=pos).astype(np.float32))
        pos += 4 * k
    rows = cols = torch.zeros(0, dtype=torch.int64)
    vals = torch.zeros(0)
    if nnz:
        idt = np.dtype(_index_dtype(c))
        counts = np.frombuffer(body, idt, count=k, offset=pos).astype(np.int64)
        pos += idt.itemsize * k
        delta = np.frombuffer(body, idt, count=nnz, offset=pos).astype(np.int64)
        pos += idt.itemsize * nnz
        vals = torch.from_numpy(np.frombuffer(body, "<f2", count=nnz, offset=pos).astype(np.float32))
        if counts.sum() != nnz or (counts > c).any():
            raise CorruptRecordError(f"{where}: residual row counts (sum {counts.sum()}, max {counts.max()}) disagree "
                                     f"with nnz={nnz} or exceed C={c}")
        row_ids = np.repeat(np.arange(k), counts)
        # undo the per-row delta code: cumulative sum restarted at each row's first entry
        csum = np.cumsum(delta)
        base = np.repeat(np.concatenate([[0], np.cumsum(delta)])[np.cumsum(counts) - counts], counts)
        col_ids = csum - base
        if col_ids.size and (col_ids.min() < 0 or col_ids.max() >= c or (np.diff(col_ids)[row_ids[1:] == row_ids[:-1]] <= 0).any()):
            raise CorruptRecordError(f"{where}: residual column indices out of range or unsorted")
        rows, cols = torch.from_numpy(row_ids), torch.from_numpy(col_ids)
    return Record(k=k, c=c, a=at.T.contiguous(), b=b, mean=mean, res_rows=rows, res_cols=cols, res_vals=vals, basis=basis,
                  quant=quant, a_scale=a_scale, b_scale=b_scale)
