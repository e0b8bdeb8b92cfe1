"""Rewrite a store in the current format version (``score-codec upgrade``).

Stores of format versions 1 and 2 have no table of contents (docs/FORMAT.md section 2.2), so reading them
means handing their HDF5 metadata to libhdf5.  Upgrading reads such a store once through libhdf5 (the
caller vouches for the file by running the command), checks every record, and writes the same records,
bases, index and augmentation metadata in the current format: nothing is decoded or re-encoded, so the
upgraded store decodes to exactly the same logits.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional

import h5py
import numpy as np

from ..errors import CorruptRecordError, InputError, WriteFailedError
from .atomic import WriteLock, install, recover
from .header import write_toc, write_toc_prefix
from .indexio import fsync_file, make_manifest, write_index, write_index_file, write_manifest_file
from .integrity import USERBLOCK_BYTES, shard_entry
from .layout import FORMAT_VERSION, INDEX_FILE, RECORDS_DATASET, SHARD_DIR, is_single_file, shard_name
from .reader import LabelStore

__all__ = ["upgrade_store"]


def upgrade_store(src: str, dst: Optional[str] = None) -> Dict[str, Any]:
    """Rewrite the store ``src`` in the current format at ``dst`` (``None``: replace ``src`` in place, only
    once the new store is complete).  ``dst`` may be of the other kind (``.h5`` file or directory).

    Every record and basis of ``src`` is checked first; a damaged store is refused (CorruptRecordError)
    and nothing is written.  Returns ``{"src", "dst", "from_version", "to_version", "images", "changed"}``;
    ``changed`` is False when ``src`` was already current and upgraded in place (nothing to do)."""
    src = os.fspath(src)
    dst = src if dst is None else os.fspath(dst)
    old = LabelStore(src, allow_unchecked=True)
    version = int(old.manifest["format_version"])
    out = {"src": src, "dst": dst, "from_version": version, "to_version": FORMAT_VERSION, "images": len(old),
           "changed": True}
    if dst == src and version == FORMAT_VERSION:
        out["changed"] = False
        return out
    if dst != src and os.path.lexists(dst):
        raise InputError(f"{dst}: destination exists; remove it or choose another")
    problems = old.verify()
    if problems:
        raise CorruptRecordError(f"{src}: {len(problems)} problem(s), not upgraded; the first: {problems[0]}")
    from .writer import check_replaceable

    lock = WriteLock(dst)
    tmp = f"{dst}.partial"
    try:
        recover(dst)
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        try:
            _write(old, tmp, is_single_file(dst))
        except OSError as exc:
            raise WriteFailedError(f"{dst}: writing the upgraded store failed ({exc}); nothing was kept") from None
        old.close()
        install(tmp, dst, check_replaceable)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise
    finally:
        lock.release()
    return out


def _write(old: LabelStore, tmp: str, single: bool) -> None:
    """Write ``old``'s records, bases, index and metadata as a current-format store at ``tmp``."""
    shards = old.manifest["shards"]
    sizes = [int(e["bytes"]) for e in shards]
    table, blob, meta = old.basis_table, old._basis_blob.tobytes(), old.aug
    if single:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_BYTES) as f:
            sections = {}
            for s in range(len(shards)):
                name = f"{SHARD_DIR}/{shard_name(s)}"
                f.create_dataset(name, data=np.frombuffer(old.shard_bytes(s), np.uint8))
                sections[name] = ("u1", None)
            sections.update(write_index(f, old.num_classes, old.encoding, old.index, table, blob, meta))
            f.attrs["manifest"] = json.dumps(make_manifest(len(old), old.num_classes, sizes))
            toc = write_toc(f, sections)
        write_toc_prefix(tmp, toc)
        fsync_file(tmp)
        return
    os.makedirs(os.path.join(tmp, SHARD_DIR))
    members: List[Dict[str, int]] = []
    for s in range(len(shards)):
        fn = os.path.join(tmp, SHARD_DIR, shard_name(s))
        data = np.frombuffer(old.shard_bytes(s), np.uint8)
        with h5py.File(fn, "w") as f:
            f.create_dataset(RECORDS_DATASET, data=data)   # contiguous: records are read by offset
        fsync_file(fn)
        members.append(shard_entry(fn, len(data)))
    write_index_file(os.path.join(tmp, INDEX_FILE), old.num_classes, old.encoding, old.index, table, blob, meta,
                     pool=old.pool)
    write_manifest_file(tmp, make_manifest(len(old), old.num_classes, sizes, tmp, members))
