"""Replay of a dump's augmentation metadata: per-epoch lookups, batch order and mixing.

These pieces are pure numpy / torch over an :class:`~score_codec.store.meta.AugMeta`; the dataset
(:mod:`score_codec.training.dataset`) combines them with images and decoded labels.

Mixing is replayed *per row*: row r's teacher input was ``mix(view_r, view_{partner(r)})`` where the
partner is the row at position ``perm[r]`` of the same stored batch, and donors are un-mixed.  So a row
can be rebuilt from its own view and its partner's view alone, whatever other rows share the loader
batch; this is what lets a rank of a sharded run hold only part of a stored batch.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional

import numpy as np
import torch

from ..errors import BatchSizeMismatchError, InputError
from ..store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE, AugMeta
from ..store.reader import LabelStore

__all__ = ["EpochPlan", "replay_mix", "replay_mix_", "ReplayBatchSampler", "open_store"]


def open_store(store):
    """A store path -> ``LabelStore(path)``; a store object is returned unchanged."""
    if isinstance(store, (str, os.PathLike)):
        return LabelStore(os.fspath(store))
    return store


class EpochPlan:
    """What one epoch of a dump says about every image, as numpy arrays indexed by image id.

    Built from that epoch's rows only (:meth:`from_store` reads them with the store's
    :class:`~score_codec.store.aug_reader.AugReader`), so a worker never holds the whole row table.

    Attributes (N images, nb batches in the whole dump):
        row: (N,) int64 position of the image's row within the epoch's rows (-1: none).
        coords: (N, 4) float32 crop coords; flip: (N,) bool.
        batch: (N,) int64 index into the batches table (-1: no batch structure).
        partner: (N,) int64 image id of the mixing partner (-1: no mixing).
        mix_type: (nb,) uint8; lam: (nb,) float64; bbox: (nb, 4) int32 of the batches table.
    """

    def __init__(self, meta: AugMeta, num_images: int, epoch: int) -> None:
        rows = meta.rows
        sel = np.flatnonzero(rows["aug"] == epoch)
        start = int(sel[0]) if len(sel) and bool(np.all(np.diff(sel) == 1)) else -1
        self._build(rows[sel], start, meta.batches, num_images, epoch)

    @classmethod
    def from_store(cls, store, num_images: int, epoch: int) -> "EpochPlan":
        """The plan of ``epoch`` reading only that epoch's rows of ``store``'s metadata."""
        rows, offset = store.aug_reader.epoch_rows(epoch)
        plan = cls.__new__(cls)
        plan._build(rows, offset, store.aug_reader.batches, num_images, epoch)
        return plan

    def _build(self, rows: np.ndarray, offset: int, b: np.ndarray, num_images: int, epoch: int) -> None:
        img = rows["image"]
        self.epoch = int(epoch)
        self.row = np.full(num_images, -1, dtype=np.int64)
        self.row[img] = np.arange(len(rows))
        self.coords = np.zeros((num_images, 4), dtype=np.float32)
        self.coords[img] = rows["coords"]
        self.flip = np.zeros(num_images, dtype=bool)
        self.flip[img] = rows["flip"].astype(bool)
        self.batch = np.full(num_images, -1, dtype=np.int64)
        self.partner = np.full(num_images, -1, dtype=np.int64)
        self.mix_type, self.lam, self.bbox = b["mix_type"], b["mix_lam"], b["mix_bbox"]
        if len(b) and len(rows):
            if offset < 0:
                raise InputError("the store's rows are not epoch-contiguous, so its batches cannot be replayed")
            # batches tile the rows table in order, so a row's batch is the last one starting at or before it
            pos = offset + np.arange(len(rows))
            bidx = np.searchsorted(b["row_start"], pos, side="right") - 1
            self.batch[img] = bidx
            mix = rows["mix_index"]
            has = (mix >= 0) & (b["mix_type"][bidx] != MIX_NONE)
            src = b["row_start"][bidx[has]] + mix[has] - offset
            self.partner[img[has]] = img[src]

    def missing(self, ids: np.ndarray) -> np.ndarray:
        """The ids among ``ids`` that have no row in this epoch."""
        return ids[self.row[ids] < 0]


def _mix_groups(mix_type: np.ndarray, lam: np.ndarray, bbox: np.ndarray, mixed: np.ndarray) -> List[tuple]:
    """Rows that share one mix, as ``(kind, param, rows)``: ``param`` is the CutMix box (4 ints) or the Mixup
    lam (float64); ``rows`` (n,) int64 ascending.  The rows of one stored batch always share a group."""
    groups = []
    for kind in (MIX_CUTMIX, MIX_MIXUP):
        rows = np.flatnonzero(mixed & (mix_type == kind))
        if not len(rows):
            continue
        key = bbox[rows].astype(np.int64) if kind == MIX_CUTMIX else lam[rows].astype(np.float64)[:, None]
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        for g, param in enumerate(uniq):
            groups.append((kind, tuple(int(v) for v in param) if kind == MIX_CUTMIX else float(param[0]),
                           rows if len(uniq) == 1 else rows[inv == g]))
    return groups


def _row_index(rows: np.ndarray, device: torch.device):
    """``rows`` (ascending) as a slice when they are one contiguous range (no gather, in-place writes), else a
    LongTensor."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return torch.as_tensor(rows, device=device)


def _mix_into(out: torch.Tensor, src: torch.Tensor, src_rows: np.ndarray, groups: List[tuple]) -> None:
    """For each group, rows ``rows`` of ``out`` become mix(out[rows], src[src_rows[rows]]), in place.

    Within a group every partner is read before any row is written, so ``src`` may be ``out`` itself as long
    as no row read by one group is written by another.
    """
    for kind, param, rows in groups:
        dst = _row_index(rows, out.device)
        take = torch.as_tensor(src_rows[rows], device=out.device)
        if kind == MIX_CUTMIX:
            r0, c0, r1, c1 = param
            # the partners' patches are gathered (a copy) before any row of the group is written: donors un-mixed
            out[dst, :, r0:r1, c0:c1] = src[take, :, r0:r1, c0:c1]
        else:
            # same roundings as apply_mix's ``lam * x + (1 - lam) * x[perm]`` with a Python float lam:
            # each factor is computed in float64 and rounded to the tensor dtype once
            a = torch.tensor(param, dtype=out.dtype, device=out.device)
            b = torch.tensor(1.0 - param, dtype=out.dtype, device=out.device)
            partner = src[take].mul_(b)
            if isinstance(dst, slice):
                out[dst].mul_(a).add_(partner)
            else:
                out[dst] = out[dst].mul_(a).add_(partner)


def replay_mix(views: torch.Tensor, partner_views: torch.Tensor, mix_type: np.ndarray, lam: np.ndarray,
               bbox: np.ndarray) -> torch.Tensor:
    """Rebuild mixed teacher inputs row by row.

    Args:
        views: (B, C, S, S) each row's own cropped and flipped view.
        partner_views: (B, C, S, S) the un-mixed view of each row's partner (any value where no mix).
        mix_type: (B,) MIX_* ids; lam: (B,) float64; bbox: (B, 4) (row0, col0, row1, col1).
    Returns (B, C, S, S), a new tensor, bit-identical to :func:`score_codec.training.augment.apply_mix` on the
    whole stored batch.
    """
    out = views.clone()
    mix_type = np.asarray(mix_type)
    mixed = (mix_type == MIX_CUTMIX) | (mix_type == MIX_MIXUP)
    if mixed.any():
        groups = _mix_groups(mix_type, np.asarray(lam), np.asarray(bbox), mixed)
        _mix_into(out, partner_views, np.arange(len(mix_type)), groups)
    return out


def replay_mix_(views: torch.Tensor, partner_rows: np.ndarray, mix_type: np.ndarray, lam: np.ndarray,
                bbox: np.ndarray) -> torch.Tensor:
    """Mix the first B rows of ``views`` in place with their partners' rows of the same tensor.

    The whole-batch form of :func:`replay_mix`: the views of a stored batch (plus any partners from
    outside the requested rows) are cropped into one tensor and mixed there, one paste or blend per row,
    without copying the batch.

    Args:
        views: (N, C, S, S) un-mixed views, N >= B; rows B.. only serve as partners and are left unchanged.
        partner_rows: (B,) int, the row of ``views`` holding each row's partner; -1 for a row not mixed.
        mix_type: (B,) MIX_* ids; lam: (B,) float64; bbox: (B, 4) (row0, col0, row1, col1): each row's mix.
    Returns ``views``, its first B rows bit-identical to :func:`replay_mix` on the un-mixed views.

    Rows of one stored batch share their mix parameters, so a partner that is itself mixed is mixed in
    the same group, after its view was read.  If the arguments break that (a partner mixed with other
    parameters), the partners are read from a copy instead, so the result is still exact.
    """
    partner_rows = np.asarray(partner_rows, dtype=np.int64).reshape(-1)
    mix_type = np.asarray(mix_type)
    mixed = (partner_rows >= 0) & ((mix_type == MIX_CUTMIX) | (mix_type == MIX_MIXUP))
    if not mixed.any():
        return views
    groups = _mix_groups(mix_type, np.asarray(lam), np.asarray(bbox), mixed)
    group_of = np.full(len(views), -1, dtype=np.int64)
    for g, (_, _, rows) in enumerate(groups):
        group_of[rows] = g
    readers = np.flatnonzero(mixed)
    src = views
    if np.any((group_of[partner_rows[readers]] >= 0) & (group_of[partner_rows[readers]] != group_of[readers])):
        src = views.clone()
    _mix_into(views, src, partner_rows, groups)
    return views


class ReplayBatchSampler:
    """Yields each epoch's stored batches as lists of image ids (a DataLoader ``batch_sampler``).

    Args:
        store: a store path or LabelStore (only its ``aug`` metadata is read, in this process).
        epoch: the epoch to replay; change it with :meth:`set_epoch`.  On a pooled store (n of the source's K
            epochs kept) epoch e replays kept epoch ``e mod n``, the batches of source epoch
            ``store.kept_epochs[e mod n]``.
        batch_size: training batch size; None means the dump's.  A different size is refused with
            :class:`~score_codec.errors.BatchSizeMismatchError` when the dump mixes images, else the stored order is
            re-chunked.
        num_replicas, rank: shard every stored batch across ranks: rank k takes positions
            k, k + num_replicas, ... of each batch.  With ``pad`` (the DistributedSampler default) a
            batch is first padded by wrapping around so every rank gets the same number of rows;
            without it the parts are disjoint and exactly cover the batch.
    """

    def __init__(self, store, epoch: int = 0, batch_size: Optional[int] = None, num_replicas: int = 1,
                 rank: int = 0, pad: bool = True) -> None:
        if not 0 <= rank < num_replicas:
            raise InputError(f"rank must lie in [0, {num_replicas}), found {rank}")
        self._store = open_store(store)
        meta = self._store.aug_reader
        if meta.num_rows == 0:
            raise InputError("the store has no augmentation metadata, so it has no batch order to replay")
        self._b = meta.batches
        self.mixes = bool(len(self._b)) and bool(np.any(self._b["mix_type"] != MIX_NONE))
        stored = int(meta.attrs.get("batch_size", self._b["size"].max() if len(self._b) else 0))
        self.stored_batch_size = stored
        if batch_size is not None and int(batch_size) != stored and self.mixes:
            raise BatchSizeMismatchError(
                f"the dump was made with batch size {stored} and CutMix/Mixup mixes images within each stored "
                f"batch; training batch size {batch_size} cannot replay it. Use batch size {stored} (accumulate "
                f"gradients over micro-batches to train with smaller ones)")
        if batch_size is None and not stored:
            raise InputError("the store records no batches; pass batch_size")
        self.batch_size = int(batch_size) if batch_size is not None else stored
        self.num_replicas, self.rank, self.pad = int(num_replicas), int(rank), bool(pad)
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def view(self) -> int:
        """The stored epoch this sampler's epoch replays: the epoch itself, or on a pooled store kept epoch
        ``epoch mod n`` (:meth:`~score_codec.LabelStore.view_for_epoch`)."""
        f = getattr(self._store, "view_for_epoch", None)
        return int(self.epoch) if f is None else int(f(self.epoch))

    def _stored_batches(self) -> List[np.ndarray]:
        view = self.view
        rows, offset = self._store.aug_reader.epoch_rows(view)
        order = rows["image"]
        if len(self._b) and self.batch_size == self.stored_batch_size and offset >= 0:
            sel = np.flatnonzero(self._b["epoch"] == view)
            return [order[s - offset:s - offset + n] for s, n in zip(self._b["row_start"][sel], self._b["size"][sel])]
        return [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[List[int]]:
        batches = self._stored_batches()
        if not batches:
            raise InputError(f"the store has no rows for epoch {self.epoch}")
        for ids in batches:
            if self.pad and len(ids) % self.num_replicas:
                extra = self.num_replicas - len(ids) % self.num_replicas
                ids = np.concatenate([ids, np.resize(ids, extra)])
            yield ids[self.rank::self.num_replicas].tolist()

    def __len__(self) -> int:
        return len(self._stored_batches())
