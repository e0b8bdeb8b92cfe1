"""Augmentation metadata stored losslessly next to the label factors.

A label dump is a sequence of *rows*: the teacher's output for one augmented view.  Rows are grouped
into *batches* (one file of an SRe2L dump; the unit that CutMix / Mixup act on) and every row belongs
to one *image*, whose label matrix holds it at row ``aug``.  Three numpy structured tables describe
this, in the on-disk dtypes of docs/FORMAT.md:

* ``rows``    one entry per stored row, in dump order (epoch, batch, position);
* ``batches`` one entry per batch, in dump order;
* ``images``  one entry per image (source size and class).

Formats that have no batches (FKD original: one file per image) use ``epoch = aug``, ``batch = -1``
and an empty ``batches`` table.  ``attrs`` is a JSON-serialisable dict for whatever a format needs to
write its files back bit-exactly (source dtypes, seeds, torch version, ...).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict

import numpy as np

from ..errors import InputError

__all__ = ["ROW_DTYPE", "AUG_CHUNK_DTYPE", "BATCH_DTYPE", "IMAGE_DTYPE", "MIX_NONE", "MIX_CUTMIX", "MIX_MIXUP", "AugMeta"]

#: One stored row.  ``coords`` are the normalised crop box (top/H, left/W, height/H, width/W) exactly as
#: the dump holds them (float32 bit patterns are kept); ``mix_index`` is the partner *position within
#: the batch* (-1: no mixing).
ROW_DTYPE = np.dtype(
    [
        ("image", "<i8"),
        ("aug", "<i4"),
        ("epoch", "<i4"),
        ("batch", "<i4"),
        ("pos", "<i4"),
        ("coords", "<f4", (4,)),
        ("flip", "u1"),
        ("mix_index", "<i4"),
    ]
)
#: One chunk of the compressed row table (format version 4): ``rows`` consecutive rows whose byte-shuffled,
#: zstd-compressed bytes lie at ``offset`` in the row blob (``length`` bytes, CRC-32 ``crc32``).
AUG_CHUNK_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("rows", "<u4"), ("crc32", "<u4")])

MIX_NONE, MIX_CUTMIX, MIX_MIXUP = 0, 1, 2

#: One batch.  ``mix_lam`` is NaN and ``mix_bbox`` is (-1,-1,-1,-1) when absent; the box is
#: (row0, col0, row1, col1) on the crop, used as ``x[:, :, row0:row1, col0:col1]``.
BATCH_DTYPE = np.dtype(
    [
        ("epoch", "<i4"),
        ("batch", "<i4"),
        ("row_start", "<i8"),
        ("size", "<i4"),
        ("mix_type", "u1"),
        ("mix_lam", "<f8"),
        ("mix_bbox", "<i4", (4,)),
    ]
)

#: One image: source height and width in pixels (0 when unknown) and class (-1 when unknown).
IMAGE_DTYPE = np.dtype([("height", "<i4"), ("width", "<i4"), ("label", "<i4")])


def _as_table(x: Any, dtype: np.dtype, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != dtype:
        try:
            arr = arr.astype(dtype)
        except (TypeError, ValueError) as exc:
            raise InputError(f"augmentation metadata table {name!r}: expected dtype {dtype}, found {arr.dtype}") from exc
    if arr.ndim != 1:
        raise InputError(f"augmentation metadata table {name!r}: expected 1-D, found shape {arr.shape}")
    return arr


@dataclass
class AugMeta:
    """Lossless augmentation metadata of a whole store (see module docstring)."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, ROW_DTYPE))
    batches: np.ndarray = field(default_factory=lambda: np.zeros(0, BATCH_DTYPE))
    images: np.ndarray = field(default_factory=lambda: np.zeros(0, IMAGE_DTYPE))
    attrs: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rows = _as_table(self.rows, ROW_DTYPE, "rows")
        self.batches = _as_table(self.batches, BATCH_DTYPE, "batches")
        self.images = _as_table(self.images, IMAGE_DTYPE, "images")
        try:
            json.dumps(self.attrs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"augmentation metadata attrs must be JSON-serialisable: {exc}") from exc

    @property
    def empty(self) -> bool:
        return len(self.rows) == 0 and len(self.batches) == 0 and len(self.images) == 0

    def validate(self, ks: np.ndarray) -> None:
        """Check the tables against the per-image row counts ``ks`` (shape (N,), int).

        Raises :class:`InputError` naming the first inconsistency.
        """
        n = len(ks)
        if len(self.images) not in (0, n):
            raise InputError(f"metadata has {len(self.images)} images, the labels have {n}")
        if len(self.rows) == 0:
            return
        if int(np.sum(ks)) != len(self.rows):
            raise InputError(f"metadata has {len(self.rows)} rows, the labels have {int(np.sum(ks))}")
        img = self.rows["image"]
        if img.min() < 0 or img.max() >= n:
            raise InputError(f"metadata row image ids must lie in [0, {n}), found [{img.min()}, {img.max()}]")
        aug = self.rows["aug"]
        bad = (aug < 0) | (aug >= ks[img])
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise InputError(f"metadata row {r}: aug {aug[r]} outside image {img[r]}'s {ks[img[r]]} rows")
        # every (image, aug) pair exactly once
        key = img.astype(np.int64) * (int(ks.max()) + 1) + aug
        if len(np.unique(key)) != len(key):
            raise InputError("metadata rows name some (image, aug) pair more than once")
        if len(self.batches):
            end = self.batches["row_start"] + self.batches["size"]
            if self.batches["row_start"][0] != 0 or end[-1] != len(self.rows) or np.any(end[:-1] != self.batches["row_start"][1:]):
                raise InputError("metadata batches must tile the rows table contiguously in order")
            if (self.batches["size"] < 1).any() or not np.isin(self.batches["mix_type"], (MIX_NONE, MIX_CUTMIX, MIX_MIXUP)).all():
                raise InputError("metadata batches need size >= 1 and mix_type 0 (none), 1 (cutmix) or 2 (mixup)")
            size_of_row = np.repeat(self.batches["size"].astype(np.int64), self.batches["size"].astype(np.int64))
            mix = self.rows["mix_index"]
            bad = (mix < -1) | (mix >= size_of_row)
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise InputError(f"metadata row {r}: mix partner position {mix[r]} outside its batch of {size_of_row[r]}")
        if (self.rows["flip"] > 1).any():
            raise InputError("metadata flip values must be 0 or 1")

    def image_rows(self, i: int) -> np.ndarray:
        """Rows of image ``i`` ordered by ``aug`` (shape (K_i,), ROW_DTYPE)."""
        sel = self.rows[self.rows["image"] == i]
        return sel[np.argsort(sel["aug"], kind="stable")]
