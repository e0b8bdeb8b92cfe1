"""Write label sources (a LabelStore or a DumpContents) back as dumps.

Every writer takes a *row source*: ``.aug`` (AugMeta), ``.num_classes``, ``.ks`` and
``.rows(image_ids, view_ids) -> (B, C) float32``.  Non-logit fields come from the AugMeta tables and the
``attrs['style']`` recorded by the reader, so they are written back bit-exactly; only logits are lossy.
Output is assembled in ``<dst>.partial-<pid>`` and renamed into place, so nothing half-written remains.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from typing import Any, Callable, Dict, Iterator, Tuple

import numpy as np
import torch
from ..progress import progress_bar

from ..errors import FormatError, InputError
from ..store.atomic import WriteLock, install
from ..store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE
from .batchfile import build_head

__all__ = ["WRITERS", "write_dump", "image_row_groups", "max_at_zero", "check_dump_replaceable"]

log = logging.getLogger(__name__)

Writer = Callable[[Any, str, Dict[str, Any]], None]
#: format name -> writer(src, tmp_dst, options)
WRITERS: Dict[str, Writer] = {}

_DEFAULT_STYLE = {
    MIX_CUTMIX: {"coords": "float32", "mix_index": "int64", "mix_lam": "float", "mix_bbox": "np:int64", "logits": "float16"},
    MIX_MIXUP: {"coords": "float32", "mix_index": "int64", "mix_lam": "float", "mix_bbox": "none", "logits": "float16"},
    MIX_NONE: {"coords": "float32", "mix_index": "none", "mix_lam": "none", "mix_bbox": "none", "logits": "float16"},
}


def _writer(name: str) -> Callable[[Writer], Writer]:
    def deco(fn: Writer) -> Writer:
        WRITERS[name] = fn
        return fn
    return deco


def image_row_groups(aug_rows: np.ndarray, n: int) -> Iterator[Tuple[int, np.ndarray]]:
    """``(image, its ROW_DTYPE rows ordered by aug)`` for every image in 0..n-1 (one sort, not n scans)."""
    order = np.lexsort((aug_rows["aug"], aug_rows["image"]))
    bounds = np.searchsorted(aug_rows["image"][order], np.arange(n + 1))
    for i in range(n):
        yield i, aug_rows[order[bounds[i]:bounds[i + 1]]]


def _batches(src: Any, progress: bool, what: str) -> Iterator[Tuple[np.ndarray, np.ndarray, torch.Tensor]]:
    aug = src.aug
    if len(aug.batches) == 0:
        raise FormatError(f"the store has no batch structure (it came from a "
                          f"{aug.attrs.get('format', 'batch-less')} source); decode it with --format fkd or npy")
    # a store decodes row-centred logits unless it kept the row means; a dump's own logits are exact
    enc = getattr(src, "encoding", None)
    if enc is None:
        enc = getattr(getattr(src, "store", None), "encoding", None)
    shift = enc is not None and not enc.get("keep_mean", False)
    for rec in progress_bar(aug.batches, desc=f"write {what}", unit="file", enabled=progress):
        rows = aug.rows[int(rec["row_start"]):int(rec["row_start"]) + int(rec["size"])]
        logits = src.rows(rows["image"].astype(np.int64), rows["aug"].astype(np.int64))
        yield rows, rec, max_at_zero(logits) if shift else logits


def max_at_zero(logits: torch.Tensor) -> torch.Tensor:
    """(B, C) logits shifted so that each row's largest is 0 (softmax is unchanged).

    Dumps hold fp16 logits, whose step grows with magnitude: row-centred logits put the few classes that
    carry the probability far from 0, where fp16 rounds them coarsely; after this shift they sit at and
    just below 0, where fp16 is finest.  Stores with row means (keep_mean) decode the teacher's own logits,
    which are written as they are."""
    return logits - logits.amax(dim=-1, keepdim=True) if logits.numel() else logits


def _style(src: Any, rec: np.ndarray, plain_ints: bool = False) -> Dict[str, str]:
    style = src.aug.attrs.get("style") or _DEFAULT_STYLE[int(rec["mix_type"])]
    if plain_ints and style.get("mix_bbox", "none") != "none":
        # torch >= 2.6 loads with weights_only=True, which refuses numpy scalars: Python ints load everywhere
        style = dict(style, mix_bbox=("tuple:" if style["mix_bbox"].startswith("tuple:") else "") + "int")
    return style


def _save(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)


def _epoch_writer(family: str) -> Writer:
    def write(src: Any, dst: str, opts: Dict[str, Any]) -> None:
        attrs = src.aug.attrs
        if family == "sre2l" and attrs.get("mapping", "sampler") != "sampler":
            log.warning("rows of this store were mapped to images by %s indices; SRe2L's loader maps them by sampler "
                        "replay, so use --format %s to keep the mapping", attrs.get("mapping"), attrs.get("format"))
        per_epoch: Dict[int, list] = {}
        # a pooled store numbers its kept epochs 0..n-1; the dump gets their source epoch numbers back
        kept = getattr(getattr(src, "store", src), "kept_epochs", None)
        for rows, rec, logits in _batches(src, opts.get("progress", False), family):
            style = _style(src, rec, opts.get("plain_ints", False))
            e, b = int(rec["epoch"]), int(rec["batch"])
            e = e if kept is None else int(kept[e])
            items = build_head(rows, rec, logits, style)
            if family in ("gvbsm", "edc"):
                items.append(torch.from_numpy(rows["image"].astype(np.int64)).to(getattr(torch, style.get("index", "int64"))))
            if family == "edc":
                st = attrs.get("edc_indices_status", {}).get(f"{e}/{b}")
                dt = getattr(torch, style.get("indices_status", "int64"))
                tail = [int(d) for d in style.get("indices_status_shape", "2x2").split("x") if d]
                items.append(torch.tensor(st, dtype=dt) if st is not None else torch.zeros([len(rows)] + tail, dtype=dt))
            per_epoch.setdefault(e, []).extend(rows["image"].tolist())
            _save(items, os.path.join(dst, f"epoch_{e}", f"batch_{b}.tar"))
        if family == "lpld":
            tail = attrs.get("lpld_json_tail")
            if tail:
                per_epoch[max(per_epoch)].extend(tail)
            out: Dict[str, Any] = {str(e): v for e, v in sorted(per_epoch.items())}
            out.update(attrs.get("lpld_json_extra", {}))
            with open(os.path.join(dst, "sampler_indices_epoch.json"), "w") as fh:
                json.dump(out, fh)
    return write


for _fam in ("sre2l", "lpld", "gvbsm", "edc"):
    WRITERS[_fam] = _epoch_writer(_fam)


@_writer("npy")
def _write_npy(src: Any, dst: str, opts: Dict[str, Any]) -> None:
    ks = np.asarray(src.ks)
    if len(ks) == 0 or (ks != ks[0]).any():
        raise FormatError(f"--format npy needs the same number of rows for every image; found K from {ks.min()} to {ks.max()}")
    n, k, c = len(ks), int(ks[0]), int(src.num_classes)
    out = np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=(n, k, c))
    step = max(1, 65536 // max(k, 1))
    for s in progress_bar(range(0, n, step), desc="write npy", unit="chunk", enabled=opts.get("progress", False)):
        e = min(n, s + step)
        img = np.repeat(np.arange(s, e), k)
        aug = np.tile(np.arange(k), e - s)
        out[s:e] = src.rows(img, aug).numpy().reshape(e - s, k, c)
    out.flush()
    del out


def write_dump(src: Any, dst: str, fmt: str, *, overwrite: bool = False, progress: bool = False,
               **options: Any) -> str:
    """Write ``src`` as a ``fmt`` dump at ``dst`` atomically; returns ``dst``.

    Raises InputError if ``dst`` exists (without ``overwrite``) or its parent is missing, FormatError if
    the source lacks what the format needs (e.g. batches for SRe2L).  ``plain_ints=True`` writes CutMix
    boxes as Python ints instead of the source's ``numpy.int64``, so ``torch.load``'s default
    ``weights_only=True`` (torch >= 2.6) accepts the files.  A store's row-centred logits are written shifted
    to a row maximum of 0 (:func:`max_at_zero`), so that the dump's fp16 adds no measurable error.
    """
    if fmt not in WRITERS:
        raise InputError(f"cannot write format {fmt!r}; writable: {', '.join(sorted(WRITERS))}")
    dst = os.fspath(dst)
    if os.path.exists(dst) and not overwrite:
        raise InputError(f"{dst}: destination exists (pass overwrite=True to replace it)")
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise InputError(f"{dst}: parent directory {parent} does not exist")
    if os.path.lexists(dst):
        check_dump_replaceable(dst, fmt)   # before any work: overwriting deletes only what a dump writer writes
    tmp = f"{dst}.partial-{os.getpid()}"
    with WriteLock(dst):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if fmt != "npy":
                os.makedirs(tmp)
            WRITERS[fmt](src, tmp, dict(options, progress=progress))
            # the old dump is deleted only once the new one is in place
            install(tmp, dst, lambda old: check_dump_replaceable(old, fmt))
        except BaseException:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            elif os.path.exists(tmp):
                os.remove(tmp)
            raise
    return dst


#: files a dump writer creates, relative to the dump's root (FKD keeps its source's own file names, *.tar)
_DUMP_FILES = re.compile(r"^(epoch_\d+/batch_\d+\.tar|batch_\d+\.tar|sampler_indices_epoch\.json|"
                         r"sampler_indices_batch\.json)$")


def check_dump_replaceable(dst: str, fmt: str) -> None:
    """InputError unless ``dst`` holds only files a ``fmt`` dump writer writes, so that overwriting it
    deletes nothing else (a folder of a user's own files is refused, not emptied)."""
    if os.path.islink(dst):
        raise InputError(f"{dst}: is a symbolic link; refusing to overwrite it")
    if os.path.isfile(dst):
        with open(dst, "rb") as fh:
            magic = fh.read(6)
        if fmt != "npy" or magic != b"\x93NUMPY":
            raise InputError(f"{dst}: is a file that no {fmt} dump writer wrote; refusing to overwrite it")
        return
    for d, _, files in os.walk(dst):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), dst).replace(os.sep, "/")
            if not (_DUMP_FILES.match(rel) or (fmt == "fkd" and rel.endswith(".tar"))):
                raise InputError(f"{dst}: holds {rel!r}, which a {fmt} dump writer does not write; refusing to "
                                 f"overwrite the folder (move that file out first)")
