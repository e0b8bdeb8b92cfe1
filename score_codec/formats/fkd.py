"""Original FKD dumps (szq0214/FKD): one ``torch.save`` file per image holding numpy arrays
``[coords [n, 4], flip bool [n], label]``; ``label`` is ``[n, 2, k]`` (top-k class ids as floats, then
probabilities), ``[n, 2]`` (top-1) or ``[n]`` (hard).

The codec stores logits, so each crop's FKD target becomes the log of its *marginal-smoothed*
distribution: the top-k probabilities at their classes, ``(1 - sum topk) / (C - k)`` elsewhere (FKD's
own ``Recover_soft_label``).  Softmax of that row is exactly the distribution FKD trains on; writing
back takes the top-k of the decoded distribution.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Iterator, List

import numpy as np
import torch

from ..errors import FormatError, InputError
from .base import BatchRecord, DumpReader, new_rows, register_format
from .safe_load import safe_torch_load
from .writers import _save, _writer, image_row_groups

__all__ = ["FKDReader", "fkd_files", "PROB_FLOOR"]

log = logging.getLogger(__name__)
#: probabilities are floored here before the log (fp16 files underflow to 0)
PROB_FLOOR = 1e-12


def fkd_files(root: str) -> List[str]:
    """Relative paths of every ``.tar`` under ``root``, in ImageFolder order (sorted dirs, sorted names)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.relpath(os.path.join(d, f), root) for f in sorted(files) if f.endswith(".tar")]
    return out


@register_format
class FKDReader(DumpReader):
    """Original FKD per-image soft-label files (top-k probabilities of ``num_crops`` crops)."""

    name = "fkd"
    description = "original FKD dump (one file per image, top-k probabilities)"
    priority = 70

    @classmethod
    def detect(cls, path: str) -> bool:
        if not os.path.isdir(path) or os.path.isdir(os.path.join(path, "epoch_0")):
            return False
        if any(f.startswith("batch_") and f.endswith(".tar") for f in os.listdir(path)):
            return False
        for d, dirs, files in os.walk(path):
            dirs.sort()
            tars = sorted(f for f in files if f.endswith(".tar"))
            if tars:
                obj = safe_torch_load(os.path.join(d, tars[0]))
                return isinstance(obj, list) and len(obj) == 3 and all(isinstance(x, np.ndarray) for x in obj)
        return False

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.files = fkd_files(self.path)
        if not self.files:
            raise FormatError(f"{self.path}: no per-image .tar files")
        classes = sorted({os.path.dirname(f) for f in self.files})
        self._class = np.array([classes.index(os.path.dirname(f)) for f in self.files], np.int64)
        self.num_images = len(self.files)
        self.num_classes = int(self.expected_classes or len(classes))
        self.attrs.update(fkd_files=self.files, style={}, num_classes=self.num_classes)

    def num_files(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.description}: {len(self.files)} image files, C={self.num_classes} (class folders; --num-classes overrides)"

    def labels(self) -> np.ndarray:
        self.label_note = "classes from the dump's class folders"
        return self._class if self.user_labels is None else super().labels()

    def _style(self, key: str, value: str, src: str) -> None:
        old = self.attrs["style"].setdefault(key, value)
        if old != value:
            raise FormatError(f"{src}: {key} is {value}, earlier files have {old} (mixed dump)")

    def batches(self) -> Iterator[BatchRecord]:
        c = self.num_classes
        for i, rel in enumerate(self.files):
            src = os.path.join(self.path, rel)
            obj = safe_torch_load(src)
            if not isinstance(obj, list) or len(obj) != 3 or not all(isinstance(x, np.ndarray) for x in obj):
                raise FormatError(f"{src}: expected [coords, flip, label] numpy arrays of an FKD file, found "
                                  f"{type(obj).__name__}")
            coords, flip, label = obj
            n = len(coords)
            if coords.shape != (n, 4) or coords.dtype.kind != "f":
                raise FormatError(f"{src}: coords must be float [n, 4], found {coords.dtype} {list(coords.shape)}")
            if coords.dtype == np.float64 and not np.array_equal(coords.astype(np.float32).astype(np.float64), coords):
                raise FormatError(f"{src}: float64 coords are not exactly representable in float32")
            if flip.shape != (n,) or flip.dtype != np.bool_:
                raise FormatError(f"{src}: flip must be bool [{n}], found {flip.dtype} {list(flip.shape)}")
            kind = {3: "topk", 2: "top1", 1: "hard"}.get(label.ndim, "")
            if not kind or label.shape[0] != n or (label.ndim > 1 and label.shape[1] != 2):
                raise FormatError(f"{src}: label must be [{n}, 2, k], [{n}, 2] or [{n}], found {list(label.shape)}")
            self._style("coords", str(coords.dtype), src)
            self._style("flip", str(flip.dtype), src)
            self._style("label", str(label.dtype), src)
            self._style("label_kind", kind, src)
            lab = label.astype(np.float64)
            if kind == "hard":
                ids, probs = lab[:, None], np.ones((n, 1))
            elif kind == "top1":
                ids, probs = lab[:, :1], lab[:, 1:]
            else:
                ids, probs = lab[:, 0], lab[:, 1]
                self._style("k", str(label.shape[2]), src)
            if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1.0001).any():
                raise InputError(f"{src}: probabilities must be finite and in [0, 1]")
            if (ids != np.round(ids)).any() or ids.min() < 0 or ids.max() >= c:
                raise InputError(f"{src}: class ids must be integers in [0, {c}), found [{ids.min()}, {ids.max()}] "
                                 f"(pass --num-classes)")
            k = ids.shape[1]
            rest = np.clip(1.0 - probs.sum(1, keepdims=True), 0, None) / max(c - k, 1)
            full = np.repeat(rest, c, axis=1)
            np.put_along_axis(full, ids.astype(np.int64), probs, axis=1)
            logits = np.log(np.maximum(full, PROB_FLOOR)).astype(np.float32)
            rows = new_rows(n)
            rows["image"], rows["epoch"], rows["batch"], rows["pos"] = i, np.arange(n), -1, np.arange(n)
            rows["coords"] = coords.astype(np.float32)
            rows["flip"] = flip
            yield BatchRecord(src, logits, rows, None)


@_writer("fkd")
def _write_fkd(src: Any, dst: str, opts: Dict[str, Any]) -> None:
    """One file per image: ``[coords, flip, top-k label]`` from decoded distributions."""
    attrs = src.aug.attrs
    style = attrs.get("style", {}) if attrs.get("format") == "fkd" else {}
    files = attrs.get("fkd_files")
    n = len(src.ks)
    if len(src.aug.rows) == 0:
        raise FormatError("the store has no augmentation rows (crop boxes), so it cannot be written as FKD files")
    kind = style.get("label_kind", "topk")
    k = int(style.get("k", opts.get("topk") or 5))
    labels = np.asarray(src.labels)
    for i, rows in image_row_groups(src.aug.rows, n):
        logits = src.rows(rows["image"].astype(np.int64), rows["aug"].astype(np.int64)).double()
        prob = torch.softmax(logits, 1)
        if kind == "hard":
            label = prob.argmax(1).double().numpy()
        else:
            val, ind = prob.topk(1 if kind == "top1" else min(k, prob.shape[1]), dim=1)
            label = np.stack([ind.double().numpy(), val.numpy()], axis=1)
            if kind == "top1":
                label = label[:, :, 0]
        rel = files[i] if files else os.path.join("train", f"class{int(labels[i]):03d}" if labels[i] >= 0 else "unknown",
                                                  f"img{i:06d}.tar")
        _save([rows["coords"].astype(style.get("coords", "float32")), rows["flip"].astype(np.bool_),
               label.astype(style.get("label", "float32"))], os.path.join(dst, rel))
