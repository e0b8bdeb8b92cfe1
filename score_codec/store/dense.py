"""All of a store's factors in memory, in their stored precision, for batched decode on one device.

Every ``A`` row of every record is one row of ``a`` (total rows, R) kept as stored (int8 with one scale per
image and component, fp16, bf16 or fp32) and widened only after the gather.  Shared bases (a global
basis, per-class bases) are held once, widened, with their mean rows; a batch of rows is decoded with one
GEMM per distinct shared basis in it, so a store-scope codec decodes any batch as ``(B, R) x (R, C)``.
Per-image bases are held as stored and gathered in chunks of at most ``CHUNK_BYTES`` of float32, so no
call size grows memory beyond that.  Residual entries are kept in compressed-row form (one offset per row,
then the entries of every row in row order), so their memory is exactly what the index's ``nnz`` counts
say, however unevenly they are spread over rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch

from ..codecs.quantize import STORED_DTYPES, bytes_per_value
from .protocols import StoreTables

__all__ = ["DenseFactors", "dense_bytes", "rows_from_records", "CHUNK_BYTES"]

#: float32 bytes a per-image-basis gather may use at once (bounds the memory of any call)
CHUNK_BYTES = 64 << 20


def _rmax(store: StoreTables) -> int:
    """Largest rank of any record or shared basis."""
    r = int(store.index["rank"].max()) if len(store) else 0
    return max(r, int(store.basis_full_rank.max()) if len(store.basis_table) else 0)


def dense_bytes(store: StoreTables) -> int:
    """Memory (bytes) that :meth:`DenseFactors.build` takes for ``store``, from its index alone."""
    rmax = _rmax(store)
    quant = store.encoding.get("quant")
    item = bytes_per_value(quant) if quant else 4
    own = int((store.index["basis"] < 0).sum())
    rows = int(store.ks.sum())
    nnz = int(store.index["nnz"].sum()) if len(store) else 0
    scales = 4 * rmax * (len(store) + own) if item == 1 else 0
    shared = sum(4 * int(r) * store.num_classes for r in store.basis_full_rank) if len(store.basis_table) else 0
    means = 4 * rows if store.encoding.get("keep_mean") else 0
    # coefficients, residual row offsets (int64) and entries (int64 column + float32 value), per-image bases,
    # five int64 per-image tables, the shared bases' mean rows (an upper bound: not every basis has one)
    return (rows * item * rmax + 8 * (rows + 1) + 12 * nnz + item * rmax * store.num_classes * own + scales
            + shared + means + 40 * len(store) + 4 * store.num_classes * len(store.basis_table))


def rows_from_records(store: StoreTables, image_ids: Sequence[int], view_ids: Sequence[int]) -> torch.Tensor:
    """Decode (image, view) pairs straight from their records, without the dense tables.

    Reads and parses each distinct image's record once per call: memory stays at one batch, at the
    cost of a record parse per image (used when the dense tables would be too large for a worker).
    """
    img = np.ascontiguousarray(image_ids, dtype=np.int64).reshape(-1)
    aug = np.ascontiguousarray(view_ids, dtype=np.int64).reshape(-1)
    if img.shape != aug.shape:
        raise IndexError(f"{img.size} image ids but {aug.size} view ids")
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
    """Factor tables of a whole store on one device (see module docstring)."""

    a: torch.Tensor                  # (rows, R) stored dtype
    a_scale: Optional[torch.Tensor]  # (N, R) float32 for int8, else None
    own_b: torch.Tensor              # (M, R, C) stored dtype: per-image bases
    own_scale: Optional[torch.Tensor]  # (M, R) float32 for int8
    own_of: torch.Tensor             # (N,) slot in own_b, -1 for shared-basis images
    shared: List[torch.Tensor]       # per shared basis id: (R_j, C) float32 full basis
    shared_mean: List[Optional[torch.Tensor]]  # per shared basis id: (C,) or None
    basis_of: torch.Tensor           # (N,) shared basis id or -1
    rank_of: torch.Tensor            # (N,) rank of each image's record
    row_start: torch.Tensor          # (N,) first row of each image in a
    ks: torch.Tensor                 # (N,)
    mean: Optional[torch.Tensor]     # (rows,) row means or None
    res_ptr: torch.Tensor            # (rows + 1,) int64: row g's entries are res_cols/res_vals[ptr[g]:ptr[g+1]]
    res_cols: torch.Tensor           # (nnz,) int64, ascending within a row
    res_vals: torch.Tensor           # (nnz,) float32

    @classmethod
    def build(cls, store: StoreTables, device: str = "cpu") -> "DenseFactors":
        n, c = len(store), store.num_classes
        total = int(store.ks.sum())
        rmax = _rmax(store)
        quant = store.encoding.get("quant", "fp16")
        dt = STORED_DTYPES[quant]
        own = np.flatnonzero(store.index["basis"] < 0)
        own_of = np.full(n, -1, dtype=np.int64)
        own_of[own] = np.arange(len(own))
        a = torch.zeros(total, rmax, dtype=dt)
        a_scale = torch.zeros(n, rmax) if quant == "int8" else None
        own_b = torch.zeros(len(own), rmax, c, dtype=dt)
        own_scale = torch.zeros(len(own), rmax) if quant == "int8" else None
        has_mean = bool(store.encoding.get("keep_mean"))
        mean = torch.zeros(total) if has_mean else None
        res_rows, res_cols, res_vals = [], [], []
        for i in range(n):
            rec = store.record(i, raw=True)
            s0, r = int(store.row_start[i]), rec.rank
            a[s0:s0 + rec.k, :r] = rec.a
            if a_scale is not None:
                a_scale[i, :r] = rec.a_scale
            if rec.b is not None:
                own_b[own_of[i], :r] = rec.b
                if own_scale is not None:
                    own_scale[own_of[i], :r] = rec.b_scale
            if mean is not None and rec.mean is not None:
                mean[s0:s0 + rec.k] = rec.mean
            if rec.res_rows.numel():
                res_rows.append(s0 + rec.res_rows)
                res_cols.append(rec.res_cols)
                res_vals.append(rec.res_vals)
        # images in index order and rows in order within a record (row_start is the cumulative K): the
        # concatenated entries are already sorted by global row, as compressed-row form needs
        g = torch.cat(res_rows) if res_rows else torch.zeros(0, dtype=torch.int64)
        cols = torch.cat(res_cols) if res_cols else torch.zeros(0, dtype=torch.int64)
        vals = torch.cat(res_vals) if res_vals else torch.zeros(0)
        ptr = torch.zeros(total + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(torch.bincount(g, minlength=total), 0)
        dev = torch.device(device)
        nb = len(store.basis_table)
        shared = [store.basis(j).to(dev) for j in range(nb)]
        shared_mean = [None if store.basis_mean(j) is None else store.basis_mean(j).to(dev) for j in range(nb)]
        to = (lambda t: None if t is None else t.to(dev))
        return cls(a=a.to(dev), a_scale=to(a_scale), own_b=own_b.to(dev), own_scale=to(own_scale),
                   own_of=torch.from_numpy(own_of).to(dev), shared=shared, shared_mean=shared_mean,
                   basis_of=torch.from_numpy(store.index["basis"].astype(np.int64)).to(dev),
                   rank_of=torch.from_numpy(store.index["rank"].astype(np.int64)).to(dev),
                   row_start=torch.from_numpy(store.row_start).to(dev), ks=torch.from_numpy(store.ks).to(dev),
                   mean=to(mean), res_ptr=ptr.to(dev), res_cols=cols.to(dev), res_vals=vals.to(dev))

    # -- decoding ------------------------------------------------------------------------------------
    def _coefficients(self, r: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Widened coefficients (..., R) of global rows ``r`` belonging to images ``img``."""
        a = self.a[r].float()
        if self.a_scale is not None:
            a = a * self.a_scale[img]
        return a

    def _own_chunk(self) -> int:
        """Images whose widened (R, C) float32 bases fit in ``CHUNK_BYTES``: the bounded gather's step."""
        return max(1, CHUNK_BYTES // max(1, 4 * self.own_b.shape[1] * self.own_b.shape[2]))

    def _own_product(self, a: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """``a`` (n, K, R) times the per-image bases of images ``img`` (n,): (n, K, C) float32.

        The int8 bases' row scales are folded into the coefficients (a_j s_j) Q_j instead of widening and
        then scaling Q: one pass over the gathered (n, R, C) bases instead of two."""
        slot = self.own_of.index_select(0, img)
        q = self.own_b.index_select(0, slot).float()
        if self.own_scale is not None:
            a = a * self.own_scale.index_select(0, slot)[:, None, :]
        return torch.bmm(a, q)

    @property
    def single_basis(self) -> bool:
        """True when every image uses shared basis 0 (a store-scope codec): decode is one GEMM per batch."""
        if not hasattr(self, "_single"):
            self._single = len(self.shared) == 1 and bool((self.basis_of == 0).all())
        return self._single

    def _single_rows(self, r: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Global codec: one GEMM with the mean folded in as a basis row whose coefficient is 1."""
        if not hasattr(self, "_folded"):
            basis, mean = self.shared[0], self.shared_mean[0]
            self._folded = torch.cat([basis, mean[None] if mean is not None else basis.new_zeros(1, basis.shape[1])])
        rank = self._folded.shape[0] - 1
        a = torch.empty(r.numel(), rank + 1, device=self.a.device)
        a[:, :rank] = self.a.index_select(0, r)[:, :rank]
        if self.a_scale is not None:
            a[:, :rank] *= self.a_scale.index_select(0, img)[:, :rank]
        a[:, rank] = 1.0
        return a @ self._folded

    def _decode(self, a: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of rows with widened coefficients ``a`` (B, R) of images ``img`` (B,)."""
        c = self.own_b.shape[-1]
        out = torch.empty(a.shape[0], c, device=a.device)
        bid = self.basis_of[img]
        for j in torch.unique(bid).tolist():
            sel = (bid == j).nonzero(as_tuple=True)[0]
            if j >= 0:
                basis = self.shared[j]
                rank = int(self.rank_of[img[sel]].max())
                vals = a[sel, :rank] @ basis[:rank]
                if self.shared_mean[j] is not None:
                    vals += self.shared_mean[j]
                out[sel] = vals
            else:
                # per-image bases: gather them in bounded chunks (R x C float32 per row)
                step = self._own_chunk()
                for s in range(0, sel.numel(), step):
                    part = sel[s:s + step]
                    out[part] = self._own_product(a[part].unsqueeze(1), img[part]).squeeze(1)
        return out

    def _add_means_and_residual(self, out: torch.Tensor, r: torch.Tensor) -> None:
        """Add the stored row means and residual entries of global rows ``r`` to ``out`` (B, C), in place."""
        if self.mean is not None:
            out += self.mean[r, None]
        if self.res_cols.numel():
            start = self.res_ptr.index_select(0, r)
            count = self.res_ptr.index_select(0, r + 1) - start
            n = int(count.sum())
            if n:
                which = torch.repeat_interleave(torch.arange(r.numel(), device=r.device), count, output_size=n)
                # entry j of the gathered list sits at its row's start plus its rank within that row
                shift = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count, output_size=n)
                pos = torch.arange(n, device=r.device) + shift
                out.index_put_((which, self.res_cols.index_select(0, pos)), self.res_vals.index_select(0, pos),
                               accumulate=True)

    def _check(self, img: np.ndarray, aug: np.ndarray) -> np.ndarray:
        """Validated global row numbers (numpy; cheap next to torch ops on small batches)."""
        if img.shape != aug.shape:
            raise IndexError(f"{img.size} image ids but {aug.size} view ids")
        if not hasattr(self, "_np"):
            self._np = (self.ks.cpu().numpy(), self.row_start.cpu().numpy())
        ks, start = self._np
        if img.size and (img.min() < 0 or img.max() >= len(ks)):
            raise IndexError(f"image ids must lie in [0, {len(ks)})")
        bad = (aug < 0) | (aug >= ks[img])
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            raise IndexError(f"view {int(aug[j])} out of range for image {int(img[j])} with {int(ks[img[j]])} rows")
        return start[img] + aug

    def rows(self, image_ids: Sequence[int], view_ids: Sequence[int]) -> torch.Tensor:
        """Logit rows for (image, view) pairs: two (B,) index sequences -> (B, C) float32."""
        dev = self.a.device
        as_np = (lambda x: x.detach().cpu().numpy().astype(np.int64, copy=False).reshape(-1) if isinstance(x, torch.Tensor)
                 else np.ascontiguousarray(x, dtype=np.int64).reshape(-1))
        img_np = as_np(image_ids)
        r_np = self._check(img_np, as_np(view_ids))
        r = torch.from_numpy(r_np).to(dev)
        img = torch.from_numpy(img_np).to(dev)
        if self.single_basis:
            out = self._single_rows(r, img)
        else:
            out = self._decode(self._coefficients(r, img), img)
        self._add_means_and_residual(out, r)
        return out

    def matrices(self, image_ids: Sequence[int]) -> torch.Tensor:
        """Full matrices of images that share one K: (B,) ids -> (B, K, C)."""
        dev = self.a.device
        img = _ids(image_ids, dev)
        k = int(self.ks[img[0]])
        if (self.ks[img] != k).any():
            raise IndexError("matrices() needs images with equal row counts")
        r = (self.row_start[img, None] + torch.arange(k, device=dev)[None, :]).reshape(-1)
        rows_img = img.repeat_interleave(k)
        if self.single_basis:
            out = self._single_rows(r, rows_img)
            self._add_means_and_residual(out, r)
            return out.reshape(img.numel(), k, -1)
        a = self._coefficients(r, rows_img)
        own = self.basis_of[img] < 0
        if bool(own.all()):
            # one basis per image: a batched (n, K, R) x (n, R, C) product, in bounded chunks of images
            a3 = a.reshape(img.numel(), k, -1)
            c = self.own_b.shape[-1]
            out = torch.empty(img.numel(), k, c, device=dev)
            step = self._own_chunk()
            for s in range(0, img.numel(), step):
                out[s:s + step] = self._own_product(a3[s:s + step], img[s:s + step])
            out = out.reshape(-1, c)
        else:
            out = self._decode(a, rows_img)
        self._add_means_and_residual(out, r)
        return out.reshape(img.numel(), k, -1)
