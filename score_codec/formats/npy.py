"""Plain ``.npy`` logit arrays of shape (N, K, C) (float16 or float32), read memory-mapped."""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ..errors import FormatError
from .base import BatchRecord, DumpReader, new_rows, register_format

__all__ = ["NpyReader"]


@register_format
class NpyReader(DumpReader):
    """A dense (N, K, C) array; no augmentation metadata beyond row order (aug = epoch = row)."""

    name = "npy"
    description = "dense .npy logits (N, K, C)"
    priority = 90
    unit = "image"

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isfile(path) and path.endswith(".npy")

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        try:
            self.y = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"{self.path}: not a readable .npy array ({exc})") from None
        if self.y.ndim != 3:
            raise FormatError(f"{self.path}: expected shape (N, K, C), found {self.y.shape}")
        if self.y.dtype not in (np.float16, np.float32):
            raise FormatError(f"{self.path}: expected float16/float32 logits, found {self.y.dtype}")
        self.num_images = int(self.y.shape[0])

    def num_files(self) -> int:
        return self.num_images

    def summary(self) -> str:
        return f"{self.description}: {self.y.shape}, {self.y.dtype}"

    def batches(self) -> Iterator[BatchRecord]:
        n, k, _ = self.y.shape
        for i in range(n):
            logits = np.asarray(self.y[i])
            self.check_logits(logits, f"{self.path}[{i}]")
            rows = new_rows(k)
            rows["image"], rows["epoch"], rows["batch"], rows["pos"] = i, np.arange(k), -1, np.arange(k)
            yield BatchRecord(f"{self.path}[{i}]", logits, rows, None)
