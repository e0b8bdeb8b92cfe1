"""The store header: a table of contents that score parses itself, so reads never go through libhdf5.

libhdf5 trusts its own metadata: damaged (or deliberately crafted) object headers can make it loop
forever inside an attribute or dataset read.  So every HDF5 file this library reads (a single-file store,
a directory store's ``index.h5``) carries, beside its standard HDF5 structure, a small JSON **table of
contents** (docs/FORMAT.md section 2.2):

- the file's root and ``/aug`` attributes, as written;
- for every dataset the reader needs (index tables, ``/aug`` tables, shard record blobs, ``/bases``):
  its file offset, byte length, dtype name, shape and CRC32.

The table of contents is itself the raw bytes of a contiguous ``/score_toc`` dataset, found through a
48-byte prefix in the file's HDF5 user block (file size, offset, length and CRC32 of the table of
contents, CRC32 of the prefix).  The reader checks the prefix, the file size, every offset and length
against the file before it reads anything, and then reads with ``os.pread``: h5py (or HDFView) still
opens the file as ordinary HDF5, but nothing on a read path does.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

import numpy as np

from ..errors import CorruptRecordError, SizeLimitError, StoreError, TruncatedFileError, UnreadableFileError
from .layout import BASIS_INDEX_DTYPE, IMAGE_INDEX_DTYPE
from .meta import AUG_CHUNK_DTYPE, BATCH_DTYPE, IMAGE_DTYPE, ROW_DTYPE

__all__ = ["TOC_DATASET", "TOC_PREFIX_VERSION", "MAX_TOC_BYTES", "MAX_ATTR_BYTES", "DTYPE_NAMES", "Section",
           "TocFile", "probe_prefix", "table_crc32", "write_toc", "write_toc_prefix", "parse_json"]

#: name of the dataset whose raw bytes are the table of contents
TOC_DATASET = "score_toc"
#: version of the user-block prefix that points at a table of contents (version 1: whole-file CRC only)
TOC_PREFIX_VERSION = 2
#: a table of contents lists a few tables and one entry per shard: no store needs more
MAX_TOC_BYTES = 2**24
#: largest JSON attribute (encoding, manifest, augmentation attributes) the reader parses
MAX_ATTR_BYTES = 2**24
_MAGIC = b"SCORELS\x00"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# magic, prefix version, reserved, file bytes, toc offset, toc bytes, toc crc32; then crc32 of those 44 bytes
_PREFIX = struct.Struct("<8sIIQQQI")
PREFIX_BYTES = _PREFIX.size + 4

#: the dtypes a table of contents may name (docs/FORMAT.md gives their layouts)
DTYPE_NAMES: Dict[str, np.dtype] = {
    "u1": np.dtype("u1"),
    "image_index": IMAGE_INDEX_DTYPE,
    "basis_index": BASIS_INDEX_DTYPE,
    "aug_row": ROW_DTYPE,
    "aug_chunk": AUG_CHUNK_DTYPE,
    "aug_batch": BATCH_DTYPE,
    "aug_image": IMAGE_DTYPE,
}


def parse_json(text: Any, where: str, cap: int = MAX_ATTR_BYTES) -> Any:
    """``json.loads`` of ``text`` (str or bytes) of at most ``cap`` bytes; every failure is a StoreError."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise StoreError(f"{where}: expected a JSON string, found {type(text).__name__}")
    if len(text) > cap:
        raise SizeLimitError(f"{where}: {len(text)} bytes of JSON, more than the {cap} any store needs")
    try:
        return json.loads(text)
    except RecursionError:
        raise SizeLimitError(f"{where}: JSON nested deeper than a parser can follow") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{where}: not valid JSON ({exc})") from None


def table_crc32(arr: np.ndarray) -> int:
    """CRC32 of an array's bytes as a contiguous dataset holds them."""
    return zlib.crc32(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))


def _plain(v: Any) -> Any:
    """An HDF5 attribute value as JSON: numpy scalars to Python, bytes to str."""
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def write_toc(f: Any, sections: Dict[str, Tuple[str, Optional[int]]]) -> Tuple[int, int, int]:
    """Describe the datasets ``sections`` (name -> (dtype name, CRC32 or None)) of the open h5py file ``f``
    in a table of contents, with the root and ``/aug`` attributes, and write it as ``/score_toc``.

    Every listed dataset must be contiguous and uncompressed.  Returns (offset, bytes, CRC32) of the
    table of contents, for :func:`write_toc_prefix` once the file is closed."""
    entries: Dict[str, Any] = {}
    for name, (dtype_name, crc) in sections.items():
        ds = f[name]
        if ds.chunks is not None or ds.compression is not None or ds.dtype != DTYPE_NAMES[dtype_name] or ds.ndim != 1:
            raise StoreError(f"{f.filename}: /{name} must be a contiguous, uncompressed 1-d {dtype_name} dataset")
        nbytes = int(ds.shape[0]) * ds.dtype.itemsize
        off = ds.id.get_offset() if nbytes else None
        if nbytes and off is None:
            raise StoreError(f"{f.filename}: /{name} has no data address")
        entries[name] = {"offset": int(off) if nbytes else 0, "bytes": nbytes, "dtype": dtype_name,
                         "shape": [int(ds.shape[0])], "crc32": crc}
    attrs = {"/": {k: _plain(v) for k, v in f.attrs.items()}}
    if "aug" in f:
        attrs["/aug"] = {k: _plain(v) for k, v in f["aug"].attrs.items()}
    blob = json.dumps({"score_toc": 1, "datasets": entries, "attrs": attrs}, separators=(",", ":")).encode()
    ds = f.create_dataset(TOC_DATASET, data=np.frombuffer(blob, np.uint8))
    return int(ds.id.get_offset()), len(blob), zlib.crc32(blob)


def write_toc_prefix(path: str, toc: Tuple[int, int, int]) -> None:
    """Write the user-block prefix of the closed file ``path`` (created with a user block of at least
    :data:`PREFIX_BYTES`), pointing at its table of contents ``toc`` = (offset, bytes, CRC32)."""
    head = _PREFIX.pack(_MAGIC, TOC_PREFIX_VERSION, 0, os.path.getsize(path), *toc)
    head += struct.pack("<I", zlib.crc32(head))
    with open(path, "r+b") as fh:
        fh.write(head)


def probe_prefix(path: str) -> int:
    """What starts the HDF5 file ``path``: 0 the HDF5 signature (no prefix), 1 the whole-file integrity
    prefix of format version 2, 2 a table-of-contents prefix; StoreError for anything else."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if head[:8] == _HDF5_SIGNATURE:
        return 0
    if len(head) < 16 or head[:8] != _MAGIC:
        raise StoreError(f"{path}: not a label store (starts with {head[:8]!r}; expected {_MAGIC!r} or the HDF5 "
                         f"signature)")
    version = struct.unpack_from("<I", head, 8)[0]
    if version not in (1, TOC_PREFIX_VERSION):
        raise StoreError(f"{path}: prefix version {version}, this reader knows 1 and {TOC_PREFIX_VERSION}")
    return int(version)


@dataclass(frozen=True)
class Section:
    """One dataset as the table of contents describes it: ``nbytes`` bytes at file ``offset``."""

    name: str
    offset: int
    nbytes: int
    dtype: np.dtype
    length: int
    crc32: Optional[int]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class TocFile:
    """An HDF5 file read through its table of contents: ``attrs`` (``"/"`` and ``"/aug"`` attribute dicts),
    :meth:`section`, :meth:`table` and :meth:`read`.  The file descriptor is opened per call, so the
    object is safe to use after fork."""

    def __init__(self, path: str) -> None:
        self.path = path
        # later reads find the file even after the working directory changed
        self._abs = os.path.abspath(path)
        try:
            self.size = os.path.getsize(path)
            with open(path, "rb") as fh:
                head = fh.read(PREFIX_BYTES)
        except OSError as exc:
            raise UnreadableFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if len(head) < PREFIX_BYTES or head[:8] != _MAGIC:
            raise StoreError(f"{path}: no table-of-contents prefix (the file starts with {head[:8]!r})")
        magic, version, _, size, off, nbytes, crc = _PREFIX.unpack_from(head)
        if struct.unpack_from("<I", head, _PREFIX.size)[0] != zlib.crc32(head[:_PREFIX.size]):
            raise CorruptRecordError(f"{path}: the table-of-contents prefix fails its crc32 check")
        if version != TOC_PREFIX_VERSION:
            raise StoreError(f"{path}: prefix version {version}, expected {TOC_PREFIX_VERSION}")
        if size != self.size:
            raise TruncatedFileError(f"{path}: file is {self.size} bytes, its prefix says {size}")
        if nbytes > MAX_TOC_BYTES:
            raise SizeLimitError(f"{path}: table of contents of {nbytes} bytes, more than the {MAX_TOC_BYTES} any "
                                 f"store needs")
        if off < PREFIX_BYTES or off + nbytes > self.size:
            raise TruncatedFileError(f"{path}: table of contents at [{off}, {off + nbytes}) lies outside the "
                                     f"{self.size}-byte file")
        blob = self.pread(off, nbytes, "table of contents")
        if zlib.crc32(blob) != crc:
            raise CorruptRecordError(f"{path}: table of contents fails its crc32 check: expected {crc:08x}, "
                                     f"found {zlib.crc32(blob):08x}")
        toc = parse_json(blob, f"{path}: table of contents", MAX_TOC_BYTES)
        if not (isinstance(toc, dict) and toc.get("score_toc") == 1 and isinstance(toc.get("datasets"), dict)
                and isinstance(toc.get("attrs"), dict) and isinstance(toc["attrs"].get("/"), dict)):
            raise StoreError(f"{path}: table of contents is malformed (expected score_toc: 1, datasets: {{}}, "
                             f"attrs: {{'/': {{}}}})")
        self.attrs: Dict[str, Dict[str, Any]] = toc["attrs"]
        if not all(isinstance(v, dict) for v in self.attrs.values()):
            raise StoreError(f"{path}: table of contents attributes are malformed")
        # entries are validated when first used: a damaged entry fails the reads that need it
        self._entries: Dict[str, Any] = toc["datasets"]
        self._sections: Dict[str, Section] = {}

    def _section(self, name: str, e: Any) -> Section:
        where = f"{self.path}: /{name}"
        ok = (isinstance(e, dict) and _int(e.get("offset")) and _int(e.get("bytes")) and isinstance(e.get("dtype"), str)
              and e["dtype"] in DTYPE_NAMES
              and isinstance(e.get("shape"), list) and len(e["shape"]) == 1 and _int(e["shape"][0])
              and (e.get("crc32") is None or _int(e.get("crc32"))))
        if not ok:
            raise StoreError(f"{where}: table-of-contents entry is malformed (expected offset, bytes, dtype one of "
                             f"{sorted(DTYPE_NAMES)}, shape [n], crc32; found {str(e)[:200]})")
        dtype = DTYPE_NAMES[e["dtype"]]
        if e["shape"][0] * dtype.itemsize != e["bytes"]:
            raise StoreError(f"{where}: {e['shape'][0]} items of {dtype.itemsize} bytes are not the {e['bytes']} "
                             f"bytes the table of contents declares")
        if e["bytes"] > self.size:
            raise SizeLimitError(f"{where}: the table of contents claims {e['shape'][0]} items ({e['bytes']} bytes), "
                                 f"more than the {self.size}-byte file can hold")
        if e["offset"] + e["bytes"] > self.size:
            raise TruncatedFileError(f"{where}: [{e['offset']}, {e['offset'] + e['bytes']}) lies outside the "
                                     f"{self.size}-byte file")
        return Section(name, e["offset"], e["bytes"], dtype, e["shape"][0], e.get("crc32"))

    def pread(self, offset: int, nbytes: int, what: str) -> bytes:
        """``nbytes`` bytes at ``offset`` (bounds checked by the caller); TruncatedFileError when short."""
        try:
            fd = os.open(self._abs, os.O_RDONLY)
            try:
                buf = os.pread(fd, nbytes, offset)
            finally:
                os.close(fd)
        except OSError as exc:
            raise UnreadableFileError(f"{self.path}: cannot read {what} ({exc.strerror or exc})") from None
        if len(buf) != nbytes:
            raise TruncatedFileError(f"{self.path}: {what} is {len(buf)} bytes, expected {nbytes}")
        return buf

    def section(self, name: str, dtype: np.dtype) -> Section:
        """The entry of dataset ``name``, which must hold ``dtype`` items."""
        s = self._sections.get(name)
        if s is None:
            if name not in self._entries:
                raise StoreError(f"{self.path}: the table of contents lists no /{name}")
            s = self._sections[name] = self._section(name, self._entries[name])
        if s.dtype != dtype:
            raise StoreError(f"{self.path}: /{name} has dtype {s.dtype}, expected {dtype}")
        return s

    def table(self, name: str, dtype: np.dtype, verify: bool = True, start: int = 0,
              stop: Optional[int] = None) -> np.ndarray:
        """Items ``[start, stop)`` of dataset ``name`` (all by default) as a numpy array of ``dtype``; the
        CRC32 is checked when the whole table is read and ``verify`` is set."""
        s = self.section(name, dtype)
        stop = s.length if stop is None else stop
        if not 0 <= start <= stop <= s.length:
            raise StoreError(f"{self.path}: items [{start}, {stop}) of /{name} requested, it has {s.length}")
        isz = dtype.itemsize
        buf = self.pread(s.offset + start * isz, (stop - start) * isz, f"/{name}")
        if verify and start == 0 and stop == s.length and s.crc32 is not None and zlib.crc32(buf) != s.crc32:
            raise CorruptRecordError(f"{self.path}: /{name} fails its crc32 check: expected {s.crc32:08x}, "
                                     f"found {zlib.crc32(buf):08x}")
        return np.frombuffer(buf, dtype).copy()

    def names(self) -> Iterable[str]:
        """Names of the datasets the table of contents lists."""
        return self._entries.keys()
