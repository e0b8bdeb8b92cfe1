"""The label paths the data-path benchmark times, over the same images, batches, crops and CutMix.

Every dataset serves whole batches through ``__getitems__`` (the DataLoader passes a batch sampler's list
of ids) and returns one collated batch::

    (views (B, 3, S, S) float32, labels (B, C), targets (B,) int64, ids (B,) int64, cpu_s, label_cpu_s)

``cpu_s`` is the CPU time the worker thread spent on the whole batch and ``label_cpu_s`` the part spent
reading labels (thread CPU time, so other processes on the machine do not inflate it).  Use
:func:`identity_collate` as the DataLoader's ``collate_fn``.

* :class:`SRe2LDumpDataset` reads an SRe2L dump the way SRe2L's training loader does: the batch's first
  image id names the batch file, one ``torch.load`` per batch gives the crops, flips, mixing parameters
  and fp16 logits, and the crops are applied in stored position order.
* :class:`TimedStoreDataset` is :class:`~score_codec.training.dataset.CompressedSoftLabelDataset` with the
  timing added; ``decode_labels=False`` gives the images-only baseline (the same views, no labels).
"""
from __future__ import annotations

import os
import time
from typing import Dict, List, Sequence, Tuple

import torch
from torch.utils.data import BatchSampler, RandomSampler, default_collate

from score_codec.store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from score_codec.training.augment import apply_mix, hflip, resized_crop
from score_codec.training.dataset import CompressedSoftLabelDataset

__all__ = ["Batch", "SRe2LBatchSampler", "SRe2LDumpDataset", "TimedStoreDataset", "identity_collate", "epoch_order"]

Batch = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float, float]


def identity_collate(batch: Batch) -> Batch:
    """The datasets collate their own batches (inside the timed region); pass them through."""
    return batch


class SRe2LBatchSampler:
    """SRe2L's (and ``score-codec relabel``'s) batch order: one ``RandomSampler`` on a generator seeded once,
    epochs drawn one after another, ``BatchSampler(drop_last=False)``.

    Args:
        n: images; batch_size: rows per batch; seed: the sampler's seed; epoch: the epoch to yield.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 42, epoch: int = 0) -> None:
        self.n, self.batch_size, self.seed, self.epoch = int(n), int(batch_size), int(seed), int(epoch)
        self._orders: List[List[List[int]]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self, epoch: int) -> List[List[int]]:
        """Image ids of every batch of ``epoch``, in stored order."""
        if not self._orders:
            gen = torch.Generator().manual_seed(self.seed)
            self._sampler = BatchSampler(RandomSampler(range(self.n), generator=gen), self.batch_size, drop_last=False)
        while len(self._orders) <= epoch:
            self._orders.append([list(b) for b in self._sampler])
        return self._orders[epoch]

    def __iter__(self):
        return iter(self.batches(self.epoch))

    def __len__(self) -> int:
        return len(self.batches(self.epoch))


class SRe2LDumpDataset:
    """Images plus an SRe2L dump (``epoch_{e}/batch_{b}.tar``, 6-item lists with fp16 logits).

    Args:
        images: an indexable of (float image (3, H, W) in [0, 1], class), e.g. score's ImageFolder.
        dump: the dump's root folder.
        batch_size, seed: the dump's batch size and sampler seed (the loader maps a batch's first image id
            to its file through this order, as SRe2L does).
        input_size: side of the square views.
    """

    def __init__(self, images: Sequence, dump: str, batch_size: int, input_size: int, seed: int = 42) -> None:
        self.images, self.dump, self.input_size = images, os.fspath(dump), int(input_size)
        self.sampler = SRe2LBatchSampler(len(images), batch_size, seed)
        self.epoch = 0
        self._first: Dict[int, Dict[int, int]] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def batch_file(self, first_id: int) -> str:
        """The batch file whose first row is image ``first_id`` in the current epoch."""
        if self.epoch not in self._first:
            self._first[self.epoch] = {b[0]: k for k, b in enumerate(self.sampler.batches(self.epoch))}
        return os.path.join(self.dump, f"epoch_{self.epoch}", f"batch_{self._first[self.epoch][int(first_id)]}.tar")

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        t0 = time.thread_time()
        # the dump's mix_bbox holds numpy integers, which weights_only loading refuses (as SRe2L's loader finds)
        coords, flip, perm, lam, bbox, logits = torch.load(self.batch_file(indices[0]), map_location="cpu",
                                                           weights_only=False)
        label_cpu = time.thread_time() - t0
        views, targets = [], []
        for k, i in enumerate(indices):
            img, cls = self.images[int(i)]
            v = resized_crop(torch.as_tensor(img), coords[k], self.input_size)
            views.append(hflip(v) if bool(flip[k]) else v)
            targets.append(int(cls))
        kind = MIX_NONE if perm is None else (MIX_CUTMIX if bbox is not None else MIX_MIXUP)
        x = apply_mix(torch.stack(views), kind, perm, lam, bbox)
        views, labels, targets, ids = default_collate([(x[k], logits[k], targets[k], int(i))
                                                       for k, i in enumerate(indices)])
        return views, labels, targets, ids, time.thread_time() - t0, label_cpu


class TimedStoreDataset(CompressedSoftLabelDataset):
    """:class:`CompressedSoftLabelDataset` serving collated batches with the CPU times of the batch and of its
    label decode (``decode_labels=False``: no labels, ``label_cpu_s`` = 0)."""

    def labels(self, indices: Sequence[int]) -> torch.Tensor:
        t0 = time.thread_time()
        out = super().labels(indices)
        self._label_cpu += time.thread_time() - t0
        return out

    def __getitems__(self, indices: Sequence[int]) -> Batch:   # type: ignore[override]
        t0 = time.thread_time()
        self._label_cpu = 0.0
        views, labels, targets, ids = default_collate(super().__getitems__(indices))
        return views, labels, targets, ids, time.thread_time() - t0, self._label_cpu


def epoch_order(sampler) -> List[List[int]]:
    """The batches a batch sampler yields now, as lists of ints (for checking two orders agree)."""
    return [list(map(int, b)) for b in sampler]
