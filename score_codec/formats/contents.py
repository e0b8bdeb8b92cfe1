"""Read a whole dump into per-image label matrices through an on-disk scratch file (or scan it twice).

Rows arrive in dump order (epoch, batch, position) but the codec wants one (K_i, C) matrix per image,
which needs every epoch.  :func:`read_dump` streams one file at a time, appends its logits to a flat
(R, C) scratch file (dtype of the dump) and keeps only the small metadata tables in memory; the
:class:`DumpContents` it returns gathers image matrices from the memory-mapped scratch, and gives the
global codec (which codes each row on its own) the rows in dump order and a sample of files spread over
the dump for its basis.  Every dump file is read once.  :func:`scan_dump` is the alternative without a
scratch file: the metadata and a spread sample in one pass, and :meth:`DumpScan.logits` streams the files
a second time (twice the unpickling, no scratch copy of the dump's size).
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from ..progress import progress_bar

from ..errors import FormatError, InputError
from ..store.meta import BATCH_DTYPE, AugMeta
from .base import DumpReader
from .detect import open_reader

__all__ = ["DumpContents", "ScratchRows", "read_dump", "DumpScan", "scan_dump", "SpreadSample"]

log = logging.getLogger(__name__)


class SpreadSample:
    """Which files of a dump a basis sample keeps, decided as the files stream past: every ``stride``-th
    non-empty file, ``stride`` a power of two that doubles whenever the kept files pass ``2 * sample_rows``
    rows (while more than one is kept).  The result is the smallest such stride over the whole dump, so
    memory stays bounded without knowing the dump's size in advance.

    Attributes: ``stride``; ``kept``: {file number: rows} of the files kept so far.
    """

    def __init__(self, sample_rows: int) -> None:
        self.limit, self.stride, self.rows = 2 * int(sample_rows), 1, 0
        self.kept: Dict[int, int] = {}

    def offer(self, j: int, n: int) -> bool:
        """File number ``j`` (in dump order) holds ``n`` rows: True if the sample keeps it (for now)."""
        if j % self.stride or not n:   # an empty file adds nothing to the basis fit
            return False
        self.kept[j] = int(n)
        self.rows += int(n)
        while self.rows > self.limit and len(self.kept) > 1:
            self.stride *= 2
            self.kept = {i: m for i, m in self.kept.items() if i % self.stride == 0}
            self.rows = sum(self.kept.values())
        return j in self.kept


class DumpContents:
    """A dump read into scratch: per-image matrices + AugMeta + labels (close() deletes the scratch).

    Attributes:
        format: reader name; num_classes: C; ks: int64 (N,) rows per image; labels: int64 (N,);
        aug: AugMeta (rows in dump order, ``aug`` = occurrence of the image in dump order).
    """

    def __init__(self, reader: DumpReader, scratch_dir: str, scratch: np.ndarray, aug: AugMeta,
                 labels: np.ndarray, file_rows: Optional[Sequence[int]] = None) -> None:
        self.format = reader.name
        self.summary = reader.summary()
        self.label_note = reader.label_note
        self.num_classes = reader.num_classes
        self.aug = aug
        self.labels = labels
        self._dir = scratch_dir
        self._y = scratch
        #: rows of each dump file, in dump order (the scratch holds the files one after another)
        self.file_rows = np.asarray([len(aug.rows)] if file_rows is None else file_rows, dtype=np.int64)
        n = len(labels)
        img = aug.rows["image"]
        self.ks = np.bincount(img, minlength=n).astype(np.int64)
        # image-major order: row positions of (image, aug) pairs
        self._order = np.lexsort((aug.rows["aug"], img))
        self._start = np.concatenate([[0], np.cumsum(self.ks)])

    @property
    def row_logits(self) -> np.ndarray:
        """All rows (rows, C) in dump order, as read (a memory map of the scratch file)."""
        return self._y

    @property
    def scratch_rows(self) -> "ScratchRows":
        """All rows in dump order, read from the scratch file by ordinary reads when sliced (see
        :class:`ScratchRows`)."""
        return ScratchRows(self._y)

    def __len__(self) -> int:
        return len(self.ks)

    def spread_sample(self, sample_rows: int = 65_536) -> List[np.ndarray]:
        """Rows of files spread evenly over the dump, as (m, C) views of the scratch in the dump's dtype:
        the files :class:`SpreadSample` keeps (the sample :func:`scan_dump` keeps), without a second copy in
        memory."""
        starts = np.concatenate([[0], np.cumsum(self.file_rows)])
        rule = SpreadSample(sample_rows)
        for j, n in enumerate(self.file_rows.tolist()):
            rule.offer(j, n)
        return [self._y[starts[j]:starts[j + 1]] for j in sorted(rule.kept)]

    @property
    def num_images(self) -> int:
        return len(self.ks)

    def matrix(self, i: int) -> np.ndarray:
        """Image ``i``'s logits, (K_i, C) float32, rows ordered by aug."""
        return np.asarray(self._y[self._order[self._start[i]:self._start[i + 1]]], dtype=np.float32)

    def matrices(self, chunk_images: int = 256) -> Iterator[List[np.ndarray]]:
        """Chunks of consecutive images' (K_i, C) float32 matrices."""
        for s in range(0, self.num_images, chunk_images):
            e = min(s + chunk_images, self.num_images)
            block = np.asarray(self._y[np.sort(self._order[self._start[s]:self._start[e]])], dtype=np.float32)
            # the sort above reads the scratch sequentially; undo it per image
            pos = self._order[self._start[s]:self._start[e]]
            where = np.searchsorted(np.sort(pos), pos)
            block = block[where]
            yield [block[self._start[i] - self._start[s]:self._start[i + 1] - self._start[s]] for i in range(s, e)]

    def rows(self, image_ids: Sequence[int], view_ids: Sequence[int], device: str = "cpu") -> torch.Tensor:
        """Logits of (image, view) pairs: (B, C) float32 (the LabelStore.rows interface)."""
        img = np.asarray(image_ids, dtype=np.int64)
        aug = np.asarray(view_ids, dtype=np.int64)
        if np.any(aug >= self.ks[img]) or np.any(aug < 0):
            raise InputError("rows(): a view id is outside its image's rows")
        pos = self._order[self._start[img] + aug]
        return torch.from_numpy(np.asarray(self._y[pos], dtype=np.float32)).to(device)

    def close(self) -> None:
        """Delete the scratch file."""
        self._y = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "DumpContents":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ScratchRows:
    """A (rows, C) scratch file as an array-like: a slice is read with ordinary file reads, so a sequential pass
    over a scratch larger than memory leaves its pages in the page cache, not in the process (a memory map
    counts every page it touched as the process's own until the kernel reclaims it); an index array is
    gathered through the memory map.

    Attributes: ``shape``, ``ndim``, ``dtype`` as numpy's; ``filename``: the scratch file.
    """

    def __init__(self, mapped: np.memmap) -> None:
        self._map = mapped
        self.filename = mapped.filename
        self.shape, self.ndim, self.dtype = tuple(mapped.shape), 2, mapped.dtype
        self._row_bytes = int(mapped.shape[1]) * mapped.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return self._runs(np.asarray([start]), np.asarray([max(stop, start)]))
        idx = np.asarray(key)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            return np.asarray(self._map[key])
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self.shape[0]):
            raise IndexError(f"{self.filename}: row index outside 0..{self.shape[0] - 1}")
        # runs of consecutive rows (a dump file's rows are consecutive) are read with one call each
        cut = np.flatnonzero(np.diff(idx) != 1) + 1
        first = idx[np.concatenate([[0], cut])] if len(idx) else idx
        last = idx[np.concatenate([cut - 1, [len(idx) - 1]])] + 1 if len(idx) else idx
        return self._runs(first, last)

    def _runs(self, first: np.ndarray, stop: np.ndarray) -> np.ndarray:
        """Rows first[j]..stop[j]-1 of every run j, concatenated: (sum of run lengths, C)."""
        out = np.empty((int((stop - first).sum()), self.shape[1]), self.dtype)
        flat = out.reshape(-1).view(np.uint8)
        at = 0
        with open(self.filename, "rb") as fh:
            for a, b in zip(first.tolist(), stop.tolist()):
                n = (b - a) * self._row_bytes
                fh.seek(a * self._row_bytes)
                if fh.readinto(flat[at:at + n]) != n:
                    raise FormatError(f"{self.filename}: scratch file ended early (rows {a}..{b} wanted)")
                at += n
        return out


def _scan(reader: DumpReader, path: str, sink: Callable[[int, np.ndarray, str], None], progress: bool,
          desc: str) -> Tuple[AugMeta, np.ndarray]:
    """One pass over the dump's files: ``sink(file_number, logits, file)`` gets each file's logits; returns the
    metadata (``aug`` = occurrence of the image in dump order) and the image labels."""
    rows_l, batches_l = [], []
    dtype = None
    nrows = 0
    for j, rec in enumerate(progress_bar(reader.batches(), total=reader.num_files() or None, desc=desc, unit=reader.unit,
                                         enabled=progress)):
        if dtype is None:
            dtype = rec.logits.dtype
        elif rec.logits.dtype != dtype:
            raise FormatError(f"{rec.source}: logits are {rec.logits.dtype}, earlier files are {dtype} (mixed dump)")
        sink(j, rec.logits, rec.source)
        rows_l.append(rec.rows)
        if rec.batch is not None:
            b = rec.batch.copy()
            b["row_start"] = nrows
            batches_l.append(b)
        nrows += len(rec.rows)
    if nrows == 0:
        raise FormatError(f"{path}: the dump holds no rows")
    rows = np.concatenate(rows_l)
    n = reader.num_images
    img = rows["image"]
    if img.max() >= n or img.min() < 0:
        raise FormatError(f"{path}: rows name images {int(img.min())}..{int(img.max())}, the dump has {n} images")
    if n > nrows:
        # every image needs at least one row; a larger count comes from a damaged index or json
        raise FormatError(f"{path}: the dump claims {n} images but holds only {nrows} rows")
    # aug = how many earlier rows (in dump order) belong to the same image
    order = np.argsort(img, kind="stable")
    ks = np.bincount(img, minlength=n)
    starts = np.concatenate([[0], np.cumsum(ks)[:-1]])
    aug = np.empty(len(rows), np.int64)
    aug[order] = np.arange(len(rows)) - np.repeat(starts, ks)
    rows["aug"] = aug
    images = reader.images()
    meta = AugMeta(rows=rows, batches=np.array(batches_l, BATCH_DTYPE) if batches_l else np.zeros(0, BATCH_DTYPE),
                   images=images, attrs=reader.attrs)
    return meta, images["label"].astype(np.int64)


def read_dump(path: str, fmt: str = "auto", scratch_dir: Optional[str] = None, progress: bool = False,
              reader: Optional[DumpReader] = None, **options: Any) -> DumpContents:
    """Stream a dump into a :class:`DumpContents`.

    Args:
        path: the dump (directory or file).
        fmt: a name from :data:`FORMATS` or ``"auto"``.
        scratch_dir: where the scratch directory is made (default: the system temp dir); put it beside
            the destination so it lands on the same disk.
        progress: show a tqdm bar on stderr.
        options: reader options (num_classes, labels, ipc, seed, sampler_draws, ...).
    """
    reader = reader or open_reader(path, fmt, **options)
    tmp = tempfile.mkdtemp(prefix=".score-scratch-", dir=scratch_dir)
    try:
        raw = os.path.join(tmp, "logits.bin")
        dtypes, sizes = [], []

        def write(j: int, y: np.ndarray, source: str) -> None:
            if not dtypes:
                dtypes.append(y.dtype)
            sizes.append(len(y))
            if len(y):
                fh.write(np.ascontiguousarray(y).data)   # the array's own buffer: no bytes() copy of the file

        with open(raw, "wb") as fh:
            meta, labels = _scan(reader, path, write, progress, f"read {reader.name}")
        scratch = np.memmap(raw, dtype=dtypes[0], mode="r", shape=(len(meta.rows), reader.num_classes))
        return DumpContents(reader, tmp, scratch, meta, labels, sizes)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class DumpScan:
    """A dump scanned once without a scratch copy: metadata, labels and a sample of rows spread over the
    files; :meth:`logits` streams the files again in dump order.  For the global codec, which codes
    each row on its own and never needs an image's rows together.

    Attributes: as :class:`DumpContents` (``format``, ``num_classes``, ``ks``, ``labels``, ``aug``), plus
    ``sample``: blocks (m, C) in the dump's dtype, one per sampled file.
    """

    def __init__(self, path: str, fmt: str, options: Dict[str, Any], reader: DumpReader, meta: AugMeta,
                 labels: np.ndarray, sample: List[np.ndarray]) -> None:
        self.path, self._fmt, self._options = path, fmt, options
        self.format, self.summary, self.label_note = reader.name, reader.summary(), reader.label_note
        self.num_classes = reader.num_classes
        self.aug, self.labels, self.sample = meta, labels, sample
        self.ks = np.bincount(meta.rows["image"], minlength=len(labels)).astype(np.int64)
        self.num_images = len(labels)

    def logits(self, progress: bool = False) -> Iterator[np.ndarray]:
        """Each file's logits (B, C), as stored, in dump order (a second read of the dump); FormatError
        if the files no longer hold the rows the scan saw."""
        reader = open_reader(self.path, self._fmt, **self._options)
        at, image = 0, self.aug.rows["image"]
        for rec in progress_bar(reader.batches(), total=reader.num_files() or None, desc=f"encode {reader.name}",
                                unit=reader.unit, enabled=progress):
            if not np.array_equal(rec.rows["image"], image[at:at + len(rec.rows)]):
                raise FormatError(f"{rec.source}: rows differ from the first read of the dump (changed while encoding?)")
            at += len(rec.rows)
            yield rec.logits
        if at != len(image):
            raise FormatError(f"{self.path}: second read found {at} rows, the first {len(image)}")


def scan_dump(path: str, fmt: str = "auto", progress: bool = False, reader: Optional[DumpReader] = None,
              sample_rows: int = 65_536, **options: Any) -> DumpScan:
    """Scan a dump for :class:`DumpScan`.

    Keeps a sample of rows from files spread evenly over the dump (every m-th file; m doubles whenever the
    sample passes ``2 * sample_rows`` rows), so memory stays bounded without knowing the dump's size in
    advance: at most ``2 * sample_rows`` rows plus one file's, in the dump's dtype (fp16 at C = 1000 and
    the default: about 256 MiB). With files of similar size it keeps at least ``sample_rows`` rows (or
    the whole dump when smaller). ``reader``, if given, must have been opened with ``options``:
    :meth:`DumpScan.logits` opens the dump again with them.
    """
    reader = reader or open_reader(path, fmt, **options)
    rule = SpreadSample(sample_rows)
    kept: Dict[int, np.ndarray] = {}

    def keep(j: int, y: np.ndarray, source: str) -> None:
        if not rule.offer(j, len(y)):
            return
        reader.check_values(y, source)   # the scan checks no values but the sample's (it feeds the basis fit)
        kept[j] = np.array(y)   # a copy in the dump's dtype (fp16: half the memory)
        for i in set(kept) - set(rule.kept):   # files the sample dropped when its stride doubled
            del kept[i]

    reader.scan_only = True
    try:
        meta, labels = _scan(reader, path, keep, progress, f"scan {reader.name}")
    finally:
        reader.scan_only = False
    return DumpScan(path, reader.name, options, reader, meta, labels, [kept[j] for j in sorted(kept)])
