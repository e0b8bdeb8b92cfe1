"""SRe2L / CDA / CV-DD dumps (``epoch_{e}/batch_{b}.tar``, 6-item lists) and LPLD (+ sampler json).

Plain SRe2L stores no image indices: rows are mapped to images by replaying the relabel sampler
(:mod:`.sampler`) and the mapping is checked by :mod:`.order_check` (views of one image in two epochs
must be more alike than views of different images; no accurate teacher needed; ``check_mapping=False``
/ ``--trust-order`` skips it).  LPLD adds ``sampler_indices_epoch.json``
(``{"<epoch>": [dataset indices in batch order]}``), which is used instead.
"""
from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..errors import FormatError, InputError
from .base import BatchRecord, DumpReader, numbered, register_format
from .batchfile import merge_style, parse_head
from .order_check import MappingCheck, argmax_test
from .safe_load import safe_torch_load
from .sampler import sampler_batches

__all__ = ["EpochDumpReader", "SRe2LReader", "LPLDReader", "epoch_layout", "LPLD_JSON", "first_item_count"]

log = logging.getLogger(__name__)
LPLD_JSON = "sampler_indices_epoch.json"
HEAD = "[coords, flip, mix_index, mix_lam, mix_bbox, logits]"


def epoch_layout(root: str) -> List[Tuple[int, List[str]]]:
    """``[(epoch, [batch file paths in batch order])]`` of an epoch-structured dump.

    Only ``epoch_<n>`` directories and ``batch_<n>.tar`` files are looked at (numerically sorted; other
    entries are ignored, never counted).  Raises FormatError on gaps or a flat/epoch mixed layout.
    """
    if not os.path.isdir(root):
        raise InputError(f"{root}: dump directory does not exist")
    epochs = [(e, p) for e, p in numbered(root, r"epoch_(\d+)") if os.path.isdir(p)]
    if not epochs:
        raise FormatError(f"{root}: no epoch_<n> directories (expected epoch_0/batch_0.tar ...)")
    if numbered(root, r"batch_(\d+)\.tar"):
        raise FormatError(f"{root}: mixed layout: both epoch_<n>/ directories and flat batch_<n>.tar files")
    out = []
    for want, (e, p) in enumerate(epochs):
        if e != want:
            raise FormatError(f"{root}: epoch directories must be epoch_0..epoch_{len(epochs) - 1}; epoch_{want} is missing")
        files = numbered(p, r"batch_(\d+)\.tar")
        if not files:
            raise FormatError(f"{p}: no batch_<n>.tar files")
        for wb, (b, _) in enumerate(files):
            if b != wb:
                raise FormatError(f"{p}: batch files must be batch_0.tar..batch_{len(files) - 1}.tar; batch_{wb}.tar is missing")
        out.append((e, [f for _, f in files]))
    return out


@functools.lru_cache(maxsize=16)
def _first_items(root: str, mtime: float) -> int:
    # mapped, not read: the item count is in the pickle, and encode reads every file's tensors once later
    obj = safe_torch_load(os.path.join(root, "epoch_0", "batch_0.tar"), mmap=True)
    return len(obj) if isinstance(obj, list) else -1


def first_item_count(root: str) -> int:
    """Length of the list in ``epoch_0/batch_0.tar`` (-1: not a list; 0: no such file)."""
    p = os.path.join(root, "epoch_0", "batch_0.tar")
    if not os.path.isfile(p):
        return 0
    return _first_items(os.path.abspath(root), os.path.getmtime(p))


class EpochDumpReader(DumpReader):
    """Shared streaming of ``epoch_{e}/batch_{b}.tar`` dumps; subclasses map rows to images."""

    items: int = 6
    layout_desc: str = HEAD

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isdir(os.path.join(path, "epoch_0")) and first_item_count(path) == cls.items

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.layout = epoch_layout(self.path)
        self.attrs.update(epochs=len(self.layout), batches_per_epoch=[len(f) for _, f in self.layout], style={})

    def num_files(self) -> int:
        return sum(len(f) for _, f in self.layout)

    def summary(self) -> str:
        nb = self.attrs["batches_per_epoch"]
        return f"{self.description}: {len(self.layout)} epochs x {nb[0]} batch files ({self.items}-item lists)"

    def load(self, path: str, epoch: int, batch: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[Any]]:
        """Load and validate one batch file: (logits, rows, batch record, the full item list)."""
        obj = safe_torch_load(path, mmap=self.scan_only)
        if not isinstance(obj, list) or len(obj) != self.items:
            found = f"a list of {len(obj)} items" if isinstance(obj, list) else type(obj).__name__
            raise FormatError(f"{path}: expected a list of {self.items} items {self.layout_desc} ({self.description}), "
                              f"found {found} (mixed formats?)")
        logits, rows, rec, style = parse_head(obj, path, epoch, batch)
        self.check_logits(logits, path)
        merge_style(self.attrs["style"], style, path)
        return logits, rows, rec, obj

    def map_rows(self, epoch: int, batch: int, rows: np.ndarray, items: List[Any], path: str) -> None:  # pragma: no cover
        """Fill ``rows['image']`` for one file."""
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> None:
        """Hook after the last file of an epoch."""

    def batches(self) -> Iterator[BatchRecord]:
        for e, files in self.layout:
            for b, path in enumerate(files):
                logits, rows, rec, items = self.load(path, e, b)
                self.map_rows(e, b, rows, items, path)
                if rows["image"].size and rows["image"].min() < 0:
                    raise FormatError(f"{path}: negative dataset index {int(rows['image'].min())}")
                yield BatchRecord(path, logits, rows, rec)
            self.end_epoch(e)


@register_format
class SRe2LReader(EpochDumpReader):
    """SRe2L / CDA relabel dumps: rows mapped by replaying the seed-42 RandomSampler."""

    name = "sre2l"
    description = "SRe2L/CDA relabel dump (epoch_e/batch_b.tar, sampler replay)"
    priority = 50

    @classmethod
    def detect(cls, path: str) -> bool:
        return super().detect(path) and not os.path.isfile(os.path.join(path, LPLD_JSON))

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        nb = [len(f) for _, f in self.layout]
        if len(set(nb)) != 1:
            e = next(i for i, n in enumerate(nb) if n != nb[0])
            raise FormatError(f"{self.path}: epoch_{e} has {nb[e]} batch files, epoch_0 has {nb[0]} "
                              f"(a pruned LPLD dump needs its {LPLD_JSON})")
        files0 = self.layout[0][1]
        self.batch_size = self._rows_in(files0[0])
        self.num_images = self.batch_size * (len(files0) - 1) + self._rows_in(files0[-1])
        self.attrs.update(mapping="sampler", seed=self.seed, sampler_draws=self.sampler_draws,
                          batch_size=self.batch_size, num_images=self.num_images, torch_version=torch.__version__)
        self._sampler = sampler_batches(self.num_images, self.batch_size, len(self.layout), self.seed, self.sampler_draws)
        self._epoch_batches: List[np.ndarray] = []
        self._argmax: List[List[np.ndarray]] = []
        self._class: Optional[np.ndarray] = None
        # the other sampler-draw count is replayed alongside, so a torch-version mismatch can be named
        self._other = 3 - self.sampler_draws
        self._other_sampler = sampler_batches(self.num_images, self.batch_size, len(self.layout), self.seed, self._other)
        self._other_batches: List[np.ndarray] = []
        multi = len(self.layout) > 1
        self._check = MappingCheck(self.num_images, (self.sampler_draws, self._other)) if self.check_mapping and multi else None
        if not self.check_mapping:
            log.warning("%s: row-to-image mapping not checked (--trust-order): a wrong --seed or --sampler-draws "
                        "would silently pair labels with the wrong images", self.path)

    def summary(self) -> str:
        return (f"{super().summary()}, batch size {self.batch_size}, {self.num_images} images, "
                f"sampler seed {self.seed} with {self.sampler_draws} draw(s) per epoch")

    @staticmethod
    def _rows_in(path: str) -> int:
        obj = safe_torch_load(path, mmap=True)   # only a shape is needed: the tensors are mapped, not read
        if not isinstance(obj, list) or len(obj) < 2 or not isinstance(obj[1], torch.Tensor) or obj[1].ndim != 1:
            raise FormatError(f"{path}: expected item 1 (flip) to be a [B] tensor of an SRe2L batch list")
        return int(obj[1].shape[0])

    def map_rows(self, epoch: int, batch: int, rows: np.ndarray, items: List[Any], path: str) -> None:
        if batch == 0:
            self._epoch_batches = next(self._sampler)
            self._other_batches = next(self._other_sampler)
            self._argmax.append([])
        want = self._epoch_batches[batch]
        if len(want) != len(rows):
            raise FormatError(f"{path}: the sampler replay (N={self.num_images}, batch size {self.batch_size}) expects "
                              f"{len(want)} rows, the file has {len(rows)}")
        rows["image"] = want
        if self._class is None:
            self._class = self.labels()
            log.info("%s", self.label_note)
        # the mapping test reads epoch 0's argmax and, until it is settled, every epoch's rows; with
        # --trust-order (or once settled) the logits are not touched here (a widening copy per file)
        if not self.check_mapping or (epoch > 0 and self._check is None):
            return
        logits = items[5].float().numpy()
        if self.scan_only:   # values unchecked so far; a NaN must not pass for a mapping failure
            self.check_values(logits, path)
        if epoch == 0:
            self._argmax[-1].append(np.asarray(logits.argmax(1), dtype=np.int64))
        if self._check is not None:
            self._check.add(epoch, {self.sampler_draws: want, self._other: self._other_batches[batch]}, logits)

    def end_epoch(self, epoch: int) -> None:
        last = epoch == len(self.layout) - 1
        # test early (epochs 1, 3, 7, ...) so a wrong mapping fails fast; decide at the last epoch at the latest
        if last or (epoch >= 1 and (epoch + 1) & epoch == 0):
            self.check_sampler(final=last)

    def _share(self, epochs: List[int], draws: int) -> Tuple[float, int]:
        gen = sampler_batches(self.num_images, self.batch_size, max(epochs) + 1, self.seed, draws)
        hit = tot = 0
        for e, bl in enumerate(gen):
            if e not in epochs:
                continue
            img = np.concatenate(bl)
            am = np.concatenate(self._argmax[e])
            cls = self._class[img]
            known = cls >= 0
            hit += int((am[known] == cls[known]).sum())
            tot += int(known.sum())
        return (hit / tot if tot else float("nan")), tot



    def check_sampler(self, final: bool = True) -> None:
        """Raise InputError if the replayed mapping does not fit the dump (see :mod:`.order_check`).

        Before the ``final`` call an inconclusive result waits for more epochs."""
        if not self.check_mapping or getattr(self, "_mapping_ok", False):
            return
        chance = 1.0 / self.num_classes
        known = self._class is not None and bool((self._class >= 0).any())
        if known and final:
            share, tot = self._share([0], self.sampler_draws)
            log.info("sampler check: %.1f%% of %d epoch-0 rows have argmax = class of the mapped image (chance %.1f%%)",
                     100 * share, tot, 100 * chance)
            self.attrs["sampler_check_argmax"] = round(share, 4)
        if self._check is None:   # one epoch: only the teacher's argmax can tell
            share, tot = self._share([0], self.sampler_draws) if known else (0.0, 0)
            if not known:
                log.warning("%s: one epoch and unknown classes: the row-to-image mapping cannot be checked", self.path)
                return
            z, ok = argmax_test(share, tot, self.num_classes)
            if not ok:
                raise InputError(
                    f"{self.path}: cannot confirm the row-to-image mapping of this one-epoch dump: {100 * share:.1f}% of "
                    f"rows have the mapped image's class as argmax (chance {100 * chance:.1f}%, z = {z:.1f} < 4). Check "
                    f"--seed (used {self.seed}) and the classes ({self.label_note}); with an untrained teacher pass "
                    f"--trust-order")
            return
        auc, z, pairs = self._check.test(self.sampler_draws)
        self.attrs["sampler_check"] = dict(auc=round(auc, 4), z=round(z, 2), pairs=pairs)
        log.info("sampler check: an image's epoch-0 row is closer to its own later rows than to another image's in "
                 "%.1f%% of %d pairs (z = %.1f; 50%% means unrelated)", 100 * auc, pairs, z)
        if MappingCheck.passes(auc, z):
            self._mapping_ok, self._check = True, None   # settled: stop collecting
            return
        other = self._other
        alt_auc, alt_z, _ = self._check.test(other)
        if MappingCheck.passes(alt_auc, alt_z):
            raise InputError(
                f"{self.path}: sampler replay does not match the epochs after the first: an image's rows are no more "
                f"alike than rows of different images (AUC {100 * auc:.1f}%, z = {z:.1f}), while with {other} sampler draw(s) per "
                f"epoch they are (AUC {100 * alt_auc:.1f}%, z = {alt_z:.1f}). This is the torch-version sampler "
                f"hazard: the dump's torch drew RandomSampler permutations {other} time(s) per epoch, this replay drew "
                f"{self.sampler_draws}; rerun with --sampler-draws {other}")
        if not final:
            return
        raise InputError(
            f"{self.path}: rows do not match their images: an image's epoch-0 row is no closer to its rows of later "
            f"epochs than to other images' rows (AUC {100 * auc:.1f}% over {pairs} pairs, z = {z:.1f}; needed z >= 4 "
            f"and AUC >= 58%). Check --seed (used {self.seed}) and that this is an SRe2L dump, or pass --trust-order "
            f"to skip the check")


@register_format
class LPLDReader(EpochDumpReader):
    """LPLD dumps: SRe2L lists plus ``sampler_indices_epoch.json`` (possibly pruned: fewer batches)."""

    name = "lpld"
    description = "LPLD dump (epoch_e/batch_b.tar + sampler_indices_epoch.json)"
    priority = 40

    @classmethod
    def detect(cls, path: str) -> bool:
        return os.path.isfile(os.path.join(path, LPLD_JSON)) and super().detect(path)

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        jp = os.path.join(self.path, LPLD_JSON)
        try:
            with open(jp) as fh:
                raw = json.load(fh)
        except (OSError, ValueError) as exc:
            raise FormatError(f"{jp}: cannot read the sampler json ({exc})") from None
        if not isinstance(raw, dict):
            raise FormatError(f"{jp}: expected an object {{\"<epoch>\": [indices]}}, found {type(raw).__name__}")
        self.index: Dict[int, np.ndarray] = {}
        for e, _ in self.layout:
            if str(e) not in raw:
                raise FormatError(f"{jp}: no entry for epoch {e}")
            try:
                self.index[e] = np.asarray(raw[str(e)], dtype=np.int64).reshape(-1)
            except (TypeError, ValueError):
                raise FormatError(f"{jp}: epoch {e}: expected a list of integer dataset indices") from None
        self.attrs.update(mapping="json", json_epochs=sorted(raw, key=lambda k: int(k) if k.isdigit() else -1))
        # epochs in the json beyond the dumped ones are kept so the json writes back whole
        extra = {k: v for k, v in raw.items() if not (k.isdigit() and int(k) in self.index)}
        if extra:
            self.attrs["lpld_json_extra"] = extra
        self.num_images = int(max((int(v.max()) for v in self.index.values() if v.size), default=-1)) + 1
        num = self.options.get("num_images")
        if num is not None:
            if num < self.num_images:
                raise InputError(f"--num-images {num} but {jp} indexes image {self.num_images - 1}")
            self.num_images = int(num)
        self.attrs["num_images"] = self.num_images
        self._offset = 0

    def map_rows(self, epoch: int, batch: int, rows: np.ndarray, items: List[Any], path: str) -> None:
        if batch == 0:
            self._offset = 0
        idx = self.index[epoch]
        if self._offset + len(rows) > len(idx):
            raise FormatError(f"{path}: {LPLD_JSON} lists {len(idx)} indices for epoch {epoch}, the batch files hold more")
        rows["image"] = idx[self._offset:self._offset + len(rows)]
        self._offset += len(rows)

    def end_epoch(self, epoch: int) -> None:
        n = len(self.index[epoch])
        if epoch == len(self.layout) - 1 and self._offset < n:
            # a pruned dump's partial last epoch: the json may list the whole epoch; keep the unused tail
            self.attrs["lpld_json_tail"] = self.index[epoch][self._offset:].tolist()
            return
        if self._offset != n:
            raise FormatError(f"{self.path}: {LPLD_JSON} lists {len(self.index[epoch])} indices for epoch {epoch}, "
                              f"the batch files hold {self._offset} rows")
