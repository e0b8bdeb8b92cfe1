"""Writing the index and the manifest (docs/FORMAT.md sections 3 and 4), shared by every writer."""
from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from ..codecs.quantize import QUANT_CODES, quantize
from .aug_chunks import encode_rows
from .layout import BASIS_FLAG_MEAN, BASIS_INDEX_DTYPE, FORMAT_VERSION, IMAGE_INDEX_DTYPE, MANIFEST_FILE
from .header import table_crc32, write_toc, write_toc_prefix
from .integrity import USERBLOCK_BYTES
from .meta import BATCH_DTYPE, IMAGE_DTYPE, ROW_DTYPE, AugMeta

__all__ = ["StoredBasis", "stored_basis", "basis_table", "write_index", "write_index_file", "make_manifest", "write_manifest_file",
           "fsync_file"]


def fsync_file(path: str) -> None:
    """Flush a file's data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class StoredBasis:
    """One ``/bases`` entry as written: its blob bytes and table fields (docs/FORMAT.md section 4)."""

    blob: bytes
    rank: int
    parent: int = -1
    flags: int = 0
    quant: str = "fp16"


def stored_basis(rows: torch.Tensor, quant: str, parent: int = -1, mean: Optional[torch.Tensor] = None) -> StoredBasis:
    """Serialise a basis ``rows`` (r, C) in ``quant``, followed by its float32 ``mean`` (C,) when given."""
    blob = quantize(rows, quant)
    flags = 0
    if mean is not None:
        blob += mean.detach().cpu().numpy().astype("<f4").tobytes()
        flags |= BASIS_FLAG_MEAN
    return StoredBasis(blob=blob, rank=int(rows.shape[0]), parent=int(parent), flags=flags, quant=quant)


def basis_table(bases: Sequence[StoredBasis]) -> np.ndarray:
    """The ``/bases/table`` entries of bases laid end to end in ``/bases/blob``."""
    table = np.zeros(len(bases), BASIS_INDEX_DTYPE)
    off = 0
    for i, b in enumerate(bases):
        table[i] = (off, len(b.blob), b.rank, zlib.crc32(b.blob), b.parent, b.flags, QUANT_CODES[b.quant])
        off += len(b.blob)
    return table


def write_index(f: h5py.File, num_classes: int, encoding: Dict[str, Any], index: np.ndarray, table: np.ndarray,
                blob: bytes, meta: AugMeta, pool: Optional[Dict[str, Any]] = None) -> Dict[str, Tuple[str, Optional[int]]]:
    """Write the index datasets and attributes into an open HDF5 file (or the root of a single-file store);
    ``pool``: the kept label epochs of a pooled store (docs/FORMAT.md section 4), None for every epoch.

    Returns the table-of-contents sections of what was written (name -> (dtype name, CRC32)) for
    :func:`~score_codec.store.header.write_toc`."""
    f.attrs["format_version"] = FORMAT_VERSION
    if pool is not None:
        f.attrs["pool"] = json.dumps(pool)
    f.attrs["num_classes"] = int(num_classes)
    f.attrs["encoding"] = json.dumps(encoding)
    f.attrs["torch_version"] = str(torch.__version__)
    chunks, row_blob = encode_rows(np.asarray(meta.rows, ROW_DTYPE))
    arrays = {
        "images": ("image_index", np.asarray(index, IMAGE_INDEX_DTYPE)),
        "bases/table": ("basis_index", np.asarray(table, BASIS_INDEX_DTYPE)),
        "bases/blob": ("u1", np.frombuffer(blob, np.uint8)),
        "aug/row_chunks": ("aug_chunk", chunks),
        "aug/row_blob": ("u1", np.frombuffer(row_blob, np.uint8)),
        "aug/batches": ("aug_batch", np.asarray(meta.batches, BATCH_DTYPE)),
        "aug/images": ("aug_image", np.asarray(meta.images, IMAGE_DTYPE)),
    }
    f.create_group("bases")
    a = f.create_group("aug")
    sections: Dict[str, Tuple[str, Optional[int]]] = {}
    for name, (dtype_name, arr) in arrays.items():
        # contiguous and uncompressed: the reader reads these bytes by offset, without libhdf5
        f.create_dataset(name, data=arr)
        sections[name] = (dtype_name, table_crc32(arr))
    a.attrs["attrs"] = json.dumps(meta.attrs)
    return sections


def write_index_file(path: str, num_classes: int, encoding: Dict[str, Any], index: np.ndarray, table: np.ndarray,
                     blob: bytes, meta: AugMeta, pool: Optional[Dict[str, Any]] = None) -> None:
    """Write a directory store's ``index.h5`` at ``path`` with its table of contents, durably (``pool`` as
    in :func:`write_index`)."""
    with h5py.File(path, "w", userblock_size=USERBLOCK_BYTES) as f:
        toc = write_toc(f, write_index(f, num_classes, encoding, index, table, blob, meta, pool=pool))
    write_toc_prefix(path, toc)
    fsync_file(path)


def make_manifest(num_images: int, num_classes: int, shard_sizes: List[int], root: Optional[str] = None,
                  shard_members: Optional[List[Dict[str, int]]] = None) -> Dict[str, Any]:
    """The manifest object of section 3; with ``root`` (a directory store whose shards and index are
    written) also the integrity members of section 2.1: the index's computed from its file, each shard's
    from ``shard_members`` (as :func:`~score_codec.store.integrity.shard_entry` gave them when the shard was
    written) or, without it, from the shard files."""
    from .integrity import index_entry, shard_entry
    from .layout import INDEX_FILE, SHARD_DIR, shard_name

    shards = [{"name": shard_name(i), "bytes": int(n)} for i, n in enumerate(shard_sizes)]
    manifest: Dict[str, Any] = {
        "format": "score-label-store",
        "format_version": FORMAT_VERSION,
        "num_images": int(num_images),
        "num_classes": int(num_classes),
        "shards": shards,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if root is not None:
        for i, e in enumerate(shards):
            e.update(shard_members[i] if shard_members is not None else
                     shard_entry(os.path.join(root, SHARD_DIR, e["name"]), e["bytes"]))
        manifest["index"] = index_entry(os.path.join(root, INDEX_FILE))
    return manifest


def write_manifest_file(root: str, manifest: Dict[str, Any]) -> None:
    """Write ``manifest.json`` durably; it must be the last file of a directory store to appear."""
    with open(os.path.join(root, MANIFEST_FILE), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
