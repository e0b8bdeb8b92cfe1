"""Distributed encoding with torch.distributed (``torchrun``): each rank writes its own shards.

Rank r encodes a contiguous block of images into ``<path>.dist-parts/rank-NNNNN`` (an ordinary
directory store); after a barrier rank 0 merges the parts: shards are renumbered and moved, index
entries and shared bases are concatenated in image order, and the manifest is written last.  With
per-image codecs and a rank or energy target the decoded labels are identical to a single-process run;
with ``ratio`` each rank meets the ratio on its own block, and ``method="shared"`` fits one basis per
class per rank.  Store-scope codecs (``global``, ``two-level``) are fitted once, on rank 0, over the whole
sequence (``fit_rows`` rows spread over it for the global basis; every image of a class for its class
basis); rank 0 saves the bases next to the parts, every rank encodes its block with them, and the merge
keeps one copy, so the store equals a one-process run.

    torchrun --nproc_per_node=4 my_encode.py     # where my_encode.py calls encode_distributed(...)
"""
from __future__ import annotations

import os
import shutil
import struct
import zlib
from typing import Any, Dict, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
import torch.distributed as dist

from ..codecs import get_codec
from ..codecs.global_basis import BasisEntry, BasisSet, FitSource
from ..errors import CorruptRecordError, InputError
from .allocate import fit_rate_control
from .atomic import WriteLock, install
from .bulk import encode
from .integrity import check_shard_file
from .indexio import make_manifest, write_index_file, write_manifest_file
from .layout import BASIS_INDEX_DTYPE, IMAGE_INDEX_DTYPE, INDEX_FILE, RECORDS_DATASET, SHARD_DIR, is_single_file, shard_name
from .meta import AugMeta
from .options import CodecOptions, split_codec_options
from .reader import LabelStore
from .writer import check_replaceable

__all__ = ["rank_and_world", "block_of", "encode_distributed", "merge_stores"]

_BASIS_OFFSET = 20  # byte offset of the basis id in a record header (docs/FORMAT.md 5.1)


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size) of the current process group, initialising gloo from torchrun's env if needed."""
    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return 0, 1
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def block_of(n: int, rank: int, world: int) -> range:
    """The contiguous block of ``range(n)`` that ``rank`` of ``world`` handles (sizes differ by <= 1)."""
    return range(rank * n // world, (rank + 1) * n // world)


def _patch_basis(rec: bytes, ids: np.ndarray) -> bytes:
    """``rec`` with its basis id mapped through ``ids`` (part id -> merged id)."""
    (basis,) = struct.unpack_from("<i", rec, _BASIS_OFFSET)
    if basis < 0 or int(ids[basis]) == basis:
        return rec
    out = bytearray(rec)
    struct.pack_into("<i", out, _BASIS_OFFSET, int(ids[basis]))
    return bytes(out)


def merge_stores(parts: Sequence[str], dst: str, meta: Optional[AugMeta] = None) -> None:
    """Concatenate directory stores ``parts`` (in image order) into a new store at ``dst``.

    The parts are consumed: shards are hard-linked into the merged store (copied where the file system has no
    hard links) and removed from the parts once it is in place, unless a part's records refer to shared bases
    whose ids change (the records are rewritten with new checksums).  A refused or interrupted merge leaves every
    part as it was.  Byte-identical bases (a global basis every part
    holds) are kept once.  The parts must share C and encoding options.
    """
    if is_single_file(dst):
        raise InputError(f"{dst}: a merged store is a directory; drop the .h5 suffix")
    stores = [LabelStore(p) for p in parts]
    if not stores:
        raise InputError("merge_stores needs at least one part")
    c, enc = stores[0].num_classes, stores[0].encoding
    for s in stores[1:]:
        if s.num_classes != c or s.encoding != enc:
            raise InputError(f"{s.path}: part has other classes or encoding options than {stores[0].path}")
    tmp = dst + ".merging"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, SHARD_DIR))
    moved: list = []               # part shard files linked into tmp: removed only once the merge has landed
    try:
        _merge_into(stores, tmp, c, enc, meta, moved)
    except BaseException:
        # a refused or interrupted merge leaves every part as it was (shards are linked, not moved)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with WriteLock(dst):
        install(tmp, dst, check_replaceable)   # the old store goes only once the merged one is in place
    for src in moved:
        os.remove(src)


def _link_or_copy(src: str, dst: str) -> None:
    """``dst`` holds ``src``'s bytes: a hard link where the file system allows one, else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _merge_into(stores: Sequence[LabelStore], tmp: str, c: int, enc: Dict[str, Any], meta: Optional[AugMeta],
                moved: list) -> None:
    """Write the merged store of ``stores`` into ``tmp``; part shards kept as they are are linked and listed
    in ``moved``."""
    index, shards = [], []
    table_rows: list = []          # merged basis table entries (tuples), blobs alongside
    blobs: list = []
    known: Dict[tuple, int] = {}   # (blob, rank, parent, flags, quant) -> merged id: identical bases stored once
    for s in stores:
        part_index = s.index.copy()
        # this part's basis ids -> merged ids (parents come first, so they are mapped before their children)
        ids = np.zeros(len(s.basis_table), dtype=np.int64)
        for j, e in enumerate(s.basis_table):
            blob = s._basis_blob[int(e["offset"]):int(e["offset"]) + int(e["length"])].tobytes()
            parent = int(ids[int(e["parent"])]) if int(e["parent"]) >= 0 else -1
            key = (blob, int(e["rank"]), parent, int(e["flags"]), int(e["quant"]))
            if key not in known:
                known[key] = len(table_rows)
                table_rows.append((sum(len(b) for b in blobs), len(blob), int(e["rank"]), zlib.crc32(blob), parent,
                                   int(e["flags"]), int(e["quant"])))
                blobs.append(blob)
            ids[j] = known[key]
        identity = bool(np.array_equal(ids, np.arange(len(ids))))
        remap = {}
        for j, entry in enumerate(s.manifest["shards"]):
            name = shard_name(len(shards))
            src = os.path.join(s.path, SHARD_DIR, entry["name"])
            # the merged manifest re-describes every shard: check the part's description first
            check_shard_file(src, entry)
            if len(s.basis_table) and not identity:
                data = s.shard_bytes(j)
                sel = np.flatnonzero(part_index["shard"] == j)
                out = bytearray(data)
                for i in sel:
                    off, ln = int(part_index["offset"][i]), int(part_index["length"][i])
                    old = data[off : off + ln]
                    if len(old) != ln or zlib.crc32(old) != int(part_index["crc32"][i]):
                        raise CorruptRecordError(f"{s.path}: record {i} fails its crc32 check; not merged")
                    rec = _patch_basis(old, ids)
                    out[off : off + ln] = rec
                    part_index["crc32"][i] = zlib.crc32(rec)
                with h5py.File(os.path.join(tmp, SHARD_DIR, name), "w") as f:
                    f.create_dataset(RECORDS_DATASET, data=np.frombuffer(bytes(out), np.uint8))
            else:
                _link_or_copy(src, os.path.join(tmp, SHARD_DIR, name))
                moved.append(src)
            remap[j] = len(shards)
            shards.append({"name": name, "bytes": int(entry["bytes"])})
        part_index["shard"] = np.vectorize(remap.get, otypes=[np.uint32])(part_index["shard"]) if len(part_index) else part_index["shard"]
        if len(ids):
            part_index["basis"] = np.where(part_index["basis"] >= 0, ids[np.maximum(part_index["basis"], 0)], -1)
        index.append(part_index)
    tables = [np.array(table_rows, dtype=BASIS_INDEX_DTYPE)]
    index_arr = np.concatenate(index).astype(IMAGE_INDEX_DTYPE)
    meta = meta or AugMeta()
    meta.validate(index_arr["k"].astype(np.int64))
    write_index_file(os.path.join(tmp, INDEX_FILE), c, enc, index_arr, np.concatenate(tables).astype(BASIS_INDEX_DTYPE),
                     b"".join(blobs), meta)
    write_manifest_file(tmp, make_manifest(len(index_arr), c, [e["bytes"] for e in shards], tmp))


def _fit_once(codec: Any, Y: Sequence[Any], labels: Optional[Sequence[int]], opts: CodecOptions,
              head: Any) -> BasisSet:
    """Fit a store-scope codec on the whole sequence, as a one-process :func:`encode` would."""
    ratio = opts.ratio
    c = int(torch.as_tensor(np.asarray(Y[0])).shape[-1])
    if opts.target_bytes is not None:
        ratio = 2.0 * c * sum(len(Y[i]) for i in range(len(Y))) / opts.target_bytes
    budget = None if ratio is None else 2.0 * c / ratio
    rank = opts.rank
    if rank is None and opts.energy is None and budget is None:
        rank = 8
    src = FitSource(Y, labels)
    budget, kw = fit_rate_control(opts, src, budget)
    return codec.fit(src, opts.quant, rank=rank, energy=opts.energy, budget_per_row=budget,
                     residual=opts.residual, device=opts.device, head=head, **kw)


def encode_distributed(Y: Sequence[Any], path: str, options: Optional[CodecOptions] = None, *,
                       labels: Optional[Sequence[int]] = None, meta: Optional[AugMeta] = None,
                       overwrite: bool = False, **kwargs: Any) -> Optional[Dict[str, Any]]:
    """:func:`score_codec.encode` across the ranks of a torch.distributed job.

    Every rank passes the same arguments (``Y`` may be a lazy sequence: each rank only touches its
    block); ``options`` and ``kwargs`` are those of :func:`score_codec.encode`.  Returns the store's
    stats on rank 0 and ``None`` elsewhere.
    """
    codec_kw, kwargs = split_codec_options(kwargs)
    opts = CodecOptions.build(options, **codec_kw)
    rank, world = rank_and_world()
    if world == 1:
        return encode(Y, path, opts, labels=labels, meta=meta, overwrite=overwrite, **kwargs)
    if os.path.exists(path) and not overwrite:
        raise InputError(f"{path}: destination exists (pass overwrite=True to replace it)")
    if is_single_file(path):
        raise InputError(f"{path}: distributed encoding writes a directory store; drop the .h5 suffix")
    root = f"{path}.dist-parts"
    blk = block_of(len(Y), rank, world)
    part = os.path.join(root, f"rank-{rank:05d}")
    codec = get_codec(opts.method, **dict(opts.codec_config or {}))
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        if codec.scope == "store":
            bs = _fit_once(codec, Y, labels, opts, kwargs.get("head"))
            torch.save({"entries": [(e.rows, e.parent, e.mean) for e in bs.entries], "of_class": bs.of_class,
                        "default": bs.default, "residual": bs.residual}, os.path.join(root, "bases.pt"))
    dist.barrier()
    extra = {}
    if codec.scope == "store":
        z = torch.load(os.path.join(root, "bases.pt"), weights_only=True)
        extra["bases"] = BasisSet([BasisEntry(r, p, m) for r, p, m in z["entries"]], z["of_class"], z["default"],
                                  z["residual"])
    kwargs = {k: v for k, v in kwargs.items() if k != "head"}
    encode([Y[i] for i in blk], part, opts, labels=None if labels is None else [labels[i] for i in blk],
           overwrite=True, **kwargs, **extra)
    dist.barrier()
    stats = None
    if rank == 0:
        merge_stores([os.path.join(root, f"rank-{r:05d}") for r in range(world)], path, meta)
        shutil.rmtree(root, ignore_errors=True)
        stats = LabelStore(path).stats()
    dist.barrier()
    return stats
