"""Common reader interface and the format registry.

Every dump family is a :class:`DumpReader` subclass registered under its name in :data:`FORMATS`.  A
reader streams :class:`BatchRecord` objects (one per dump file: its logits and its rows of augmentation
metadata) so memory never holds more than one file; :func:`score_codec.formats.contents.read_dump`
turns the stream into per-image (K, C) matrices through an on-disk scratch file.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Tuple, Type

import numpy as np

from ..errors import FormatError, InputError
from ..store.meta import BATCH_DTYPE, IMAGE_DTYPE, ROW_DTYPE

__all__ = ["BatchRecord", "DumpReader", "FORMATS", "register_format", "numbered", "new_rows", "class_labels",
           "logits_finite"]

log = logging.getLogger(__name__)

#: name -> reader class; filled by :func:`register_format`.
FORMATS: Dict[str, Type["DumpReader"]] = {}


def register_format(cls: Type["DumpReader"]) -> Type["DumpReader"]:
    """Class decorator: add a reader to :data:`FORMATS` under ``cls.name``."""
    FORMATS[cls.name] = cls
    return cls


@dataclass
class BatchRecord:
    """One dump file's worth of rows.

    Attributes:
        source: the file it came from (for messages).
        logits: (B, C) float16 or float32 teacher logits as stored.
        rows: ROW_DTYPE (B,); ``aug`` is assigned later (-1 here).
        batch: BATCH_DTYPE record (shape ()) or None for batch-less formats.
    """

    source: str
    logits: np.ndarray
    rows: np.ndarray
    batch: Optional[np.ndarray] = None


def logits_finite(logits: np.ndarray) -> bool:
    """True when no entry of a float16 / float32 array is NaN or Inf.

    float16 is tested on its bits (exponent all ones means Inf or NaN): numpy has no vectorised float16
    ``isfinite``, and the bit test avoids widening every file's logits to float32."""
    if logits.dtype == np.float16:
        return not bool(((logits.view(np.uint16) & 0x7C00) == 0x7C00).any())
    return bool(np.isfinite(logits).all())


def new_rows(n: int) -> np.ndarray:
    """A ROW_DTYPE (n,) table with the 'absent' defaults (aug -1, mix_index -1)."""
    rows = np.zeros(n, ROW_DTYPE)
    rows["aug"] = -1
    rows["mix_index"] = -1
    return rows


def new_batch(epoch: int, batch: int, size: int) -> np.ndarray:
    """A BATCH_DTYPE record with no mixing (lam NaN, box -1); row_start is set by the assembler."""
    b = np.zeros((), BATCH_DTYPE)
    b["epoch"], b["batch"], b["size"] = epoch, batch, size
    b["mix_lam"] = np.nan
    b["mix_bbox"] = -1
    return b


def numbered(directory: str, pattern: str) -> List[Tuple[int, str]]:
    """Entries of ``directory`` whose names fully match ``pattern`` (one integer group), sorted by that
    number (``batch_10`` after ``batch_9``); other entries are ignored, never counted."""
    rx = re.compile(pattern)
    out = []
    with os.scandir(directory) as it:
        for e in it:
            m = rx.fullmatch(e.name)
            if m:
                out.append((int(m.group(1)), e.path))
    out.sort()
    return out


def class_labels(n: int, num_classes: int, labels: Optional[np.ndarray] = None,
                 ipc: Optional[int] = None) -> Tuple[np.ndarray, str]:
    """Class of every dataset index (int64 (n,), -1 unknown) and a sentence saying where it came from.

    ``labels`` (an ImageFolder's targets) wins; else ``ipc`` (class = n // IPC, SRe2L's synthetic-set
    order); else IPC = n / C when that divides exactly.
    """
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise InputError(f"--images has {len(labels)} images but the dump indexes {n}")
        return labels, "classes from the --images folder"
    if ipc is not None:
        if ipc <= 0 or n % ipc:
            raise InputError(f"--ipc {ipc} does not divide the dump's {n} images")
        return np.arange(n, dtype=np.int64) // ipc, f"classes from --ipc {ipc} (class = index // {ipc})"
    if num_classes > 0 and n % num_classes == 0:
        ipc = n // num_classes
        return np.arange(n, dtype=np.int64) // ipc, (f"inferred IPC = {n} images / {num_classes} classes = {ipc} "
                                                      f"(class = index // {ipc}); pass --images or --ipc to override")
    return np.full(n, -1, np.int64), f"classes unknown ({n} images is not a multiple of {num_classes} classes)"


class DumpReader:
    """Base class of a dump-family reader.

    Subclasses set ``name`` / ``description`` / ``priority`` (lower is tried first by ``--format auto``)
    and implement :meth:`detect` and :meth:`batches`.  After :meth:`batches` is exhausted,
    ``num_images``, ``num_classes``, :meth:`labels`, :meth:`images` and ``attrs`` are final.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    priority: ClassVar[int] = 100
    #: what one item of :meth:`batches` is, in progress bars (:meth:`num_files` counts them)
    unit: ClassVar[str] = "file"

    def __init__(self, path: str, *, num_classes: Optional[int] = None, labels: Optional[np.ndarray] = None,
                 ipc: Optional[int] = None, seed: int = 42, sampler_draws: int = 2, check_mapping: bool = True,
                 **options: Any) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise InputError(f"{self.path}: no such dump file or directory")
        self.expected_classes = num_classes
        self.user_labels = labels
        self.ipc = ipc
        self.seed = int(seed)
        self.sampler_draws = int(sampler_draws)
        self.check_mapping = check_mapping
        self.options = options
        self.num_images = 0
        self.num_classes = 0
        self.attrs: Dict[str, Any] = {"format": self.name}
        self.label_note = ""
        # scan mode (set by contents.scan_dump, whose second pass reads and checks every file): files are
        # memory-mapped and logit values are not checked, so a metadata pass reads little beyond the pickles
        self.scan_only = False

    @classmethod
    def detect(cls, path: str) -> bool:  # pragma: no cover - abstract
        """Cheap test: does ``path`` look like this family?"""
        raise NotImplementedError

    def summary(self) -> str:
        """One line describing what was found (shown by ``encode`` under ``--format auto``)."""
        return self.description

    def num_files(self) -> int:
        """Number of files :meth:`batches` will read (for progress bars)."""
        return 0

    def batches(self) -> Iterator[BatchRecord]:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self) -> np.ndarray:
        """Class per image, int64 (num_images,), -1 unknown (valid after streaming)."""
        labels, self.label_note = class_labels(self.num_images, self.num_classes, self.user_labels, self.ipc)
        return labels

    def images(self) -> np.ndarray:
        """IMAGE_DTYPE (num_images,): sizes unknown (0) unless a format stores them."""
        tab = np.zeros(self.num_images, IMAGE_DTYPE)
        tab["label"] = self.labels()
        return tab

    def check_logits(self, logits: np.ndarray, source: str) -> None:
        """Shape, dtype, class count and (unless ``scan_only``) finiteness of one file's logits; raises
        naming the file/row."""
        if logits.ndim != 2:
            raise FormatError(f"{source}: logits must be (B, C), found shape {logits.shape}")
        if logits.dtype not in (np.float16, np.float32):
            raise FormatError(f"{source}: logits must be float16 or float32, found {logits.dtype}")
        c = logits.shape[1]
        if self.expected_classes is not None and c != self.expected_classes:
            raise InputError(f"{source}: expected {self.expected_classes} classes (--num-classes), found C={c}")
        if self.num_classes and c != self.num_classes:
            raise FormatError(f"{source}: expected C={self.num_classes} like the earlier files, found C={c}")
        self.num_classes = c
        if not self.scan_only:
            self.check_values(logits, source)

    @staticmethod
    def check_values(logits: np.ndarray, source: str) -> None:
        """InputError naming the file, row and class of the first NaN/Inf logit."""
        if not logits_finite(logits):
            r, k = (int(v) for v in np.argwhere(~np.isfinite(logits))[0])
            raise InputError(f"{source}: row {r}, class {k}: logit is {logits[r, k]} (NaN/Inf logits cannot be encoded)")
