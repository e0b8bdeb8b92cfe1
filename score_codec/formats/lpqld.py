"""LPQLD dumps: flat ``batch_{g}.tar`` files (global batch number g) + ``sampler_indices_batch.json``
(``{"<g>": [dataset indices]}``).  Lists hold the SRe2L head with fp16 coords, uint8 ``mix_index`` and a
box of 0-d uint8 tensors; the last item is either full logits (6 items) or, with ``MR-k`` label
quantisation, top-k logits fp16 [B, k] followed by their class ids int16 [B, k] (7 items).

MR-k rows become full logit rows for the codec: the k stored logits at their classes and
``min(top-k) - FILL_GAP`` elsewhere, so the top-k of a row is the stored top-k.  Writing back takes
the top-k of the decoded row.  The RandAugment (``rand_params``) and IN-21K cutout variants are refused.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List

import numpy as np
import torch

from ..errors import FormatError, InputError
from .base import BatchRecord, DumpReader, numbered, register_format
from .batchfile import build_head, merge_style, parse_head
from .safe_load import safe_torch_load
from .writers import _batches, _save, _style, _writer

__all__ = ["LPQLDReader", "LPQLD_JSON", "FILL_GAP", "epochs_of_batches"]

LPQLD_JSON = "sampler_indices_batch.json"
#: logit gap between the smallest stored top-k value and the classes MR-k did not keep
FILL_GAP = 1.0


@register_format
class LPQLDReader(DumpReader):
    """LPQLD flat dumps, full logits or MR-k top-k."""

    name = "lpqld"
    description = "LPQLD dump (flat batch_g.tar + sampler_indices_batch.json)"
    priority = 30

    @classmethod
    def detect(cls, path: str) -> bool:
        return (os.path.isdir(path) and os.path.isfile(os.path.join(path, LPQLD_JSON))
                and os.path.isfile(os.path.join(path, "batch_0.tar")))

    def __init__(self, path: str, **kw: Any) -> None:
        super().__init__(path, **kw)
        if os.path.isdir(os.path.join(self.path, "epoch_0")):
            raise FormatError(f"{self.path}: mixed layout: both flat batch_<n>.tar files and epoch_<n>/ directories")
        self.files = numbered(self.path, r"batch_(\d+)\.tar")
        for want, (g, _) in enumerate(self.files):
            if g != want:
                raise FormatError(f"{self.path}: batch files must be batch_0.tar..batch_{len(self.files) - 1}.tar; "
                                  f"batch_{want}.tar is missing")
        jp = os.path.join(self.path, LPQLD_JSON)
        try:
            with open(jp) as fh:
                raw = json.load(fh)
            self.index = {int(k): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise FormatError(f"{jp}: expected {{\"<global batch>\": [dataset indices]}} ({exc})") from None
        missing = [g for g, _ in self.files if g not in self.index]
        if missing:
            raise FormatError(f"{jp}: no indices for batch {missing[0]}")
        self.num_images = int(self.options.get("num_images") or max(int(v.max()) for v in self.index.values() if v.size) + 1)
        self.epoch_of = epochs_of_batches([self.index[g] for g, _ in self.files], self.num_images)
        self.batches_per_epoch = self.epoch_of.count(0)
        self.attrs.update(style={}, mapping="json", num_images=self.num_images, batches_per_epoch=self.batches_per_epoch)

    def num_files(self) -> int:
        return len(self.files)

    def summary(self) -> str:
        return f"{self.description}: {len(self.files)} batch files, {self.num_images} images"

    def batches(self) -> Iterator[BatchRecord]:
        for g, path in self.files:
            obj = safe_torch_load(path)
            if isinstance(obj, list) and len(obj) in (7, 8) and _is_randaugment(obj):
                raise FormatError(f"{path}: a RandAugment LPQLD dump (rand_params at item 2, {len(obj)} items); "
                                  f"this variant is not supported")
            if not isinstance(obj, list) or len(obj) not in (6, 7):
                found = f"a list of {len(obj)} items" if isinstance(obj, list) else type(obj).__name__
                raise FormatError(f"{path}: expected a list of 6 items (full logits) or 7 (MR-k top-k), found {found} "
                                  f"(RandAugment / cutout variants are not supported)")
            epoch = self.epoch_of[g]
            logits, rows, rec, style = parse_head(obj, path, epoch, g)
            if len(obj) == 7:
                ind = obj[6]
                if not isinstance(ind, torch.Tensor) or tuple(ind.shape) != logits.shape or ind.dtype.is_floating_point:
                    raise FormatError(f"{path}: item 6 (top-k class ids) must be an integer tensor {list(logits.shape)}, "
                                      f"found {getattr(ind, 'dtype', type(ind).__name__)} {list(getattr(ind, 'shape', []))}")
                c = self.expected_classes
                if c is None:
                    raise InputError(f"{path}: MR-k top-k dumps do not record the class count; pass --num-classes")
                ids = ind.numpy().astype(np.int64)
                if ids.size and (ids.min() < 0 or ids.max() >= c):
                    raise InputError(f"{path}: top-k class ids must lie in [0, {c}), found [{ids.min()}, {ids.max()}]")
                style.update(topk=str(logits.shape[1]), topk_ids=str(ind.dtype).replace("torch.", ""))
                top = logits.astype(np.float32)
                full = np.repeat(top.min(1, keepdims=True) - FILL_GAP, c, axis=1)
                np.put_along_axis(full, ids, top, axis=1)
                logits = full.astype(np.float32)
            merge_style(self.attrs["style"], style, path)
            self.check_logits(logits, path)
            idx = self.index[g]
            if len(idx) != len(rows):
                raise FormatError(f"{path}: {LPQLD_JSON} lists {len(idx)} indices for batch {g}, the file has {len(rows)} rows")
            rows["image"] = idx
            yield BatchRecord(path, logits, rows, rec)


def _is_randaugment(obj: List[Any]) -> bool:
    """A 7- or 8-item list whose item 2 is RandAugment's parameters rather than the mix index: the MR-k
    layout (7 items) has float top-k logits at item 5 and integer class ids at item 6; RandAugment shifts
    the head by one, so item 5 is the CutMix box (a list or None) and the logits follow."""
    if len(obj) == 8:
        return True
    five, six = obj[5], obj[6]
    return not isinstance(five, torch.Tensor) or (isinstance(six, torch.Tensor) and six.dtype.is_floating_point)


def epochs_of_batches(batches: List[np.ndarray], num_images: int) -> List[int]:
    """Epoch of each global batch (its dataset indices, in file order): an epoch draws each image at most
    once, so a batch that repeats an image of the current epoch, or follows one that completed it, starts
    the next.  Unlike ``g // batches_per_epoch`` this holds for a short last batch of each epoch
    (drop_last=False) and for a pruned dump whose last epoch is cut short."""
    out, epoch = [], 0
    seen: set = set()
    for idx in batches:
        ids = set(int(i) for i in np.asarray(idx).reshape(-1))
        if (ids & seen) or len(seen) >= num_images:
            epoch, seen = epoch + 1, set()
        seen |= ids
        out.append(epoch)
    return out


@_writer("lpqld")
def _write_lpqld(src: Any, dst: str, opts: Dict[str, Any]) -> None:
    """Flat ``batch_{g}.tar`` + json; MR-k stores keep k (top-k of the decoded rows)."""
    index: Dict[str, List[int]] = {}
    for rows, rec, logits in _batches(src, opts.get("progress", False), "lpqld"):
        style = dict(_style(src, rec, opts.get("plain_ints", False)))
        g = int(rec["batch"])
        items = build_head(rows, rec, logits, style)
        if "topk" in style:
            val, ind = logits.topk(int(style["topk"]), dim=1)
            items[5] = val.to(getattr(torch, style.get("logits", "float16")))
            items.append(ind.to(getattr(torch, style.get("topk_ids", "int16"))))
        _save(items, os.path.join(dst, f"batch_{g}.tar"))
        index[str(g)] = rows["image"].astype(np.int64).tolist()
    with open(os.path.join(dst, LPQLD_JSON), "w") as fh:
        json.dump(index, fh)
