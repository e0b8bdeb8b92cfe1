"""Whole-file integrity checks that run before libhdf5 sees a file (docs/FORMAT.md section 2.1).

libhdf5 trusts its own metadata: a few damaged bytes in an object header can make it loop forever inside an
attribute read instead of failing. So every HDF5 file this library writes is described outside HDF5 (its
size and a CRC32 of every byte that is not record data), and the reader checks that description with plain
file reads before it opens the file with h5py:

- directory stores: the manifest's ``index`` member covers ``index.h5`` whole; each ``shards`` entry's
  ``file_bytes`` / ``data_offset`` / ``meta_crc32`` cover the shard file's bytes outside its records (the
  records carry their own CRC32s in the index, so a shard open reads a few KB, not the shard);
- single-file stores: a 512-byte HDF5 user block at the start of the file carries the file size and the
  CRC32 of everything after the block.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Any, Dict, Optional

from ..errors import CorruptRecordError, SizeLimitError, StoreError, TruncatedFileError, UnreadableFileError

__all__ = ["USERBLOCK_BYTES", "PREFIX_MAGIC", "HDF5_SIGNATURE", "SHARD_MEMBERS", "file_crc32", "index_entry", "check_index_file",
           "shard_entry", "check_shard_file", "write_prefix", "check_prefix", "check_dataset_size", "GZIP_MAX_EXPANSION"]

#: size of the HDF5 user block of a single-file store (HDF5 requires a power of two >= 512)
USERBLOCK_BYTES = 512
PREFIX_MAGIC = b"SCORELS\x00"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: the integrity members of a manifest's shard entry, as shard_entry() gives them
SHARD_MEMBERS = ("file_bytes", "data_offset", "meta_crc32")
# magic, prefix version, reserved, file bytes, crc32 of bytes [512, EOF), crc32 of the 28 bytes before it
_PREFIX = struct.Struct("<8sIIQI")
_PREFIX_VERSION = 1
_CHUNK = 1 << 22


def file_crc32(path: str, start: int = 0, end: Optional[int] = None, crc: int = 0) -> int:
    """CRC32 (zlib) of bytes ``[start, end)`` of ``path`` (``end`` None: to EOF), read in 4 MiB chunks."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            left = None if end is None else end - start
            while left is None or left > 0:
                buf = fh.read(_CHUNK if left is None else min(_CHUNK, left))
                if not buf:
                    break
                crc = zlib.crc32(buf, crc)
                if left is not None:
                    left -= len(buf)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return crc


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot stat ({exc.strerror or exc})") from None


def index_entry(path: str) -> Dict[str, int]:
    """The manifest's ``index`` member for the finished index file ``path``: its size and CRC32."""
    return {"bytes": _size(path), "crc32": file_crc32(path)}


def check_index_file(path: str, entry: Any, verify_content: bool = True) -> None:
    """Check ``index.h5`` against the manifest's ``index`` member before HDF5 opens it; ``verify_content``
    False checks the size only (no full read: the index of a large store holds all its augmentation rows)."""
    if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("crc32"), int)):
        raise StoreError(f"{path}: the manifest's index member is malformed (expected {{bytes:int, crc32:int}}, "
                         f"found {entry!r})")
    size = _size(path)
    if size != entry["bytes"]:
        raise TruncatedFileError(f"{path}: index file is {size} bytes, the manifest says {entry['bytes']}")
    if verify_content:
        crc = file_crc32(path)
        if crc != entry["crc32"]:
            raise CorruptRecordError(f"{path}: index file fails its crc32 check: expected {entry['crc32']:08x}, "
                                     f"found {crc:08x}")


def shard_entry(path: str, nbytes: int) -> Dict[str, int]:
    """Integrity members of a finished shard file ``path`` whose ``records`` dataset holds ``nbytes``."""
    import h5py

    from .layout import RECORDS_DATASET

    with h5py.File(path, "r") as f:
        off = f[RECORDS_DATASET].id.get_offset() if nbytes else None
    size = _size(path)
    data_offset = int(off) if off is not None else size   # an empty dataset has no data address
    return {"file_bytes": size, "data_offset": data_offset, "meta_crc32": _meta_crc(path, data_offset, nbytes)}


def _meta_crc(path: str, data_offset: int, nbytes: int) -> int:
    return file_crc32(path, data_offset + nbytes, None, file_crc32(path, 0, data_offset))


def check_shard_file(path: str, entry: Dict[str, Any]) -> None:
    """Check a shard file's size and the CRC32 of its bytes outside the records, before HDF5 opens it.
    Entries written before these members existed (no ``file_bytes``) are not checked."""
    if "file_bytes" not in entry:
        return
    size, off, nbytes = entry.get("file_bytes"), entry.get("data_offset"), entry["bytes"]
    if not (isinstance(size, int) and isinstance(off, int) and isinstance(entry.get("meta_crc32"), int)
            and 0 <= off and off + nbytes <= size):
        raise StoreError(f"{path}: the manifest's entry for this shard is malformed (file_bytes {size!r}, "
                         f"data_offset {off!r}, bytes {nbytes}, meta_crc32 {entry.get('meta_crc32')!r})")
    found = _size(path)
    if found != size:
        raise TruncatedFileError(f"{path}: shard file is {found} bytes, the manifest says {size}")
    crc = _meta_crc(path, off, nbytes)
    if crc != entry["meta_crc32"]:
        raise CorruptRecordError(f"{path}: the shard's HDF5 structure (bytes outside its records) fails its crc32 "
                                 f"check: expected {entry['meta_crc32']:08x}, found {crc:08x}")


def write_prefix(path: str) -> None:
    """Fill the user block of the finished single-file store ``path`` (created with
    ``userblock_size=USERBLOCK_BYTES``) with its size and the CRC32 of the bytes after the block."""
    size = _size(path)
    head = _PREFIX.pack(PREFIX_MAGIC, _PREFIX_VERSION, 0, size, file_crc32(path, USERBLOCK_BYTES))
    head += struct.pack("<I", zlib.crc32(head))
    with open(path, "r+b") as fh:
        fh.write(head)


def check_prefix(path: str, verify_content: bool = True) -> bool:
    """Check a single-file store's prefix before HDF5 opens it; returns False for a file written before
    the prefix existed (it starts with the HDF5 signature and is read unchecked).  ``verify_content``
    False checks the size only (no full read of the file)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREFIX.size + 4)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head[:8] == HDF5_SIGNATURE:
        return False
    if len(head) < _PREFIX.size + 4 or head[:8] != PREFIX_MAGIC:
        raise StoreError(f"{path}: not a label store (starts with {head[:8]!r}; expected {PREFIX_MAGIC!r} or the "
                         f"HDF5 signature)")
    magic, version, _, size, crc = _PREFIX.unpack(head[:_PREFIX.size])
    (head_crc,) = struct.unpack("<I", head[_PREFIX.size:])
    if head_crc != zlib.crc32(head[:_PREFIX.size]):
        raise CorruptRecordError(f"{path}: the integrity prefix fails its crc32 check")
    if version != _PREFIX_VERSION:
        raise StoreError(f"{path}: integrity prefix version {version}, this reader knows {_PREFIX_VERSION}")
    found = _size(path)
    if found != size:
        raise TruncatedFileError(f"{path}: file is {found} bytes, its prefix says {size}")
    if verify_content:
        got = file_crc32(path, USERBLOCK_BYTES)
        if got != crc:
            raise CorruptRecordError(f"{path}: file content fails its crc32 check: expected {crc:08x}, found {got:08x}")
    return True


#: deflate cannot expand data more than about 1032 times: a compressed dataset holding more than this
#: many times its file's size claims rows its chunks cannot contain
GZIP_MAX_EXPANSION = 1032


def check_dataset_size(ds: Any, where: str) -> int:
    """Bytes the h5py dataset ``ds`` would take in memory, checked against what its file can hold (its size,
    times :data:`GZIP_MAX_EXPANSION` for compressed datasets) before anything is read; SizeLimitError names
    ``where`` otherwise."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise StoreError(f"{where}: expected a dataset, found {type(ds).__name__}")
    n = 1
    for d in ds.shape or ():
        n *= int(d)
    nbytes = n * int(ds.dtype.itemsize)
    size = _size(ds.file.filename)
    limit = size * (GZIP_MAX_EXPANSION if ds.compression is not None else 1)
    if nbytes > limit:
        raise SizeLimitError(f"{where}: the dataset claims {n} items ({nbytes} bytes), more than its "
                             f"{size}-byte file can hold")
    return nbytes
