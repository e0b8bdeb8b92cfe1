"""G-VBSM (7-item lists) and EDC (8-item lists) dumps: SRe2L layout with stored dataset indices.

G-VBSM appends ``index`` (int64 [B], dataset indices); EDC appends ``index`` and ``indices_status``
([B, 2, 2], the patch-shuffle ids, all zero when relabelled with ``ap_shuffle=False``).  Non-zero
``indices_status`` blocks are kept in ``attrs`` so they write back exactly.
"""
from __future__ import annotations

from typing import Any, List

import numpy as np
import torch

from ..errors import FormatError
from .base import register_format
from .batchfile import merge_style
from .sre2l import HEAD, EpochDumpReader

__all__ = ["GVBSMReader", "EDCReader"]


class _IndexedReader(EpochDumpReader):
    """Rows map to images through item 6 (int [B] dataset indices)."""

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.attrs["mapping"] = "stored"
        self._max = -1

    def map_rows(self, epoch: int, batch: int, rows: np.ndarray, items: List[Any], path: str) -> None:
        idx = items[6]
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32) or tuple(idx.shape) != (len(rows),):
            raise FormatError(f"{path}: item 6 (index) must be an int64 tensor [{len(rows)}], found "
                              f"{getattr(idx, 'dtype', type(idx).__name__)} {list(getattr(idx, 'shape', []))}")
        merge_style(self.attrs["style"], {"index": str(idx.dtype).replace("torch.", "")}, path)
        rows["image"] = idx.numpy()
        if len(rows):
            self._max = max(self._max, int(rows["image"].max()))
        self.num_images = self._max + 1
        self.attrs["num_images"] = self.num_images


@register_format
class GVBSMReader(_IndexedReader):
    """G-VBSM relabel dumps: ``[... logits, index]``."""

    name = "gvbsm"
    description = "G-VBSM dump (epoch_e/batch_b.tar, stored indices)"
    priority = 45
    items = 7
    layout_desc = HEAD[:-1] + ", index]"


@register_format
class EDCReader(_IndexedReader):
    """EDC relabel dumps: ``[... logits, index, indices_status]``."""

    name = "edc"
    description = "EDC dump (epoch_e/batch_b.tar, stored indices + shuffle ids)"
    priority = 45
    items = 8
    layout_desc = HEAD[:-1] + ", index, indices_status]"

    def map_rows(self, epoch: int, batch: int, rows: np.ndarray, items: List[Any], path: str) -> None:
        super().map_rows(epoch, batch, rows, items, path)
        st = items[7]
        if not isinstance(st, torch.Tensor) or st.ndim < 1 or st.shape[0] != len(rows):
            raise FormatError(f"{path}: item 7 (indices_status) must be a tensor [{len(rows)}, ...], found "
                              f"{getattr(st, 'shape', type(st).__name__)}")
        merge_style(self.attrs["style"], {"indices_status": str(st.dtype).replace("torch.", ""),
                                          "indices_status_shape": "x".join(str(d) for d in st.shape[1:])}, path)
        if st.numel() and bool((st != 0).any()):
            self.attrs.setdefault("edc_indices_status", {})[f"{epoch}/{batch}"] = st.tolist()
