"""Parse and rebuild the per-batch list of SRe2L-style dumps (SRe2L, LPLD, G-VBSM, EDC, LPQLD).

Common head of every list::

    [coords [B,4] float, flip [B] bool, mix_index [B] int | None, mix_lam float | None,
     mix_bbox [4 ints] | None, logits [B,C] fp16/fp32, ...family-specific tail]

:func:`parse_head` turns the first six items into AugMeta rows and a batch record plus a *style* dict
(the Python / numpy / torch types used), and :func:`build_head` inverts it bit-exactly from the style.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..errors import FormatError
from ..store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from .base import new_batch, new_rows

__all__ = ["parse_head", "build_head", "as_numpy", "merge_style"]

_TORCH_FLOATS = {torch.float16: "float16", torch.float32: "float32"}
_INT_DTYPES = {torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.uint8: "uint8"}


def as_numpy(x: Any, what: str, source: str) -> np.ndarray:
    """A tensor or ndarray item -> ndarray (no copy for tensors); anything else is a FormatError."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise FormatError(f"{source}: {what} must be a tensor, found {type(x).__name__}")


def _bbox_kind(v: Any) -> str:
    if isinstance(v, torch.Tensor) and v.ndim == 0 and v.dtype in _INT_DTYPES:
        return "tensor:" + _INT_DTYPES[v.dtype]
    if isinstance(v, np.integer):
        return "np:" + np.dtype(type(v)).name
    if isinstance(v, int) and not isinstance(v, bool):
        return "int"
    return ""


def parse_head(items: List[Any], source: str, epoch: int, batch: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, str]]:
    """Validate the first six items of a batch list.

    Returns (logits (B, C), rows ROW_DTYPE (B,) with epoch/batch/pos/coords/flip/mix_index set,
    batch record BATCH_DTYPE, style dict).  Raises FormatError naming ``source`` on any mismatch.
    """
    coords_t, flip_t, mix_index, mix_lam, mix_bbox, logits_t = items[:6]
    style: Dict[str, str] = {}
    if isinstance(coords_t, torch.Tensor) and coords_t.dtype in _TORCH_FLOATS:
        style["coords"] = _TORCH_FLOATS[coords_t.dtype]
    else:
        raise FormatError(f"{source}: item 0 (coords) must be a float16/float32 tensor, found "
                          f"{getattr(coords_t, 'dtype', type(coords_t).__name__)}")
    coords = coords_t.numpy()
    if coords.ndim != 2 or coords.shape[1] != 4:
        raise FormatError(f"{source}: item 0 (coords) must have shape [B, 4], found {list(coords.shape)}")
    b = coords.shape[0]
    if not isinstance(flip_t, torch.Tensor) or flip_t.dtype != torch.bool:
        raise FormatError(f"{source}: item 1 (flip) must be a bool tensor [B], found "
                          f"{getattr(flip_t, 'dtype', type(flip_t).__name__)} (LPLD IN-21K cutout dumps are not supported)")
    if tuple(flip_t.shape) != (b,):
        raise FormatError(f"{source}: item 1 (flip) must have shape [{b}], found {list(flip_t.shape)}")
    logits = as_numpy(logits_t, "item 5 (logits)", source)
    if logits.ndim != 2 or logits.shape[0] != b:
        raise FormatError(f"{source}: item 5 (logits) must have shape [{b}, C], found {list(logits.shape)}")
    style["logits"] = str(logits.dtype)
    rows = new_rows(b)
    rows["epoch"], rows["batch"], rows["pos"] = epoch, batch, np.arange(b)
    rows["coords"] = coords.astype(np.float32)  # fp16 -> fp32 is exact, so fp16 files write back bit-exactly
    rows["flip"] = flip_t.numpy()
    rec = new_batch(epoch, batch, b)
    if mix_index is None:
        style["mix_index"] = "none"
    else:
        if not isinstance(mix_index, torch.Tensor) or mix_index.dtype not in _INT_DTYPES or tuple(mix_index.shape) != (b,):
            raise FormatError(f"{source}: item 2 (mix_index) must be an integer tensor [{b}], found "
                              f"{getattr(mix_index, 'dtype', type(mix_index).__name__)} {list(getattr(mix_index, 'shape', []))}")
        mi = mix_index.numpy().astype(np.int64)
        if b and (mi.min() < 0 or mi.max() >= b):
            raise FormatError(f"{source}: item 2 (mix_index) must hold batch positions in [0, {b}), found "
                              f"[{mi.min()}, {mi.max()}]")
        style["mix_index"] = _INT_DTYPES[mix_index.dtype]
        rows["mix_index"] = mi
    if mix_lam is None:
        style["mix_lam"] = "none"
    elif isinstance(mix_lam, float):
        style["mix_lam"] = "float"
        rec["mix_lam"] = mix_lam
    elif isinstance(mix_lam, np.floating):
        style["mix_lam"] = "np:" + np.dtype(type(mix_lam)).name
        rec["mix_lam"] = float(mix_lam)
    else:
        raise FormatError(f"{source}: item 3 (mix_lam) must be a float or None, found {type(mix_lam).__name__}")
    if mix_bbox is None:
        style["mix_bbox"] = "none"
    else:
        if not isinstance(mix_bbox, (list, tuple)) or len(mix_bbox) != 4:
            raise FormatError(f"{source}: item 4 (mix_bbox) must be a list of 4 integers, found {type(mix_bbox).__name__}"
                              f" of length {len(mix_bbox) if hasattr(mix_bbox, '__len__') else '?'}")
        kinds = {_bbox_kind(v) for v in mix_bbox}
        if len(kinds) != 1 or "" in kinds:
            raise FormatError(f"{source}: item 4 (mix_bbox) must hold 4 integers of one type, found "
                              f"{[type(v).__name__ for v in mix_bbox]}")
        style["mix_bbox"] = ("tuple:" if isinstance(mix_bbox, tuple) else "") + kinds.pop()
        rec["mix_bbox"] = [int(v) for v in mix_bbox]
    if mix_index is None:
        rec["mix_type"] = MIX_NONE
    else:
        rec["mix_type"] = MIX_CUTMIX if mix_bbox is not None else MIX_MIXUP
    return logits, rows, rec, style


def merge_style(style: Dict[str, str], new: Dict[str, str], source: str) -> None:
    """Fold one file's style into the dump's; a file that differs is a mixed dump (FormatError)."""
    for k, v in new.items():
        old = style.setdefault(k, v)
        if old != v:
            raise FormatError(f"{source}: {k} is stored as {v}, earlier files store it as {old} "
                              f"(mixed dumps cannot be written back exactly)")


def _int_scalar(v: int, kind: str) -> Any:
    if kind == "int":
        return int(v)
    family, name = kind.split(":")
    if family == "np":
        return np.dtype(name).type(v)
    return torch.tensor(v, dtype=getattr(torch, name))


def build_head(rows: np.ndarray, rec: np.ndarray, logits: torch.Tensor, style: Dict[str, str]) -> List[Any]:
    """Rebuild the six-item head from AugMeta rows (B,), the batch record and (B, C) logits."""
    coords = torch.from_numpy(np.ascontiguousarray(rows["coords"])).to(getattr(torch, style.get("coords", "float32")))
    flip = torch.from_numpy(rows["flip"].astype(bool))
    kind = style.get("mix_index", "int64")
    mix_index = None if kind == "none" else torch.from_numpy(rows["mix_index"].astype(np.int64)).to(getattr(torch, kind))
    lam_kind = style.get("mix_lam", "float")
    lam_v = float(rec["mix_lam"])
    if lam_kind == "none":
        mix_lam = None
    elif lam_kind == "float":
        mix_lam = lam_v
    else:
        mix_lam = np.dtype(lam_kind.split(":")[1]).type(lam_v)
    bkind = style.get("mix_bbox", "np:int64")
    if bkind == "none":
        mix_bbox = None
    else:
        as_tuple = bkind.startswith("tuple:")
        bkind = bkind[len("tuple:"):] if as_tuple else bkind
        vals = [_int_scalar(int(v), bkind) for v in rec["mix_bbox"]]
        mix_bbox = tuple(vals) if as_tuple else vals
    out = logits.to(getattr(torch, style.get("logits", "float16"))).cpu()
    if math.isnan(lam_v) and lam_kind not in ("none",):
        raise FormatError("batch record has no mix_lam but the dump style stores one")
    return [coords, flip, mix_index, mix_lam, mix_bbox, out]
