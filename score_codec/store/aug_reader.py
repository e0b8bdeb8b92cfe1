"""Lazy access to a store's augmentation metadata (``/aug``): attributes, batches, one epoch's rows.

A reader process need not hold the whole row table (45 bytes per row: 0.68 GB at ImageNet-1K IPC 50 with
300 epochs): rows are in dump order, epoch-major, so one epoch's rows are a contiguous range of the table,
read through the store's table of contents: from the compressed chunks that cover it (format version 4,
``/aug/row_chunks``), or by offset from ``/aug/rows`` (version 3), or, for stores without a table of
contents opened with ``allow_unchecked``, with h5py.  The small tables (batches, images) and the attributes
are read once.  Stores whose rows are not epoch-contiguous (per-image formats such as FKD) fall back to
reading the whole table once.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Tuple

import h5py
import numpy as np

from ..errors import StoreError
from .aug_chunks import ChunkedRows
from .header import TocFile, parse_json
from .integrity import check_dataset_size
from .layout import CHUNKED_AUG_VERSION
from .meta import AUG_CHUNK_DTYPE, BATCH_DTYPE, IMAGE_DTYPE, ROW_DTYPE, AugMeta

__all__ = ["AugReader"]

_LOW_LEVEL = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError)


class AugReader:
    """Per-process view of ``/aug`` in the HDF5 file ``path`` (opened per call, so safe after fork): read
    through its table of contents ``toc`` when given, else with h5py (stores without one).  ``version``:
    the store's format version (from :data:`~score_codec.store.layout.CHUNKED_AUG_VERSION` on, the rows
    are compressed chunks)."""

    def __init__(self, path: str, toc: Optional[TocFile] = None, verify_checksums: bool = True,
                 version: Optional[int] = None) -> None:
        self.path = path
        self.toc = toc
        self.verify = verify_checksums
        self.chunked = toc is not None and isinstance(version, int) and version >= CHUNKED_AUG_VERSION
        self._chunks: Optional[ChunkedRows] = None
        self._small: Optional[Tuple[np.ndarray, np.ndarray, Dict[str, Any], int]] = None
        self._epochs: Optional[Dict[int, Tuple[int, int]]] = None
        self._cache: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._cache_offset = 0

    def _read(self, fn):
        try:
            with h5py.File(self.path, "r") as f:
                return fn(f["aug"])
        except _LOW_LEVEL as exc:
            raise StoreError(f"{self.path}: damaged augmentation metadata ({type(exc).__name__}: {exc})") from None

    def _load_small(self):
        if self._small is None and self.toc is not None:
            t = self.toc
            aug = t.attrs.get("/aug")
            if not isinstance(aug, dict) or "attrs" not in aug:
                raise StoreError(f"{self.path}: the table of contents has no /aug attributes")
            attrs = parse_json(aug["attrs"], f"{self.path}: /aug attrs")
            if not isinstance(attrs, dict):
                raise StoreError(f"{self.path}: /aug attrs is not a JSON object")
            n = len(self._row_chunks()) if self.chunked else t.section("aug/rows", ROW_DTYPE).length
            self._small = (t.table("aug/batches", BATCH_DTYPE, self.verify), t.table("aug/images", IMAGE_DTYPE, self.verify),
                           attrs, n)
        if self._small is None:
            def read(g):
                for name in ("rows", "batches", "images"):   # sizes checked against the file before any read
                    check_dataset_size(g[name], f"{self.path}: /aug/{name}")
                batches = g["batches"][()] if len(g["batches"]) else np.zeros(0, BATCH_DTYPE)
                images = g["images"][()] if len(g["images"]) else np.zeros(0, IMAGE_DTYPE)
                return batches, images, json.loads(g.attrs["attrs"]), int(g["rows"].shape[0])
            self._small = self._read(read)
        return self._small

    def _row_chunks(self) -> ChunkedRows:
        """The compressed row table of a version-4 store (its chunk table read and checked once)."""
        if self._chunks is None:
            t = self.toc
            blob = t.section("aug/row_blob", np.dtype("u1"))
            table = t.table("aug/row_chunks", AUG_CHUNK_DTYPE, self.verify)
            self._chunks = ChunkedRows(f"{self.path}: /aug/row_blob", table, blob.nbytes,
                                       lambda off, n: t.pread(blob.offset + off, n, "/aug/row_blob"), self.verify)
        return self._chunks

    @property
    def stored_bytes(self) -> int:
        """Bytes the metadata takes in the file: the row table as stored (compressed in version 4), the
        batch and image tables."""
        if self.chunked:
            rows = self.toc.section("aug/row_blob", np.dtype("u1")).nbytes + \
                self.toc.section("aug/row_chunks", AUG_CHUNK_DTYPE).nbytes
        else:
            rows = self.num_rows * ROW_DTYPE.itemsize
        return int(rows + self.batches.nbytes + self.images.nbytes)

    @property
    def batches(self) -> np.ndarray:
        return self._load_small()[0]

    @property
    def images(self) -> np.ndarray:
        return self._load_small()[1]

    @property
    def attrs(self) -> Dict[str, Any]:
        return self._load_small()[2]

    @property
    def num_rows(self) -> int:
        return self._load_small()[3]

    def epoch_range(self, epoch: int) -> Optional[Tuple[int, int]]:
        """[start, stop) of ``epoch``'s rows in ``/aug/rows``, or None when epochs are not contiguous."""
        if self._epochs is None:
            b = self.batches
            ranges: Dict[int, Tuple[int, int]] = {}
            ok = len(b) > 0 and bool(np.all(np.diff(b["epoch"]) >= 0))
            if ok:
                ends = b["row_start"] + b["size"]
                for e in np.unique(b["epoch"]):
                    sel = np.flatnonzero(b["epoch"] == e)
                    ranges[int(e)] = (int(b["row_start"][sel[0]]), int(ends[sel[-1]]))
            self._epochs = ranges if ok else {}
        return self._epochs.get(int(epoch)) if self._epochs else None

    def epoch_rows(self, epoch: int) -> Tuple[np.ndarray, int]:
        """(``ROW_DTYPE`` rows of ``epoch`` in dump order, offset of the first in ``/aug/rows``).

        Without contiguous epochs: the rows whose ``aug == epoch`` (offset -1: positions are not a slice)."""
        if self._cache[0] == epoch and self._cache[1] is not None:
            return self._cache[1], self._cache_offset
        rng = self.epoch_range(epoch)
        if rng is not None and self.chunked:
            rows = self._row_chunks().rows(*rng)
            offset = rng[0]
        elif rng is not None and self.toc is not None:
            rows = self.toc.table("aug/rows", ROW_DTYPE, self.verify, *rng)
            offset = rng[0]
        elif rng is not None:
            rows = self._read(lambda g: g["rows"][rng[0]:rng[1]])
            offset = rng[0]
        else:
            allrows = self.all_rows()
            rows, offset = allrows[allrows["aug"] == epoch], -1
        if rows.dtype != ROW_DTYPE:
            raise StoreError(f"{self.path}: /aug/rows has dtype {rows.dtype}, expected {ROW_DTYPE}")
        self._cache, self._cache_offset = (epoch, rows), offset
        return rows, offset

    def all_rows(self) -> np.ndarray:
        self._load_small()   # checks the table's size first
        if self.chunked:
            return self._row_chunks().all()
        if self.toc is not None:
            return self.toc.table("aug/rows", ROW_DTYPE, self.verify)
        rows = self._read(lambda g: g["rows"][()] if len(g["rows"]) else np.zeros(0, ROW_DTYPE))
        if rows.dtype != ROW_DTYPE:
            raise StoreError(f"{self.path}: /aug/rows has dtype {rows.dtype}, expected {ROW_DTYPE}")
        return rows

    def full(self) -> AugMeta:
        """The whole metadata (every row) as an :class:`AugMeta`."""
        return AugMeta(rows=self.all_rows(), batches=self.batches, images=self.images, attrs=self.attrs)
