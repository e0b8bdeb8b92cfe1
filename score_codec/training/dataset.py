"""Train a student from a compressed label store: a map-style dataset that replays the dump.

``CompressedSoftLabelDataset(images, store)`` returns ``(view, soft_label_logits, class, index)`` where
``view`` is exactly the teacher's input for that image in the current epoch (stored crop, flip and the
batch's CutMix / Mixup, see :mod:`score_codec.training.replay`) and ``soft_label_logits`` is the decoded row.

DataLoader contract (no patched PyTorch):

* ``__getitems__`` serves a whole batch with one vectorised label decode; labels are keyed by dataset
  index and epoch, never by the order in which a worker happens to be called.
* The epoch lives in a shared-memory tensor, so :meth:`set_epoch` in the main process reaches
  persistent workers.  A dump with more than one row per image refuses to serve before
  :meth:`set_epoch` (or ``epoch=``) was given: there is no silent epoch 0.
* Only paths and numpy tables are held; the store is opened lazily in each process (and reopened
  if the pid changes), and open handles are dropped when the dataset is pickled, so fork, spawn and
  forkserver workers all work.
* With ``decode_labels`` the store's decode tables are built once, when the dataset is made.  Workers
  started by fork (the default on Linux) share those pages with the main process instead of building a
  copy each, every epoch; spawn and forkserver workers build their own on first use.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .augment import hflip, resized_crop
from .images import load_images
from .normalize import normalization_from_attrs, normalize_views
from ..errors import InputError
from .replay import EpochPlan, open_store, replay_mix_
from ..store.dense import DenseFactors, dense_bytes
from ..store.meta import MIX_NONE
from ..store.reader import LabelStore

__all__ = ["CompressedSoftLabelDataset", "LabelDecoder"]

Sample = Tuple[torch.Tensor, torch.Tensor, int, int]


def _store_path(store) -> Tuple[Optional[str], Optional[type]]:
    """Where and how to reopen ``store`` in another process: (path, class) or (None, None) if unknown."""
    if isinstance(store, (str, os.PathLike)):
        return os.fspath(store), None
    path = getattr(store, "path", None)
    return (os.fspath(path), type(store)) if path is not None else (None, None)


def _shareable_tables(store) -> Optional[DenseFactors]:
    """The CPU decode tables of a :class:`LabelStore` (None for other stores, or tables larger than the
    store's ``max_dense_bytes``), with the parts that are otherwise made on first decode made now, so
    fork-started workers only read these pages."""
    if not isinstance(store, LabelStore) or dense_bytes(store) > store.max_dense_bytes:
        return None
    tables = store.factors("cpu")
    has = np.flatnonzero(np.asarray(store.ks) > 0)
    if len(has):
        tables.rows(has[:1], np.zeros(1, dtype=np.int64))
    return tables


class CompressedSoftLabelDataset:
    """Images plus a label store, replayed epoch by epoch.

    Args:
        images: an image-folder path (torchvision ImageFolder order), a ``"fashion-mnist[:split[:N]]"``
            spec (see :func:`score_codec.training.images.load_images`) or any indexable of (float image tensor
            (C, H, W) in [0, 1], class); dataset index n is store image n.
        store: a store path or LabelStore (reopened from its ``path`` in worker processes).
        epoch: the epoch to serve (row ``epoch`` of every label matrix); None means "not set yet".
        transform: applied to each final view (after the store's normalisation), e.g. extra augmentation.
        decode_labels: False returns an empty label tensor; decode on the GPU with :class:`LabelDecoder`.
        normalize: apply the input normalisation the store records (``(view - mean) / std`` per channel,
            ``relabel(..., normalize=...)``) after replaying each view, so views equal the teacher's inputs;
            False serves [0, 1] views for a pipeline that normalises by itself.  Stores without a recorded
            normalisation serve [0, 1] views either way.
    """

    def __init__(self, images: Union[str, os.PathLike, Sequence], store, epoch: Optional[int] = None,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, decode_labels: bool = True,
                 normalize: bool = True) -> None:
        self.images = load_images(images) if isinstance(images, (str, os.PathLike)) else images
        self._path, self._cls = _store_path(store)
        self._store = store if not isinstance(store, (str, os.PathLike)) else None
        self._pid = os.getpid() if self._store is not None else None
        self.transform, self.decode_labels = transform, bool(decode_labels)
        s = self.store
        self.num_images, self.num_classes = len(s), int(s.num_classes)
        if len(self.images) != self.num_images:
            raise InputError(f"{len(self.images)} images but the label store {self._path} has {self.num_images}")
        self._check_classes(np.asarray(s.labels))
        ks = np.asarray(s.ks)
        # epochs every image has a row for; a pooled store serves its source's epochs from its kept views
        self.epochs = int(s.source_epochs) if getattr(s, "pool", None) else (int(ks.min()) if len(ks) else 0)
        self.epoch_dependent = bool(len(ks) and (ks.max() > 1 or self.epochs > 1))
        aug = s.aug_reader
        self.input_size = int(aug.attrs["input_size"]) if "input_size" in aug.attrs else None
        if self.input_size is None or aug.num_rows == 0:
            raise InputError(f"label store {self._path}: no augmentation metadata (rows and attrs['input_size']) "
                             f"to replay views from")
        self._tables = _shareable_tables(s) if self.decode_labels else None
        #: (mean, std) the store records for the teacher's inputs, or None; applied to views when ``normalize``
        self.normalization = normalization_from_attrs(aug.attrs, f"label store {self._path}")
        self.normalize = bool(normalize)
        # -1 means "never set"; a shared-memory tensor so persistent workers see set_epoch
        self._epoch = torch.full((1,), -1, dtype=torch.int64).share_memory_()
        self._plan: Optional[EpochPlan] = None
        if epoch is not None:
            self.set_epoch(epoch)
        elif not self.epoch_dependent:
            self._epoch[0] = 0

    def _check_classes(self, stored: np.ndarray) -> None:
        """Refuse images whose classes disagree with the store's (a class-order or file-order mismatch)."""
        targets = getattr(self.images, "targets", None)
        if targets is None:
            return
        targets = np.asarray(targets, dtype=np.int64)
        bad = np.flatnonzero((stored >= 0) & (stored != targets))
        if len(bad):
            i = int(bad[0])
            raise InputError(f"image {i} has class {targets[i]} but the label store {self._path} says {stored[i]} "
                             f"({len(bad)} of {len(stored)} images disagree): the images are not in the order "
                             f"the store was written in")

    # -- per-process state -------------------------------------------------------------------------
    @property
    def store(self):
        """The label store, opened once per process."""
        if self._store is None or self._pid != os.getpid():
            if self._path is None:
                raise InputError("the label store has no path attribute, so worker processes cannot reopen it")
            self._store = self._cls(self._path) if self._cls is not None else open_store(self._path)
            self._pid, self._plan = os.getpid(), None
        return self._store

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if self._path is not None:
            state["_store"] = None   # file handles do not cross processes; reopened lazily
        state["_plan"] = None
        state["_tables"] = None  # rebuilt on first use rather than sent through a pipe
        return state

    # -- epochs --------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Serve row ``epoch`` of every label matrix (and that epoch's crops and mixes) from now on,
        in this process and in every DataLoader worker, persistent ones included.

        A pooled store (one that kept n of its source's K label epochs) accepts the source's epochs 0..K-1 and
        serves kept view ``epoch mod n`` (:meth:`~score_codec.LabelStore.view_for_epoch`): its labels, crops,
        flips and mixes are exactly those of source epoch ``store.kept_epochs[epoch mod n]``."""
        if not 0 <= int(epoch) < max(self.epochs, 1):
            raise InputError(f"epoch {epoch} is outside the dump's {self.epochs} epochs "
                             f"(label store {self._path})")
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        e = int(self._epoch[0])
        if e < 0:
            raise InputError(f"label store {self._path} holds {self.epochs} epochs of labels; call "
                             f"dataset.set_epoch(e) before each epoch (no silent epoch 0)")
        return e

    @property
    def view(self) -> int:
        """The stored view the current epoch replays (the epoch itself unless the store is pooled)."""
        return _view_for_epoch(self.store, self.epoch)

    def plan(self) -> EpochPlan:
        """This process's lookups for the current epoch (rebuilt when the epoch changes)."""
        v = self.view
        if self._plan is None or self._plan.epoch != v:
            self._plan = EpochPlan.from_store(self.store, self.num_images, v)
        return self._plan

    # -- access ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_images

    def _view(self, plan: EpochPlan, i: int) -> Tuple[torch.Tensor, int]:
        img, cls = self.images[int(i)]
        v = resized_crop(torch.as_tensor(img), torch.from_numpy(plan.coords[i]), self.input_size)
        return (hflip(v) if plan.flip[i] else v), int(cls)

    def views(self, indices: Sequence[int]) -> torch.Tensor:
        """The teacher's inputs (B, C, S, S) for these dataset indices in the current epoch (before
        ``transform``): crop, flip, the stored mix with each row's partner, then the store's normalisation
        (unless ``normalize=False``)."""
        return self._normalized(self._views_and_classes(indices)[0])

    def _normalized(self, views: torch.Tensor) -> torch.Tensor:
        """The last step of view production: the recorded normalisation, as relabel applied it."""
        return normalize_views(views, self.normalization) if self.normalize else views

    def _views_and_classes(self, indices: Sequence[int]) -> Tuple[torch.Tensor, List[int]]:
        plan = self.plan()
        ids = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.num_images):
            raise InputError(f"dataset index out of range [0, {self.num_images}): {ids.min()}..{ids.max()}")
        miss = plan.missing(ids)
        if len(miss):
            raise InputError(f"label store {self._path} has no row for image {miss[0]} in epoch {plan.epoch}")
        partners = plan.partner[ids]
        mixed = partners >= 0
        # One tensor holds the requested rows, then the partners outside them (a rank's part of a stored
        # batch); each image is cropped once and the batch is mixed in place, so a whole stored batch costs
        # one crop per image, one paste or blend per row and no copy of the batch.
        need = np.concatenate([ids, np.setdiff1d(partners[mixed], ids)])
        first: dict = {}
        classes: List[int] = []
        out: Optional[torch.Tensor] = None
        for k, n in enumerate(need.tolist()):
            j = first.get(n)
            if j is not None:                    # a repeated id (a padded shard): copy its view
                out[k] = out[j]
                classes.append(classes[j])
                continue
            v, cls = self._view(plan, n)
            if out is None:
                out = torch.empty((len(need),) + tuple(v.shape), dtype=v.dtype)
            elif v.shape != out.shape[1:]:
                raise InputError(f"image {n} gives a view of shape {tuple(v.shape)}, image {int(need[0])} one of "
                                 f"{tuple(out.shape[1:])}: every image needs the same number of channels")
            out[k] = v
            first[n] = k
            classes.append(cls)
        if out is None:
            raise InputError(f"no dataset indices given (label store {self._path})")
        b = len(ids)
        if mixed.any():
            rows = np.array([first[int(p)] if p >= 0 else -1 for p in partners], dtype=np.int64)
            bi = plan.batch[ids]
            kind = np.where(mixed, plan.mix_type[bi], MIX_NONE)
            replay_mix_(out, rows, kind, plan.lam[bi], plan.bbox[bi])
        return (out if len(need) == b else out[:b]), classes[:b]

    def labels(self, indices: Sequence[int]) -> torch.Tensor:
        """Decoded logits (B, C) float32 of these indices in the current epoch, one batched decode."""
        ids = np.ascontiguousarray(indices, dtype=np.int64).reshape(-1)
        augs = np.full(len(ids), self.view if self.epoch_dependent else 0, dtype=np.int64)
        return self._tables.rows(ids, augs) if self._tables is not None else self.store.rows(ids, augs)

    def __getitems__(self, indices: Sequence[int]) -> List[Sample]:
        """A batch as a list of samples (the DataLoader passes it to ``collate_fn``)."""
        views, targets = self._views_and_classes(indices)
        views = self._normalized(views)
        if self.transform is not None:
            views = [self.transform(v) for v in views]   # collate_fn stacks the samples; no stack here
        if self.decode_labels:
            labels = torch.as_tensor(self.labels(indices))
        else:
            labels = torch.empty(len(views), 0)
        return [(views[k], labels[k], targets[k], int(i)) for k, i in enumerate(indices)]

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([int(index)])[0]


def _view_for_epoch(store, epoch: int) -> int:
    """``store.view_for_epoch(epoch)``, or ``epoch`` for store-like objects without pooling."""
    f = getattr(store, "view_for_epoch", None)
    return int(epoch) if f is None else int(f(epoch))


class LabelDecoder:
    """Decode a batch of (image, view) label rows on ``device`` with one batched call.

    The store's factors are decoded by ``LabelStore.rows(..., device=device)``, which keeps them on
    the device, so the training loop can fetch labels next to the student instead of in the workers.
    """

    def __init__(self, store, device: Union[str, torch.device] = "cuda") -> None:
        self.store = open_store(store)
        self.device = torch.device(device)

    def __call__(self, image_ids, view_ids) -> torch.Tensor:
        """``image_ids`` (B,) int and ``view_ids`` (B,) int or one int (the label epoch being replayed: view
        ``view_ids`` of each image) -> (B, C) float32 logits on ``device``."""
        ids = np.asarray(torch.as_tensor(image_ids).cpu(), dtype=np.int64).reshape(-1)
        ep = np.broadcast_to(np.asarray(torch.as_tensor(view_ids).cpu(), dtype=np.int64), ids.shape).copy()
        return torch.as_tensor(self.store.rows(ids, ep, device=self.device)).to(self.device)
