"""Soft-label sources for the storage-versus-accuracy benchmark: one interface the student loop consumes.

A training step is one *stored batch*: ``(label_epoch, batch)`` of the relabel dump, whose image ids and
replayed (cropped, flipped, CutMixed) views are fixed by the dump.  A :class:`LabelSource` answers two
questions:

* :meth:`LabelSource.schedule` -- which stored batches each training epoch visits (every source but
  LPLD visits all batches of label epoch ``e % K`` in stored order; LPLD samples from its label pool);
* :meth:`LabelSource.targets` -- the soft target ``(B, C)`` probabilities at temperature ``T`` for the
  rows ``(label_epoch, image_ids)`` of a visited batch.

Every source returns *probabilities* (not logits) so that peers whose decoders produce distributions
directly (LPQLD MR-k, FKD marginal smoothing) and logit stores go through the same loss,
``KL(p || softmax(student / T))`` with ``batchmean`` (``score_codec.training.student.kd_loss`` with
``probs=True``; with ``probs=False`` on logits it is the same loss for ``p = softmax(teacher / T)``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["LabelSource", "LogitSource", "StoreSource", "PooledStoreSource", "TopKSource", "PoolSource",
           "HardLabelSource", "BatchTable", "rows_to_probs", "kd_metrics"]

Step = Tuple[int, int]  # (label epoch, batch index within that epoch)


class BatchTable:
    """The stored batch structure of a relabel dump.

    Args:
        batches: ``BATCH_DTYPE`` table (epoch, batch, row_start, size, ...) in dump order.
        rows: ``ROW_DTYPE`` table; ``rows["image"][row_start:row_start+size]`` are a batch's image ids.
    Attributes: ``epochs`` (K), ``per_epoch`` (nb, batches per epoch; the minimum over epochs).
    """

    def __init__(self, batches: np.ndarray, rows: np.ndarray) -> None:
        self.batches, self.rows = batches, rows
        self.epochs = int(batches["epoch"].max()) + 1
        counts = np.bincount(batches["epoch"], minlength=self.epochs)
        self.per_epoch = int(counts.min())
        self._where = {(int(e), int(b)): k for k, (e, b) in enumerate(zip(batches["epoch"], batches["batch"]))}

    def index(self, epoch: int, batch: int) -> int:
        """Position of ``(epoch, batch)`` in the dump's batch table (the global, epoch-major batch id)."""
        return self._where[(int(epoch), int(batch))]

    def images(self, epoch: int, batch: int) -> np.ndarray:
        """Image ids (B,) int64 of a stored batch, in stored position order."""
        rec = self.batches[self.index(epoch, batch)]
        s = int(rec["row_start"])
        return self.rows["image"][s:s + int(rec["size"])].astype(np.int64)

    def sizes(self) -> np.ndarray:
        return self.batches["size"].astype(np.int64)


def rows_to_probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Logits (B, C) -> softmax(logits / T) float32 (B, C)."""
    return torch.softmax(logits.float() / T, dim=1)


class LabelSource:
    """Base class: visits every stored batch of label epoch ``e % K`` in stored order.

    Subclasses implement :meth:`targets`; ``label_bytes`` (stored label bytes, without metadata) and
    ``rows_kept`` (label rows actually stored) describe the storage cost.
    """

    name: str = "source"
    label_bytes: int = 0
    rows_kept: int = 0

    def schedule(self, table: BatchTable, train_epochs: int, seed: int) -> List[List[Step]]:
        """Per training epoch, the list of ``(label_epoch, batch)`` steps to run."""
        out = []
        for e in range(train_epochs):
            le = e % table.epochs
            out.append([(le, b) for b in range(table.per_epoch)])
        return out

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        """Soft targets (B, C) float32 probabilities of rows (``epoch``, ``image_ids``) at temperature T."""
        raise NotImplementedError

    def stored_mask(self, table: BatchTable) -> Optional[np.ndarray]:
        """(N, K) bool of the rows this source stores, or None for all of them."""
        return None


class LogitSource(LabelSource):
    """Uncompressed teacher logits held in memory: ``Y`` (N, K, C) (the raw fp16 dump's values).

    ``label_bytes`` defaults to the fp16 size ``N * K * 2C``; pass another for a lossless re-encoding
    of the same values (fp16 + zstd)."""

    def __init__(self, Y: torch.Tensor, name: str = "raw fp16", label_bytes: Optional[int] = None) -> None:
        self.Y, self.name = Y, name
        n, k, c = Y.shape
        self.rows_kept = n * k
        self.label_bytes = int(label_bytes) if label_bytes is not None else n * k * 2 * c

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        return rows_to_probs(self.Y[torch.as_tensor(image_ids), int(epoch)], T)


class StoreSource(LabelSource):
    """A compressed label store (``score_codec.LabelStore``); row ``aug`` of image i is label epoch aug."""

    def __init__(self, path: str, name: Optional[str] = None) -> None:
        from score_codec import LabelStore

        self.store = LabelStore(path)
        st = self.store.stats()
        self.name = name or os.path.basename(path)
        self.label_bytes, self.rows_kept = int(st["label_bytes"]), int(st["rows"])
        self.stats = st

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        ids = np.asarray(image_ids, dtype=np.int64)
        rows = self.store.rows(ids, np.full(len(ids), int(epoch), dtype=np.int64))
        return rows_to_probs(torch.as_tensor(rows), T)


class PooledStoreSource(StoreSource):
    """A store written by the library's automatic allocation, replayed as the library replays it.

    The store may keep n of the source's K label epochs (``store.kept_epochs``; every epoch when it is
    not pooled).  Training epoch e replays view ``store.view_for_epoch(e)`` of every image, whose labels
    came from source epoch ``kept_epochs[view]``: the epoch visits that source epoch's stored batches in
    stored order (their images and replayed views), and its targets are the store's rows of that view.
    """

    def __init__(self, path: str, name: Optional[str] = None) -> None:
        super().__init__(path, name)
        kept = self.store.kept_epochs
        self.kept = list(range(self.store.source_epochs)) if kept is None else [int(e) for e in kept]
        self._view = {e: j for j, e in enumerate(self.kept)}

    def label_epoch(self, epoch: int) -> int:
        """The source (label) epoch that training epoch ``epoch`` replays."""
        return self.kept[self.store.view_for_epoch(epoch) % len(self.kept)]

    def schedule(self, table: BatchTable, train_epochs: int, seed: int) -> List[List[Step]]:
        return [[(le, b) for b in range(table.per_epoch)]
                for le in (self.label_epoch(e) for e in range(train_epochs))]

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        if int(epoch) not in self._view:
            raise ValueError(f"{self.store.path}: label epoch {epoch} is not kept (kept: {self.kept})")
        ids = np.asarray(image_ids, dtype=np.int64)
        rows = self.store.rows(ids, np.full(len(ids), self._view[int(epoch)], dtype=np.int64))
        return rows_to_probs(torch.as_tensor(rows), T)

    def stored_mask(self, table: BatchTable) -> np.ndarray:
        n = int(table.rows["image"].max()) + 1
        m = np.zeros((n, table.epochs), dtype=bool)
        m[:, self.kept] = True
        return m


class TopKSource(LabelSource):
    """Top-k peers: ``k`` fp16 values plus ``k`` int16 class indices per row (4k bytes).

    * ``kind="mr"`` -- MR-k (LPQLD's label coding): the top-k *logits* are stored; decoding is ``softmax(topk / T)`` over
      the k values only, scattered into a zero C-vector (``train_FKD_LPQLD.py``).
    * ``kind="fkd"`` -- FKD top-k with marginal smoothing: the top-k *probabilities* are stored (ours:
      computed at the training temperature T, the most favourable choice for a T=20 student; FKD's own
      generator uses T=1); every other class gets ``(1 - sum(topk)) / (C - k)`` (``Recover_soft_label``).

    ``mask`` (N, K) bool keeps only those rows (LPQLD's pruned pool); others are never visited.
    """

    #: logits per chunk of images while the top k are taken (bounds the float32 copies a softmax makes)
    chunk_values = 1 << 24

    def __init__(self, Y: torch.Tensor, k: int, kind: str = "mr", T: float = 20.0,
                 mask: Optional[np.ndarray] = None, name: Optional[str] = None) -> None:
        if kind not in ("mr", "fkd"):
            raise ValueError(f"kind must be 'mr' or 'fkd', found {kind!r}")
        n, K, c = Y.shape
        self.k, self.kind, self.T, self.C = int(k), kind, float(T), c
        # what is stored; image by image in chunks, so a 1M-row dump never holds a second full copy
        self.vals = torch.empty(n, K, self.k, dtype=torch.float16)
        self.idx = torch.empty(n, K, self.k, dtype=torch.int16)
        step = max(1, self.chunk_values // max(K * c, 1))
        for i in range(0, n, step):
            y = Y[i:i + step].float()
            vals, idx = torch.topk(y if kind == "mr" else torch.softmax(y / T, dim=-1), self.k, dim=-1)
            self.vals[i:i + step], self.idx[i:i + step] = vals.half(), idx.to(torch.int16)
        self.mask = mask
        self.rows_kept = int(mask.sum()) if mask is not None else n * K
        self.label_bytes = self.rows_kept * 4 * self.k
        self.name = name or f"{'MR' if kind == 'mr' else 'FKD top'}-{self.k}"

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        ids = torch.as_tensor(np.asarray(image_ids, dtype=np.int64))
        v = self.vals[ids, int(epoch)].float()
        i = self.idx[ids, int(epoch)].long()
        if self.kind == "mr":
            p = torch.softmax(v / T, dim=1)
            return torch.zeros(len(ids), self.C).scatter_(1, i, p)
        if abs(T - self.T) > 1e-9:
            raise ValueError(f"FKD labels were stored at T={self.T}, asked for T={T}")
        rest = ((1.0 - v.sum(1, keepdim=True)).clamp_min(0) / max(self.C - self.k, 1))
        return rest.expand(-1, self.C).clone().scatter_(1, i, v)

    def stored_mask(self, table: BatchTable) -> Optional[np.ndarray]:
        return self.mask


class PoolSource(LabelSource):
    """LPLD label-pool pruning (``--granularity batch_to_epoch --prune_metric random``).

    The pool is the first ``int((1 - r) * E * nb)`` stored batches in epoch-major order; each training
    epoch draws ``nb`` batches uniformly *with replacement* from the pool (``torch.randint``, seeded).
    A drawn partial (last-of-epoch) batch is replaced by its predecessor, as LPLD does.  Labels of the
    pooled batches are served by ``inner`` (exact fp16 logits for LPLD, MR-k for LPQLD, or one of our
    stores encoding only the pooled epochs with ``inner_pooled=True``).
    """

    def __init__(self, inner: LabelSource, table: BatchTable, prune_ratio: float, name: Optional[str] = None,
                 inner_pooled: bool = False) -> None:
        self.inner, self.r = inner, float(prune_ratio)
        total = len(table.batches)
        # LPLD: pool = range(total)[:int((1 - r) * total)]; the epsilon keeps 1 - 0.9 = 0.0999... from
        # dropping a batch (keep exactly 1/X of them at r = 1 - 1/X)
        self.pool = list(range(total))[:int((1.0 - self.r) * total + 1e-9)]
        if not self.pool:
            raise ValueError(f"prune ratio {prune_ratio} leaves an empty label pool of {total} batches")
        sizes = table.sizes()
        self.rows_kept = int(sizes[self.pool].sum())
        if inner_pooled:    # ``inner`` stores the pooled rows only (ours + pool): its own bytes
            self.label_bytes = int(inner.label_bytes)
        else:
            c = getattr(inner, "C", None) or int(getattr(inner, "Y").shape[-1])
            per_row = 4 * inner.k if isinstance(inner, TopKSource) else 2 * c
            self.label_bytes = self.rows_kept * per_row
        self.name = name or f"LPLD r={self.r:.3g}"
        self._full = int(np.max(sizes))

    def schedule(self, table: BatchTable, train_epochs: int, seed: int) -> List[List[Step]]:
        g = torch.Generator().manual_seed(int(seed) + 7919)
        out = []
        for _ in range(train_epochs):
            picks = torch.randint(0, len(self.pool), (table.per_epoch,), generator=g).tolist()
            steps = []
            for p in picks:
                j = self.pool[p]
                if int(table.batches["size"][j]) < self._full and j > 0:
                    j -= 1   # LPLD replaces a partial last-of-epoch batch with its predecessor
                rec = table.batches[j]
                steps.append((int(rec["epoch"]), int(rec["batch"])))
            out.append(steps)
        return out

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        return self.inner.targets(epoch, image_ids, T)

    def stored_mask(self, table: BatchTable) -> np.ndarray:
        n = int(table.rows["image"].max()) + 1
        m = np.zeros((n, table.epochs), dtype=bool)
        for j in self.pool:
            rec = table.batches[j]
            s = int(rec["row_start"])
            m[table.rows["image"][s:s + int(rec["size"])], int(rec["epoch"])] = True
        return m


class HardLabelSource(LabelSource):
    """Hard labels of the same replayed views: a CutMix row's target is its own class and its partner's,
    weighted by the pasted box's area (one-hot where unmixed).  Trained at T = 1 (cross-entropy)."""

    temperature = 1.0

    def __init__(self, classes: np.ndarray, table: BatchTable, num_classes: int, size: int) -> None:
        self.name, self.C = "hard labels", int(num_classes)
        self.classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
        rows, b = table.rows, table.batches
        n = int(rows["image"].max()) + 1
        self.partner = np.full((n, table.epochs), -1, dtype=np.int64)
        self.share = np.zeros((n, table.epochs), dtype=np.float32)
        for rec in b:
            s, m = int(rec["row_start"]), int(rec["size"])
            r = rows[s:s + m]
            if int(rec["mix_type"]) == 1 and (r["mix_index"] >= 0).any():   # CutMix: the box holds the partner
                r0, c0, r1, c1 = (int(v) for v in rec["mix_bbox"])
                area = max(r1 - r0, 0) * max(c1 - c0, 0) / float(size * size)
                self.partner[r["image"], int(rec["epoch"])] = r["image"][r["mix_index"]]
                self.share[r["image"], int(rec["epoch"])] = area
        self.label_bytes = 0
        self.rows_kept = int(len(rows))

    def targets(self, epoch: int, image_ids: np.ndarray, T: float) -> torch.Tensor:
        ids = np.asarray(image_ids, dtype=np.int64)
        out = torch.zeros(len(ids), self.C)
        own = self.classes[torch.as_tensor(ids)]
        share = torch.as_tensor(self.share[ids, int(epoch)])
        out[torch.arange(len(ids)), own] += 1 - share
        p = self.partner[ids, int(epoch)]
        has = torch.as_tensor(p >= 0)
        if bool(has.any()):
            pc = self.classes[torch.as_tensor(np.where(p >= 0, p, 0))]
            out[torch.arange(len(ids))[has], pc[has]] += share[has]
        return out


@torch.no_grad()
def kd_metrics(source: LabelSource, Y: torch.Tensor, table: BatchTable, T: float) -> Dict[str, float]:
    """Fidelity of ``source`` against the raw logits Y (N, K, C) over the rows it stores:
    ``kl`` = mean KL(softmax(Y/T) || target) in nats, ``agree`` = share of rows with the same argmax."""
    mask = source.stored_mask(table)
    kl_sum, agree, count = 0.0, 0, 0
    n = Y.shape[0]
    for e in range(Y.shape[1]):
        ids = np.arange(n) if mask is None else np.flatnonzero(mask[:, e])
        if len(ids) == 0:
            continue
        p = rows_to_probs(Y[torch.as_tensor(ids), e], T)
        q = source.targets(e, ids, T).float()
        kl_sum += float(torch.xlogy(p, p).sum() - (p * q.clamp_min(1e-30).log()).sum())
        agree += int((p.argmax(1) == q.argmax(1)).sum())
        count += len(ids)
    return dict(kl=kl_sum / max(count, 1), agree=agree / max(count, 1))
