"""All of a store's factors as padded tensors: one gather and one batched matmul per batch of rows.

Per image the record stores ``A`` (K, r) and ``B`` (r, C); here every ``A`` row is one row of
``a`` (total rows, R) and every distinct ``B`` (per image, or a shared basis) one slice of ``b``
(M, R, C), zero-padded to the largest rank R.  Residual entries are kept per row, padded to the
largest per-row count.  Memory: 4 (R + 2 s) bytes per row plus 4 R C per distinct basis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .protocols import StoreTables

__all__ = ["DenseFactors", "dense_bytes", "rows_from_records"]


def _rmax(store: StoreTables) -> int:
    """Largest rank of any record or shared basis."""
    r = int(store.index["rank"].max()) if len(store) else 0
    return max(r, int(store.basis_full_rank.max()) if len(store.basis_table) else 0)


def dense_bytes(store: StoreTables) -> int:
    """Memory (bytes) that :meth:`DenseFactors.build` would take for ``store``."""
    rmax = _rmax(store)
    own = int((store.index["basis"] < 0).sum())
    rows = int(store.ks.sum())
    smax = int(store.index["nnz"].max()) if len(store) else 0  # an upper bound on entries per row
    return 4 * rows * (rmax + 3 * smax + 1) + 4 * rmax * store.num_classes * (own + len(store.basis_table))


def rows_from_records(store: StoreTables, image_ids: Sequence[int], aug_ids: Sequence[int]) -> torch.Tensor:
    """Decode (image, aug) pairs straight from their records, without the dense tables.

    Reads and parses each distinct image's record once per call: memory stays at one batch, at the
    cost of a record parse per image (used when the dense tables would be too large for a worker).
    """
    img = np.ascontiguousarray(image_ids, dtype=np.int64).reshape(-1)
    aug = np.ascontiguousarray(aug_ids, dtype=np.int64).reshape(-1)
    if img.shape != aug.shape:
        raise IndexError(f"{img.size} image ids but {aug.size} aug ids")
    out = torch.empty(len(img), store.num_classes)
    for i in np.unique(img):
        sel = np.flatnonzero(img == i)
        k = int(store.ks[i]) if 0 <= i < len(store) else 0
        if ((aug[sel] < 0) | (aug[sel] >= k)).any():
            raise IndexError(f"aug ids {aug[sel].tolist()} out of range for image {int(i)} with {k} rows")
        rec = store.record(int(i))
        b = rec.b if rec.b is not None else store.basis(rec.basis)[: rec.rank]
        rows = torch.from_numpy(aug[sel])
        vals = rec.a[rows] @ b
        if rec.basis >= 0:
            bm = store.basis_mean(rec.basis)
            if bm is not None:
                vals += bm
        if rec.mean is not None:
            vals += rec.mean[rows, None]
        if rec.res_rows.numel():
            # residual entries of the requested rows only
            hit = (rec.res_rows[:, None] == rows[None, :])
            r_idx, j = hit.nonzero(as_tuple=True)
            vals.index_put_((j, rec.res_cols[r_idx]), rec.res_vals[r_idx], accumulate=True)
        out[torch.from_numpy(sel)] = vals
    return out


def _ids(x, device) -> torch.Tensor:
    """Any int sequence (list, strided numpy view, tensor) as a flat int64 tensor on ``device``."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.int64)
    return torch.as_tensor(x, dtype=torch.int64, device=device).reshape(-1)


@dataclass
class DenseFactors:
    """Padded factor tables of a whole store on one device (see module docstring)."""

    a: torch.Tensor            # (rows, R)
    b: torch.Tensor            # (M, R, C)
    b_of: torch.Tensor         # (N,) which slice of b each image uses
    row_start: torch.Tensor    # (N,) first row of each image in a
    ks: torch.Tensor           # (N,)
    mean: Optional[torch.Tensor]   # (rows,) or None
    b_mean: Optional[torch.Tensor]  # (M, C) mean row of each basis slice (zeros: none), or None
    res_cols: torch.Tensor     # (rows, s) int64, padded with 0
    res_vals: torch.Tensor     # (rows, s) float32, padded with 0

    @classmethod
    def build(cls, store: StoreTables, device: str = "cpu") -> "DenseFactors":
        n, c = len(store), store.num_classes
        total = int(store.ks.sum())
        rmax = _rmax(store)
        nb = len(store.basis_table)
        own = np.flatnonzero(store.index["basis"] < 0)
        b_of = np.where(store.index["basis"] < 0, 0, store.index["basis"]).astype(np.int64)
        b_of[own] = nb + np.arange(len(own))
        a = torch.zeros(total, rmax)
        b = torch.zeros(nb + len(own), rmax, c)
        b_mean = torch.zeros(nb + len(own), c) if any(store.basis_mean(j) is not None for j in range(nb)) else None
        for j in range(nb):
            basis = store.basis(j)
            b[j, : basis.shape[0]] = basis
            if b_mean is not None and store.basis_mean(j) is not None:
                b_mean[j] = store.basis_mean(j)
        has_mean = bool(store.encoding.get("keep_mean"))
        mean = torch.zeros(total) if has_mean else None
        recs = []
        smax = 0
        for i in range(n):
            rec = store.record(i)
            s0, r = int(store.row_start[i]), rec.rank
            a[s0 : s0 + rec.k, :r] = rec.a
            if rec.b is not None:
                b[b_of[i], :r] = rec.b
            if mean is not None and rec.mean is not None:
                mean[s0 : s0 + rec.k] = rec.mean
            if rec.res_rows.numel():
                recs.append((s0, rec))
                smax = max(smax, int(torch.bincount(rec.res_rows).max()))
        res_cols = torch.zeros(total, smax, dtype=torch.int64)
        res_vals = torch.zeros(total, smax)
        for s0, rec in recs:
            rows = rec.res_rows
            # position of each entry within its row: entries are sorted by row
            first = torch.searchsorted(rows, rows, right=False)
            slot = torch.arange(rows.numel()) - first
            res_cols[s0 + rows, slot] = rec.res_cols
            res_vals[s0 + rows, slot] = rec.res_vals
        dev = torch.device(device)
        return cls(a=a.to(dev), b=b.to(dev), b_of=torch.from_numpy(b_of).to(dev),
                   row_start=torch.from_numpy(store.row_start).to(dev), ks=torch.from_numpy(store.ks).to(dev),
                   mean=None if mean is None else mean.to(dev), b_mean=None if b_mean is None else b_mean.to(dev),
                   res_cols=res_cols.to(dev), res_vals=res_vals.to(dev))

    def rows(self, image_ids: Sequence[int], aug_ids: Sequence[int]) -> torch.Tensor:
        """Logit rows for (image, aug) pairs: two (B,) index sequences -> (B, C) float32."""
        dev = self.a.device
        img = _ids(image_ids, dev)
        aug = _ids(aug_ids, dev)
        if img.shape != aug.shape:
            raise IndexError(f"{img.numel()} image ids but {aug.numel()} aug ids")
        n = self.b_of.numel()
        if img.numel() and (img.min() < 0 or img.max() >= n):
            raise IndexError(f"image ids must lie in [0, {n})")
        if img.numel() and ((aug < 0) | (aug >= self.ks[img])).any():
            bad = int(((aug < 0) | (aug >= self.ks[img])).nonzero()[0])
            raise IndexError(f"aug {int(aug[bad])} out of range for image {int(img[bad])} with {int(self.ks[img[bad]])} rows")
        r = self.row_start[img] + aug
        out = torch.bmm(self.a[r].unsqueeze(1), self.b[self.b_of[img]]).squeeze(1)
        if self.b_mean is not None:
            out = out + self.b_mean[self.b_of[img]]
        if self.mean is not None:
            out = out + self.mean[r, None]
        if self.res_cols.shape[1]:
            out.scatter_add_(1, self.res_cols[r], self.res_vals[r])
        return out

    def matrices(self, image_ids: Sequence[int]) -> torch.Tensor:
        """Full matrices of images that share one K: (B,) ids -> (B, K, C) in one batched matmul."""
        dev = self.a.device
        img = _ids(image_ids, dev)
        k = int(self.ks[img[0]])
        if (self.ks[img] != k).any():
            raise IndexError("matrices() needs images with equal row counts")
        r = self.row_start[img, None] + torch.arange(k, device=dev)[None, :]
        out = torch.bmm(self.a[r], self.b[self.b_of[img]])
        if self.b_mean is not None:
            out = out + self.b_mean[self.b_of[img]][:, None, :]
        if self.mean is not None:
            out = out + self.mean[r][..., None]
        if self.res_cols.shape[1]:
            out.scatter_add_(2, self.res_cols[r], self.res_vals[r])
        return out
