"""Encode a dump's rows in dump order with the global codec: no per-image regrouping of the logits.

A dump stores each image's rows in different files (one per epoch), so per-image codecs must regroup
the C-wide logits first.  With one global basis every row is coded on its own: this module scans the
rows sequentially in large chunks (one GEMM per chunk for the coefficients), keeps only the r-wide
coefficients (in RAM, or in a float32 scratch file beside the store when they are large) and regroups
those into per-image records at the end.  Memory stays at one chunk of C-wide rows.  Used by
``score-codec encode`` for ``--method global`` without a residual, on the rows of the dump's files parked
in a scratch file as they were read (each file is read once).
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ..progress import progress_bar

from ..codecs.base import all_finite, to_float32
from ..codecs.global_basis import BasisSet
from ..errors import InputError
from .encoder import EncodedChunk
from .record import pack_coefficient_records, pack_record

__all__ = ["encode_rows", "supports_rowwise", "RowBlocks"]

log = logging.getLogger(__name__)

#: coefficients larger than this go to a scratch file instead of RAM
SCRATCH_BYTES = 256 << 20


class RowBlocks:
    """Contiguous blocks of rows of a (rows, C) array as the "images" the basis is fitted on."""

    def __init__(self, rows: Any, size: int) -> None:
        self.rows, self.size = rows, size

    def __len__(self) -> int:
        return -(-len(self.rows) // self.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.rows[i * self.size:(i + 1) * self.size], dtype=np.float32)


def supports_rowwise(writer: Any) -> bool:
    """The row-wise path applies to the one-basis codec without a residual on a fresh (not resumed) store."""
    return writer.opts.method == "global" and writer.opts.residual == 0 and writer.num_images == 0


def _chunks(rows: Any, chunk_rows: int) -> Iterator[Tuple[int, np.ndarray]]:
    """(first row, block) pairs of about ``chunk_rows`` rows from an array, or from an iterable of blocks
    (merged so that each GEMM is large)."""
    if hasattr(rows, "shape"):
        for s in range(0, len(rows), chunk_rows):
            yield s, rows[s:s + chunk_rows]
        return
    buf, held, at = [], 0, 0
    for block in rows:
        buf.append(block)
        held += len(block)
        if held >= chunk_rows:
            yield at, np.concatenate(buf)
            at, buf, held = at + held, [], 0
    if buf:
        yield at, np.concatenate(buf)


def _pack_images(coef: Any, row_mean: Optional[np.ndarray], order: np.ndarray, starts: np.ndarray, ks: np.ndarray,
                 i0: int, i1: int, r: int, c: int, opts: Any, one_scale: bool = False) -> List[bytes]:
    """The records of images ``i0..i1``: their rows' coefficients gathered from ``coef`` (dump order) through
    ``order``; images with one row count are quantised as one batch (most dumps give every image K rows)."""
    kw = dict(basis=0, zstd_level=opts.zstd_level, shuffle=opts.shuffle, c=c, one_scale=one_scale)
    if i1 > i0 and (ks[i0:i1] == ks[i0]).all():
        idx = order[starts[i0]:starts[i1]]
        a = torch.from_numpy(np.ascontiguousarray(coef[idx, :r])).reshape(i1 - i0, int(ks[i0]), r)
        m = None if row_mean is None else torch.from_numpy(row_mean[idx]).reshape(i1 - i0, int(ks[i0]))
        return pack_coefficient_records(a, opts.quant, means=m, **kw)
    records = []
    for i in range(i0, i1):
        idx = order[starts[i]:starts[i + 1]]
        a = torch.from_numpy(np.ascontiguousarray(coef[idx, :r]))
        m = None if row_mean is None else torch.from_numpy(row_mean[idx])
        records.append(pack_record(a, None, opts.quant, mean=m, **kw))
    return records


def encode_rows(writer: Any, rows: Any, image: np.ndarray, aug: np.ndarray, ks: np.ndarray,
                labels: Optional[Sequence[int]] = None, head=None, chunk_rows: int = 4096,
                images_per_record_chunk: int = 1024, progress: bool = False,
                fit_on: Optional[Sequence[np.ndarray]] = None) -> None:
    """Encode rows in dump order into ``writer`` (a fresh global-codec StoreWriter).

    ``rows``: a (nrows, C) array, or an iterable of (m, C) blocks in dump order (read once: then the basis
    is fitted on ``fit_on``, blocks of rows spread over the dump).  ``image`` / ``aug`` (nrows,) say which
    image and row each dump row is; ``ks`` (N,) rows per image."""
    n, nrows, c = len(ks), len(image), int(writer.num_classes)
    if hasattr(rows, "shape") and (rows.ndim != 2 or int(rows.shape[1]) != c or len(rows) != nrows):
        raise InputError(f"rows have shape {tuple(rows.shape)}, expected ({nrows}, {c})")
    if writer.bases is None:
        if fit_on is not None:
            blocks: Any = list(fit_on)
            fit_ks = [len(b) for b in blocks]
        elif hasattr(rows, "shape"):
            blocks = RowBlocks(rows, 4096)
            fit_ks = [len(blocks[i]) if i == len(blocks) - 1 else 4096 for i in range(len(blocks))]
        else:
            raise InputError("encode_rows: rows given as blocks need fit_on (or a writer with fitted bases)")
        writer.fit(blocks, ks=fit_ks, num_images=n, head=head, total_rows=nrows)
    bases: BasisSet = writer.bases
    full, mean = bases.full(0)
    r = int(full.shape[0])
    codec, keep_mean = writer.codec, writer.opts.keep_mean
    tmp = None
    if nrows * r * 4 > SCRATCH_BYTES:
        fd, tmp = tempfile.mkstemp(prefix=".score-coef-", dir=os.path.dirname(os.path.abspath(writer.path)))
        os.close(fd)
        coef = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(nrows, max(r, 1)))
    else:
        coef = np.empty((nrows, max(r, 1)), dtype=np.float32)
    row_mean = np.empty(nrows, dtype=np.float32) if keep_mean else None
    try:
        total, seen = -(-nrows // chunk_rows), 0
        for s, block in progress_bar(_chunks(rows, chunk_rows), total=total, desc="encode rows", unit="chunk", enabled=progress):
            if block.ndim != 2 or block.shape[1] != c or s + len(block) > nrows:
                raise InputError(f"rows {s}..{s + len(block)}: block of shape {tuple(block.shape)} does not fit "
                                 f"({nrows}, {c})")
            y = to_float32(block, writer.device)
            if not all_finite(y):
                bad = int((~torch.isfinite(y)).any(1).nonzero()[0]) + s
                raise InputError(f"image {int(image[bad])}: non-finite logit (NaN or Inf) in its row {int(aug[bad])}")
            mu = y.mean(-1, keepdim=True)
            y = y - mu
            if keep_mean:
                row_mean[s:s + len(y)] = mu[:, 0].cpu().numpy()
            if r:
                coef[s:s + len(y)] = codec.coefficients(y[None], bases, 0)[0].cpu().numpy()
            seen = s + len(y)
        if nrows and seen != nrows:
            raise InputError(f"got {seen} rows, the metadata describes {nrows}")
        order = np.lexsort((aug, image))
        starts = np.concatenate([[0], np.cumsum(ks)])
        for i0 in progress_bar(range(0, n, images_per_record_chunk), desc="write records", unit="chunk", enabled=progress):
            i1 = min(n, i0 + images_per_record_chunk)
            records = _pack_images(coef, row_mean, order, starts, ks, i0, i1, r, c, writer.opts,
                                   codec.record_one_scale(full))
            k = (i1 - i0)
            chunk = EncodedChunk(records=records, ranks=[r] * k, nnz=[0] * k, bases={}, basis_of=[0] * k)
            writer.append_encoded(chunk, [int(x) for x in ks[i0:i1]], None if labels is None else list(labels[i0:i1]))
    finally:
        del coef
        if tmp is not None:
            os.remove(tmp)
