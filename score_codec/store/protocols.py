"""The reader interface that the store's helpers (dense decode, statistics, verification) rely on.

Typing against this protocol instead of :class:`~score_codec.store.reader.LabelStore` keeps the helpers
free of imports of the reader, which imports them (no import circle).
"""
from __future__ import annotations

from typing import Any, Dict, Protocol

import numpy as np
import torch

__all__ = ["StoreTables"]


class StoreTables(Protocol):
    """What an open store exposes: its path, index tables and per-record access."""

    path: str
    num_classes: int
    index: np.ndarray          # IMAGE_INDEX_DTYPE (N,)
    basis_table: np.ndarray    # BASIS_INDEX_DTYPE (M,)
    ks: np.ndarray             # (N,) int64 rows per image
    row_start: np.ndarray      # (N,) int64 first global row of each image
    encoding: Dict[str, Any]
    manifest: Dict[str, Any]

    def __len__(self) -> int: ...

    def record(self, i: int) -> Any: ...

    def basis(self, b: int) -> torch.Tensor: ...

    def basis_mean(self, b: int) -> Any: ...

    basis_full_rank: np.ndarray   # (M,) rows of each basis including its ancestors

    @property
    def aug(self) -> Any: ...

    @property
    def aug_reader(self) -> Any: ...
