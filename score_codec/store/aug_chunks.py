"""The augmentation row table stored as compressed chunks (format version 4; docs/FORMAT.md section 6).

A row is 45 bytes, and a store coded at 100x or more holds fewer label bytes per row than that (a
1000-class fp16 row is 2,000 bytes; at 100x its label costs 20).  Most row fields barely change from row to
row (epoch, batch, position, the high bytes of image ids) and a crop box's float32 coordinates share their
sign and exponent bytes, so the table is cut into chunks of consecutive rows, each chunk's bytes are
transposed (byte j of every row, then byte j + 1, ...: a byte shuffle over the whole record) and
zstd-compressed.  One epoch's rows (a contiguous range in dump order) decode from the chunks that cover
it, so a DataLoader worker never inflates the whole table.

The reader trusts nothing in the chunk table: every chunk must lie inside the blob, hold between 1 and
:data:`MAX_CHUNK_ROWS` rows, and its frame must declare exactly ``rows * 45`` bytes and hold nothing after
it (:func:`~score_codec.store.record.inflate`, as for records); the
whole table may inflate to at most the records' expansion limit times the blob (plus a fixed allowance),
so a small forged file cannot make a reader allocate without bound.
"""
from __future__ import annotations

import zlib
from typing import List, Optional, Tuple

import numpy as np
import zstandard

from ..errors import CorruptRecordError, SizeLimitError, StoreError
from .meta import AUG_CHUNK_DTYPE, ROW_DTYPE
from .record import FREE_RAW_BYTES, ZSTD_MAX_EXPANSION, inflate

__all__ = ["CHUNK_ROWS", "MAX_CHUNK_ROWS", "ZSTD_LEVEL", "encode_rows", "ChunkedRows"]

#: rows per chunk a writer uses (the last chunk may hold fewer): ~3 MB inflated, one or two per epoch at
#: ImageNet scale
CHUNK_ROWS = 65536
#: the most rows a reader accepts in one chunk (caps what one chunk can inflate to)
MAX_CHUNK_ROWS = 2**20
#: zstd level of the chunks: higher levels save a few percent at several times the encode time
ZSTD_LEVEL = 3
_ROW = ROW_DTYPE.itemsize


def _shuffle(rows: np.ndarray) -> bytes:
    return np.ascontiguousarray(rows, ROW_DTYPE).view(np.uint8).reshape(len(rows), _ROW).T.tobytes()


def encode_rows(rows: np.ndarray, chunk_rows: int = CHUNK_ROWS, level: int = ZSTD_LEVEL) -> Tuple[np.ndarray, bytes]:
    """Compress a row table.

    Args:
        rows: (R,) ``ROW_DTYPE`` rows in dump order.
        chunk_rows: rows per chunk (the last may hold fewer), 1 to :data:`MAX_CHUNK_ROWS`.
        level: zstd level.

    Returns:
        (chunk table (ceil(R / chunk_rows),) ``AUG_CHUNK_DTYPE``, blob): chunk j's bytes are
        ``blob[offset:offset + length]`` and hold its ``rows`` rows; ``crc32`` covers those bytes.
    """
    if not 1 <= chunk_rows <= MAX_CHUNK_ROWS:
        raise ValueError(f"chunk_rows must be in [1, {MAX_CHUNK_ROWS}], got {chunk_rows}")
    rows = np.asarray(rows, ROW_DTYPE)
    cctx = zstandard.ZstdCompressor(level=level)
    parts: List[bytes] = []
    table = np.zeros((len(rows) + chunk_rows - 1) // chunk_rows, AUG_CHUNK_DTYPE)
    off = 0
    for j, s in enumerate(range(0, len(rows), chunk_rows)):
        frame = cctx.compress(_shuffle(rows[s:s + chunk_rows]))
        table[j] = (off, len(frame), min(chunk_rows, len(rows) - s), zlib.crc32(frame))
        parts.append(frame)
        off += len(frame)
    return table, b"".join(parts)


class ChunkedRows:
    """Read access to a compressed row table: ``len()``, :meth:`rows` (a range) and :meth:`all`.

    Args:
        where: names the table in error messages (file and dataset).
        table: the chunk table, ``AUG_CHUNK_DTYPE``.
        blob_bytes: the blob's length in bytes.
        read: ``read(offset, length)`` returns ``length`` bytes of the blob at ``offset``.
        verify: check each chunk's CRC-32 before inflating it.

    Raises:
        StoreError: a chunk outside the blob, or with no rows.
        SizeLimitError: a chunk claiming more than :data:`MAX_CHUNK_ROWS` rows, or rows that would inflate
            past ``FREE_RAW_BYTES + ZSTD_MAX_EXPANSION * blob_bytes``.
    """

    def __init__(self, where: str, table: np.ndarray, blob_bytes: int, read, verify: bool = True) -> None:
        self.where, self.table, self.read, self.verify = where, table, read, verify
        if table.dtype != AUG_CHUNK_DTYPE:
            raise StoreError(f"{where}: chunk table has dtype {table.dtype}, expected {AUG_CHUNK_DTYPE}")
        n = table["rows"].astype(np.int64)
        end = table["offset"].astype(np.uint64) + table["length"].astype(np.uint64)
        bad = np.flatnonzero((n < 1) | (end > np.uint64(blob_bytes)) | (end < table["offset"]))
        if len(bad):
            j = int(bad[0])
            raise StoreError(f"{where}: chunk {j} ({int(n[j])} rows at blob bytes [{int(table['offset'][j])}, "
                             f"+{int(table['length'][j])})) does not lie inside the {blob_bytes}-byte blob or holds "
                             f"no rows")
        big = np.flatnonzero(n > MAX_CHUNK_ROWS)
        if len(big):
            raise SizeLimitError(f"{where}: chunk {int(big[0])} claims {int(n[big[0]])} rows, more than the "
                                 f"{MAX_CHUNK_ROWS} a chunk may hold")
        self.starts = np.concatenate([[0], np.cumsum(n)])
        cap = FREE_RAW_BYTES + ZSTD_MAX_EXPANSION * int(blob_bytes)
        if int(self.starts[-1]) * _ROW > cap:
            raise SizeLimitError(f"{where}: {int(self.starts[-1])} rows ({int(self.starts[-1]) * _ROW} bytes) claimed "
                                 f"from a {blob_bytes}-byte blob, more than the {cap} bytes it may inflate to")
        self._last: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def chunk(self, j: int) -> np.ndarray:
        """The rows of chunk ``j``, (rows,) ``ROW_DTYPE`` (the last chunk inflated is kept)."""
        if self._last[0] == j and self._last[1] is not None:
            return self._last[1]
        e = self.table[j]
        n = int(e["rows"])
        buf = self.read(int(e["offset"]), int(e["length"]))
        if self.verify and zlib.crc32(buf) != int(e["crc32"]):
            raise CorruptRecordError(f"{self.where}: chunk {j} fails its crc32 check: expected {int(e['crc32']):08x}, "
                                     f"found {zlib.crc32(buf):08x}")
        # bounded by MAX_CHUNK_ROWS and the table's total cap: a regular chunk may compress past the
        # records' expansion limit
        raw = inflate(buf, n * _ROW, f"{self.where}: chunk {j} ({n} rows)", expansion_limit=False)
        rows = np.frombuffer(raw, np.uint8).reshape(_ROW, n).T.copy().view(ROW_DTYPE).reshape(n)
        self._last = (j, rows)
        return rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` of the table, ``ROW_DTYPE``."""
        if not 0 <= start <= stop <= len(self):
            raise StoreError(f"{self.where}: rows [{start}, {stop}) requested, the table has {len(self)}")
        if start == stop:
            return np.zeros(0, ROW_DTYPE)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        last = int(np.searchsorted(self.starts, stop, side="left")) - 1
        parts = [self.chunk(j)[max(start - int(self.starts[j]), 0):stop - int(self.starts[j])]
                 for j in range(first, last + 1)]
        return np.concatenate(parts)   # a copy: the cached chunk is never handed out

    def all(self) -> np.ndarray:
        """Every row, ``ROW_DTYPE``."""
        return self.rows(0, len(self))
