"""Read a label store: random access to one image's record, batched row decode, verification.

Only paths and small index tables are kept in the object; HDF5 handles are opened lazily per process
(reopened when the pid changes, dropped when pickled), so a store is safe to use in forked or spawned
DataLoader workers.
"""
from __future__ import annotations

import json
import logging
import os
import zlib
from typing import Any, Dict, List, Optional, Sequence

import h5py
import numpy as np
import torch

from ..errors import (CodecError, CorruptRecordError, IncompleteStoreError, IndexMismatchError, MissingShardError, SizeLimitError,
                     ScoreError, StoreError, StoreVersionError, TruncatedFileError, UncheckedStoreError, UnreadableFileError)
from .layout import (BASIS_FLAG_MEAN, BASIS_INDEX_DTYPE, BASIS_INDEX_DTYPE_V1, IMAGE_INDEX_DTYPE, INDEX_FILE, MANIFEST_FILE, READABLE_VERSIONS,
                     RECORDS_DATASET, SHARD_DIR, TOC_VERSIONS, is_single_file, shard_name)
from ..errors import InputError
from .layout import ONE_SCALE_VERSION, POOL_VERSION
from .aug_reader import AugReader
from .header import TOC_PREFIX_VERSION, TocFile, parse_json, probe_prefix
from .integrity import SHARD_MEMBERS, check_dataset_size, check_index_file, check_prefix, check_shard_file
from .meta import AugMeta
from ..codecs.quantize import QUANT_CODES, QUANT_NAMES, dequantize, quantized_nbytes
from .record import CELLS_PER_BYTE, FLAG_ONE_SCALE, FREE_CELLS, MAX_CELLS, Record, unpack_record
from .dense import DenseFactors, dense_bytes, rows_from_records
from .stats import store_stats, verify_store

__all__ = ["LabelStore"]

log = logging.getLogger(__name__)

#: a manifest lists one small entry per shard: no store needs more than this
MAX_MANIFEST_BYTES = 2**28
#: what h5py, numpy and json raise on damaged bytes; the reader turns them into StoreError
_LOW_LEVEL = (OSError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError)


def _check_manifest(m: Any, where: str) -> Dict[str, Any]:
    """Validate the manifest's structure and version before any of it (or the index) is used."""
    if isinstance(m, dict) and m.get("format") == "score-label-store" and m.get("format_version") not in READABLE_VERSIONS:
        raise StoreVersionError(f"{where}: format version {m.get('format_version')}, this reader knows {READABLE_VERSIONS}")
    ok = isinstance(m, dict) and m.get("format") == "score-label-store" and isinstance(m.get("num_images"), int) and isinstance(m.get("shards"), list)
    ok = ok and all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and e["bytes"] >= 0
                    and e.get("name") == shard_name(i) for i, e in enumerate(m["shards"]))
    if not ok:
        raise StoreError(f"{where}: manifest is malformed (expected format 'score-label-store', num_images:int and "
                         f"shards:[{{name: shard-NNNNN.h5 in order, bytes:int}}])")
    # a store is sealed (index member + every shard's members) or legacy (none of them): a partly sealed
    # manifest is a damaged one, and reading it as legacy would hand unchecked files to libhdf5
    members = ["index" in m] + [all(k in e for k in SHARD_MEMBERS) for e in m["shards"]]
    partial = [i for i, e in enumerate(m["shards"]) if any(k in e for k in SHARD_MEMBERS) and not members[i + 1]]
    if partial or (any(members) and not all(members)):
        what = (f"shard {partial[0]} has only some of {list(SHARD_MEMBERS)}" if partial else
                "the index member is missing" if not members[0] else
                f"shard {members.index(False, 1) - 1} lacks {list(SHARD_MEMBERS)}")
        raise StoreError(f"{where}: integrity members are incomplete ({what}); a store written with them has them "
                         "for the index and every shard")
    return m


class LabelStore:
    """A label store opened for reading (see docs/FORMAT.md).

    ``len(store)`` images; ``store.ks`` (N,) rows per image; ``store.labels`` (N,) class or -1;
    ``store.matrix(i)`` -> (K_i, C) float32 logits; ``store.rows(ids, augs)`` -> (B, C) batched.

    Stores of the current format are read through their table of contents with plain file reads; libhdf5
    never parses them.  Stores written before it (format versions 1 and 2) have no table of contents:
    they open only with ``allow_unchecked=True``, which reads them through libhdf5 (a damaged or crafted
    file can make that hang), or after ``score-codec upgrade`` rewrote them.
    """

    def __init__(self, path: str, verify_checksums: bool = True, max_dense_bytes: int = 2**30,
                 allow_unchecked: bool = False) -> None:
        self.path = os.fspath(path)
        self.verify_checksums = verify_checksums
        self.max_dense_bytes = int(max_dense_bytes)
        self.allow_unchecked = bool(allow_unchecked)
        self.single = is_single_file(self.path)
        if not os.path.exists(self.path):
            raise StoreError(f"{self.path}: no such store")
        self._pid: Optional[int] = None
        self._files: Dict[int, Any] = {}
        self._dense: Dict[str, DenseFactors] = {}
        self._aug: Optional[AugMeta] = None
        self._augr: Optional[AugReader] = None
        self._bases: Dict[int, torch.Tensor] = {}
        self._toc: Optional[TocFile] = None
        #: per shard: (file, offset of its first record byte) when read through the table of contents
        self._shard_at: List[Any] = []
        self._load_index()

    # -- opening ---------------------------------------------------------------------------------
    def _index_path(self) -> str:
        return self.path if self.single else os.path.join(self.path, INDEX_FILE)

    def _unchecked(self, version: Any) -> None:
        """Refuse a store without a table of contents unless the caller opted in."""
        if not self.allow_unchecked:
            raise UncheckedStoreError(
                f"{self.path}: written in format version {version}, which has no table of contents; reading it "
                f"means handing its HDF5 metadata to libhdf5, which can hang on damaged files. Open it with "
                f"allow_unchecked=True (--allow-unchecked) if you trust the file, or convert it first with "
                f"`score-codec upgrade {self.path} [DST]`")

    def _load_index(self) -> None:
        if self.single:
            if not os.path.isfile(self.path):
                raise StoreError(f"{self.path}: not a label store (a single-file store path must be a file)")
            if probe_prefix(self.path) == TOC_PREFIX_VERSION:
                self._load_toc(TocFile(self.path), None)
            else:
                self._unchecked("1 or 2")
                self._load_single_unchecked()
        else:
            mf = os.path.join(self.path, MANIFEST_FILE)
            if not os.path.isfile(mf):
                if os.path.isfile(self._index_path()) or os.path.isdir(os.path.join(self.path, SHARD_DIR)):
                    raise IncompleteStoreError(f"{self.path}: {MANIFEST_FILE} is missing; the store was not completely written "
                                               "(an interrupted encode can be finished with --resume)")
                raise StoreError(f"{self.path}: not a label store (no {MANIFEST_FILE})")
            try:
                if os.path.getsize(mf) > MAX_MANIFEST_BYTES:
                    raise SizeLimitError(f"{mf}: manifest is {os.path.getsize(mf)} bytes, more than the "
                                         f"{MAX_MANIFEST_BYTES} any store needs")
                with open(mf, "rb") as fh:
                    manifest = _check_manifest(parse_json(fh.read(), mf, MAX_MANIFEST_BYTES), mf)
            except OSError as exc:
                raise StoreError(f"{mf}: unreadable manifest ({exc})") from None
            if not os.path.isfile(self._index_path()):
                raise MissingShardError(f"{self._index_path()}: index file is missing")
            if manifest["format_version"] in TOC_VERSIONS:
                if "index" not in manifest:
                    raise StoreError(f"{mf}: format version {manifest['format_version']} needs the integrity members "
                                     f"(index and every shard's {list(SHARD_MEMBERS)})")
                check_index_file(self._index_path(), manifest["index"], verify_content=False)
                self._load_toc(TocFile(self._index_path()), manifest)
            else:
                self._unchecked(manifest["format_version"])
                self.manifest = manifest
                self._load_dir_unchecked()
        version = self.manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise StoreVersionError(f"{self.path}: format version {version}, this reader knows {READABLE_VERSIONS}")
        if self.manifest.get("num_images") != len(self.index):
            raise IndexMismatchError(f"{self.path}: manifest says {self.manifest.get('num_images')} images, index has {len(self.index)}")

    def _load_toc(self, toc: TocFile, manifest: Optional[Dict[str, Any]]) -> None:
        """Read the tables through the table of contents ``toc`` (of the single file or of index.h5)."""
        where = toc.path
        root = toc.attrs["/"]
        if manifest is None:   # single-file store: the manifest is a root attribute
            if "manifest" not in root:
                raise IncompleteStoreError(f"{where}: no manifest attribute; the store was not completely written")
            manifest = _check_manifest(parse_json(root["manifest"], f"{where}: manifest"), where)
            if manifest["format_version"] not in TOC_VERSIONS:
                raise StoreVersionError(f"{where}: format version {manifest['format_version']} with a table of contents; "
                                        f"this reader knows {TOC_VERSIONS}")
        self.manifest = manifest
        if root.get("format_version") != manifest["format_version"]:
            raise IndexMismatchError(f"{where}: index format_version {root.get('format_version')!r}, "
                                     f"manifest {manifest['format_version']}")
        self._toc = toc
        c = root.get("num_classes")
        encoding = parse_json(root.get("encoding"), f"{where}: encoding attribute")
        verify = self.verify_checksums
        self._set_tables(c, encoding, toc.table("images", IMAGE_INDEX_DTYPE, verify),
                         toc.table("bases/table", BASIS_INDEX_DTYPE, verify), toc.table("bases/blob", np.dtype("u1"), verify),
                         root.get("pool"))
        shards = []
        for s, entry in enumerate(self.manifest["shards"]):
            if self.single:
                sec = toc.section(f"{SHARD_DIR}/{shard_name(s)}", np.dtype("u1"))
                if sec.nbytes != entry["bytes"]:
                    raise TruncatedFileError(f"{where}: shard {s} holds {sec.nbytes} bytes, manifest says {entry['bytes']}")
                shards.append((os.path.abspath(self.path), sec.offset, toc.size))
            else:
                fn = os.path.join(self.path, SHARD_DIR, shard_name(s))
                size, off = entry.get("file_bytes"), entry.get("data_offset")
                if not (isinstance(size, int) and isinstance(off, int) and 0 <= off and off + entry["bytes"] <= size):
                    raise StoreError(f"{fn}: the manifest's entry for this shard is malformed (file_bytes {size!r}, "
                                     f"data_offset {off!r}, bytes {entry['bytes']})")
                shards.append((os.path.abspath(fn), off, size))
        self._shard_at = shards

    def _load_single_unchecked(self) -> None:
        if not check_prefix(self.path, verify_content=self.verify_checksums):
            log.debug("%s: written before the integrity prefix; opened unchecked", self.path)
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({exc})") from None
        with f:
            try:
                if "manifest" not in f.attrs:
                    raise IncompleteStoreError(f"{self.path}: no manifest attribute; the store was not completely written")
                self.manifest = _check_manifest(json.loads(f.attrs["manifest"]), self.path)
                self._read_tables(f)
            except _LOW_LEVEL as exc:
                raise StoreError(f"{self.path}: damaged index ({type(exc).__name__}: {exc})") from None

    def _load_dir_unchecked(self) -> None:
        if "index" in self.manifest:   # stores written before the integrity members are opened unchecked
            check_index_file(self._index_path(), self.manifest["index"], self.verify_checksums)
        try:
            f = h5py.File(self._index_path(), "r")
        except OSError as exc:
            raise TruncatedFileError(f"{self._index_path()}: index is not a readable HDF5 file ({exc})") from None
        with f:
            try:
                self._read_tables(f)
            except _LOW_LEVEL as exc:
                raise StoreError(f"{self._index_path()}: damaged index ({type(exc).__name__}: {exc})") from None

    def _read_tables(self, f: h5py.File) -> None:
        """Read the tables of a store without a table of contents through h5py (``allow_unchecked`` only)."""
        def table(name: str, dtype: np.dtype) -> np.ndarray:
            if name not in f:
                raise StoreError(f"{self._index_path()}: dataset /{name} is missing")
            check_dataset_size(f[name], f"{self._index_path()}: /{name}")
            arr = f[name][()]
            if arr.dtype != dtype:
                raise StoreError(f"{self._index_path()}: /{name} has dtype {arr.dtype}, expected {dtype}")
            return arr

        if int(f.attrs["format_version"]) != self.manifest.get("format_version"):
            raise IndexMismatchError(f"{self._index_path()}: index format_version {int(f.attrs['format_version'])}, "
                                     f"manifest {self.manifest.get('format_version')}")
        encoding = json.loads(f.attrs["encoding"])
        index = table("images", IMAGE_INDEX_DTYPE)
        if self.manifest.get("format_version") == 1:
            v1 = table("bases/table", BASIS_INDEX_DTYPE_V1)
            # a version-1 basis is a root, without mean, quantised like the records
            basis_table = np.zeros(len(v1), BASIS_INDEX_DTYPE)
            for name in v1.dtype.names:
                basis_table[name] = v1[name]
            basis_table["parent"] = -1
            quant = encoding.get("quant") if isinstance(encoding, dict) else None
            if quant not in QUANT_CODES:
                raise StoreError(f"{self._index_path()}: unknown quantisation {quant!r}")
            basis_table["quant"] = QUANT_CODES[quant]
        else:
            basis_table = table("bases/table", BASIS_INDEX_DTYPE)
        check_dataset_size(f["bases/blob"], f"{self._index_path()}: /bases/blob")
        self._set_tables(int(f.attrs["num_classes"]), encoding, index, basis_table,
                         np.asarray(f["bases/blob"][()], dtype=np.uint8), f.attrs.get("pool"))
        self._shard_at = []

    def _set_tables(self, num_classes: Any, encoding: Any, index: np.ndarray, basis_table: np.ndarray,
                    basis_blob: np.ndarray, pool_attr: Any = None) -> None:
        """Validate the tables against each other and the manifest, then keep them."""
        where = self._index_path()
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes <= 0:
            raise StoreError(f"{where}: num_classes {num_classes!r} is not a positive integer")
        self.num_classes = int(num_classes)
        if self.manifest.get("num_classes") != self.num_classes:
            raise IndexMismatchError(f"{where}: index has C={self.num_classes}, manifest {self.manifest.get('num_classes')}")
        if not isinstance(encoding, dict):
            raise StoreError(f"{where}: the encoding attribute is not a JSON object")
        self.encoding: Dict[str, Any] = encoding
        if not isinstance(self.encoding.get("method", ""), str):
            raise StoreError(f"{where}: the encoding's method {self.encoding.get('method')!r} is not a name")
        if self.encoding.get("quant") not in ("fp32", "fp16", "bf16", "int8"):
            raise StoreError(f"{where}: unknown quantisation {self.encoding.get('quant')!r}")
        self.index = index
        self.basis_table = basis_table
        self._check_basis_table()
        self._basis_blob = basis_blob
        self.quant: str = self.encoding.get("quant", "fp16")
        self.ks = self.index["k"].astype(np.int64)
        if len(self.ks) and (self.ks.min() < 1 or int(self.ks.max()) * self.num_classes > MAX_CELLS):
            raise StoreError(f"{where}: image row counts must lie in [1, {MAX_CELLS // self.num_classes}], "
                             f"found {int(self.ks.min())}..{int(self.ks.max())}")
        if len(self.ks):
            cells = self.ks * self.num_classes
            over = np.flatnonzero(cells > np.minimum(MAX_CELLS, FREE_CELLS + CELLS_PER_BYTE * self.index["length"].astype(np.int64)))
            if len(over):
                i = int(over[0])
                raise SizeLimitError(f"{where}: record {i} is {int(self.index['length'][i])} bytes but declares "
                                     f"K={int(self.ks[i])} x C={self.num_classes} cells, more than it can decode to")
        self.labels = self.index["label"].astype(np.int64)
        self.pool = _read_pool(pool_attr, self.manifest.get("format_version"), self.ks, self._index_path())
        self.row_start = np.concatenate([[0], np.cumsum(self.ks)[:-1]]).astype(np.int64)
        nshards = len(self.manifest.get("shards", []))
        if len(self.index) and (self.index["shard"].max() >= nshards):
            raise IndexMismatchError(f"{where}: index names shard {self.index['shard'].max()}, manifest lists {nshards}")
        for s, entry in enumerate(self.manifest.get("shards", [])):
            sel = self.index["shard"] == s
            if sel.any() and int((self.index["offset"][sel] + self.index["length"][sel]).max()) > int(entry["bytes"]):
                raise IndexMismatchError(f"{where}: records of shard {s} extend past its {entry['bytes']} bytes")

    def _check_basis_table(self) -> None:
        """Parents precede their children, means sit on roots, quantisations are known; full ranks (M,)."""
        t = self.basis_table
        where = self._index_path()
        full = np.zeros(len(t), dtype=np.int64)
        for j in range(len(t)):
            p = int(t["parent"][j])
            if not -1 <= p < j:
                raise IndexMismatchError(f"{where}: basis {j} names parent {p}; a parent must be an earlier basis or -1")
            if int(t["quant"][j]) not in QUANT_NAMES or int(t["flags"][j]) & ~BASIS_FLAG_MEAN:
                raise StoreError(f"{where}: basis {j} has unknown quantisation {int(t['quant'][j])} or flags {int(t['flags'][j])}")
            if p >= 0 and int(t["flags"][j]) & BASIS_FLAG_MEAN:
                raise IndexMismatchError(f"{where}: basis {j} has a mean row but a parent ({p}); only roots hold means")
            full[j] = int(t["rank"][j]) + (full[p] if p >= 0 else 0)
        if len(full) and int(full.max()) > self.num_classes:
            raise IndexMismatchError(f"{where}: a full basis of rank {int(full.max())} exceeds C={self.num_classes}")
        self.basis_full_rank = full

    def _check_pid(self) -> None:
        if self._pid != os.getpid():
            # inherited handles and caches (possibly on a GPU) are not safe after fork: rebuild in this process
            self._files, self._dense, self._pid = {}, {}, os.getpid()

    def _shard_fd(self, s: int) -> int:
        """An open descriptor of the file holding shard ``s`` (table-of-contents stores), size-checked."""
        self._check_pid()
        fd = self._files.get(s)
        if fd is None:
            fn, _, size = self._shard_at[s]
            try:
                fd = os.open(fn, os.O_RDONLY)
            except FileNotFoundError:
                raise MissingShardError(f"{fn}: shard file is missing") from None
            except OSError as exc:
                raise UnreadableFileError(f"{fn}: cannot open shard {s} ({exc.strerror or exc})") from None
            found = os.fstat(fd).st_size
            if found != size:
                os.close(fd)
                raise TruncatedFileError(f"{fn}: shard file is {found} bytes, the store says {size}")
            self._files[s] = fd
        return fd

    def _shard(self, s: int):
        """The h5py records dataset of shard ``s`` (stores read with ``allow_unchecked`` only)."""
        self._check_pid()
        ds = self._files.get(s)
        if ds is None:
            name = shard_name(s)
            if self.single:
                fn = self.path
                key = f"{SHARD_DIR}/{name}"
                try:
                    f = h5py.File(self.path, "r")
                    if key not in f:
                        raise MissingShardError(f"{self.path}: shard dataset /{key} is missing")
                    ds = f[key]
                    if not isinstance(ds, h5py.Dataset):
                        raise TruncatedFileError(f"{self.path}: /{key} is not a dataset")
                except _LOW_LEVEL as exc:
                    raise TruncatedFileError(f"{self.path}: shard dataset /{key} is not readable ({exc})") from None
            else:
                fn = os.path.join(self.path, SHARD_DIR, name)
                if not os.path.isfile(fn):
                    raise MissingShardError(f"{fn}: shard file is missing")
                check_shard_file(fn, self.manifest["shards"][s])
                try:
                    f = h5py.File(fn, "r")
                    ds = f[RECORDS_DATASET]
                    if not isinstance(ds, h5py.Dataset):
                        raise TruncatedFileError(f"{fn}: /{RECORDS_DATASET} is not a dataset")
                except _LOW_LEVEL as exc:
                    raise TruncatedFileError(f"{fn}: shard is not readable ({exc})") from None
            expected = int(self.manifest["shards"][s]["bytes"])
            if ds.shape != (expected,) or ds.dtype != np.uint8:
                raise TruncatedFileError(f"{fn}: shard {s} holds {ds.shape} {ds.dtype}, manifest says ({expected},) uint8")
            self._files[s] = ds
        return ds

    def _read_shard(self, s: int, off: int, ln: int) -> bytes:
        """Bytes ``[off, off + ln)`` of shard ``s``'s records."""
        if self._toc is None:
            try:
                return self._shard(s)[off : off + ln].tobytes()
            except _LOW_LEVEL as exc:
                raise TruncatedFileError(f"{self.path}: bytes [{off}, {off + ln}) of shard {s} cannot be read ({exc})") from None
        fd = self._shard_fd(s)
        try:
            return os.pread(fd, ln, self._shard_at[s][1] + off)
        except OSError as exc:
            raise UnreadableFileError(f"{self._shard_at[s][0]}: cannot read shard {s} ({exc.strerror or exc})") from None

    def shard_bytes(self, s: int) -> bytes:
        """All record bytes of shard ``s`` (as many as the manifest says it holds)."""
        n = int(self.manifest["shards"][s]["bytes"])
        buf = self._read_shard(s, 0, n)
        if len(buf) != n:
            raise TruncatedFileError(f"{self.path}: shard {s} is {len(buf)} bytes, manifest says {n}")
        return buf

    def __getstate__(self) -> Dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"], state["_pid"], state["_dense"] = {}, None, {}
        state["_aug"] = None   # workers read the metadata they need themselves (an epoch at a time)
        return state

    def close(self) -> None:
        """Close open files (they reopen on next use)."""
        if self._pid == os.getpid():   # descriptors inherited over fork belong to the parent
            for ds in self._files.values():
                try:
                    os.close(ds) if isinstance(ds, int) else ds.file.close()
                except Exception:  # pragma: no cover
                    pass
        self._files = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    # -- records -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.index)

    def _check_id(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < len(self.index):
            raise IndexError(f"image id {i} out of range for a store of {len(self.index)} images")
        return i

    def record_bytes(self, i: int) -> bytes:
        """The raw bytes of image ``i``'s record, checksum-verified."""
        e = self.index[self._check_id(i)]
        off, ln = int(e["offset"]), int(e["length"])
        buf = self._read_shard(int(e["shard"]), off, ln)
        if len(buf) != ln:
            raise TruncatedFileError(f"{self.path}: record {i} is {len(buf)} bytes, index says {ln}")
        if self.verify_checksums and zlib.crc32(buf) != int(e["crc32"]):
            raise CorruptRecordError(f"{self.path}: record {i} (shard {int(e['shard'])}, offset {off}) fails its crc32 check: "
                                     f"expected {int(e['crc32']):08x}, found {zlib.crc32(buf):08x}")
        return buf

    def record(self, i: int, raw: bool = False) -> Record:
        """Parsed record of image ``i`` (factors, means, residual); ``raw`` keeps the stored dtypes."""
        buf = self.record_bytes(i)
        version = self.manifest.get("format_version")
        if len(buf) > 15 and buf[15] & FLAG_ONE_SCALE and isinstance(version, int) and version < ONE_SCALE_VERSION:
            raise CorruptRecordError(f"{self.path}: record {i} has the one-scale flag, which stores of format version "
                                     f"{version} cannot hold (it exists from version {ONE_SCALE_VERSION})")
        rec = unpack_record(buf, where=f"{self.path}: record {i}", raw=raw)
        e = self.index[i]
        if (rec.k != int(e["k"]) or rec.c != self.num_classes or rec.rank != int(e["rank"]) or rec.basis != int(e["basis"])
                or rec.res_vals.numel() != int(e["nnz"])):
            raise IndexMismatchError(f"{self.path}: record {i} holds K={rec.k}, C={rec.c}, rank={rec.rank}, basis={rec.basis}; "
                                     f"index says K={int(e['k'])}, C={self.num_classes}, rank={int(e['rank'])}, basis={int(e['basis'])}")
        if (rec.mean is not None) != bool(self.encoding.get("keep_mean")):
            raise IndexMismatchError(f"{self.path}: record {i} {'has' if rec.mean is not None else 'lacks'} row means, "
                                     f"the store's keep_mean is {bool(self.encoding.get('keep_mean'))}")
        if rec.quant != self.quant:
            raise IndexMismatchError(f"{self.path}: record {i} is {rec.quant}, the store's quantisation is {self.quant}")
        if rec.basis >= 0 and (rec.basis >= len(self.basis_table) or int(self.basis_full_rank[rec.basis]) < rec.rank):
            raise IndexMismatchError(f"{self.path}: record {i} needs {rec.rank} rows of shared basis {rec.basis}, "
                                     f"which the basis table does not have")
        return rec

    def _basis_entry(self, b: int):
        """(own rows (r, C) float32, mean (C,) or None) of basis ``b``, checksum-verified, cached."""
        t = self._bases.get(b)
        if t is None:
            if not 0 <= b < len(self.basis_table):
                raise IndexMismatchError(f"{self.path}: basis {b} is not in the basis table of {len(self.basis_table)}")
            e = self.basis_table[b]
            off, ln = int(e["offset"]), int(e["length"])
            buf = self._basis_blob[off : off + ln].tobytes()
            if len(buf) != ln or zlib.crc32(buf) != int(e["crc32"]):
                raise CorruptRecordError(f"{self.path}: shared basis {b} fails its size or crc32 check")
            quant, rank, c = QUANT_NAMES[int(e["quant"])], int(e["rank"]), self.num_classes
            has_mean = bool(int(e["flags"]) & BASIS_FLAG_MEAN)
            need = quantized_nbytes(quant, rank, c) + (4 * c if has_mean else 0)
            if ln != need:
                raise IndexMismatchError(f"{self.path}: shared basis {b} is {ln} bytes; rank {rank}, C={c}, {quant}"
                                         f"{' and a mean row' if has_mean else ''} need {need}")
            try:
                rows, n = dequantize(memoryview(buf), quant, rank, c)
            except CodecError as exc:
                raise CorruptRecordError(f"{self.path}: shared basis {b}: {exc}") from None
            mean = torch.from_numpy(np.frombuffer(buf, "<f4", count=c, offset=n).copy()) if has_mean else None
            t = self._bases[b] = (rows, mean)
        return t

    def basis(self, b: int) -> torch.Tensor:
        """Shared basis ``b`` as a (R, C) float32 tensor: its ancestors' rows, then its own."""
        rows, _ = self._basis_entry(b)
        p = int(self.basis_table["parent"][b])
        return torch.cat([self.basis(p), rows]) if p >= 0 else rows

    def basis_mean(self, b: int) -> Optional[torch.Tensor]:
        """The mean row (C,) of basis ``b``'s root, or None."""
        while int(self.basis_table["parent"][b]) >= 0:
            b = int(self.basis_table["parent"][b])
        return self._basis_entry(b)[1]

    def matrix(self, i: int) -> torch.Tensor:
        """Decoded logits of image ``i``: (K_i, C) float32 on CPU."""
        rec = self.record(i)
        if rec.basis < 0:
            return rec.matrix()
        out = rec.matrix(self.basis(rec.basis))
        mean = self.basis_mean(rec.basis)
        return out if mean is None else out + mean

    # -- batched decode ----------------------------------------------------------------------------
    def factors(self, device: str = "cpu") -> DenseFactors:
        """All factors as padded tensors on ``device`` (built once per process and device)."""
        key = str(device)
        self._check_pid()
        if key not in self._dense:
            self._dense[key] = DenseFactors.build(self, device)
        return self._dense[key]

    def rows(self, image_ids: Sequence[int], view_ids: Sequence[int], device: str = "cpu") -> torch.Tensor:
        """Decode one row per (image, view) pair: ``image_ids`` and ``view_ids`` (B,) int -> (B, C) float32 on ``device``.

        Uses the dense factor tables (one gather and one batched matmul) when they fit in
        ``max_dense_bytes`` (a constructor argument, 1 GiB by default), else decodes each image's record.
        """
        if str(device) == "cpu" and str(device) not in self._dense and dense_bytes(self) > self.max_dense_bytes:
            return rows_from_records(self, image_ids, view_ids)
        return self.factors(device).rows(image_ids, view_ids)

    # -- pooling ---------------------------------------------------------------------------------------
    @property
    def kept_epochs(self) -> Optional[List[int]]:
        """The source epoch numbers a pooled store kept (row j of every image is from ``kept_epochs[j]``),
        or None when the store holds every epoch of its source."""
        return None if self.pool is None else list(self.pool["kept_epochs"])

    @property
    def source_epochs(self) -> int:
        """Label epochs of the source: the pool's ``source_epochs``, else the rows every image has."""
        if self.pool is not None:
            return int(self.pool["source_epochs"])
        return int(self.ks.min()) if len(self.ks) else 0

    def view_for_epoch(self, epoch: int) -> int:
        """The view (row of every label matrix) that training epoch ``epoch`` replays.

        Unpooled: ``epoch`` itself.  Pooled (n kept epochs): ``epoch mod n``, so consecutive training epochs
        see different kept views and every kept view serves equally often in any n consecutive epochs, for
        schedules of any length (a student trained for the source's K epochs sees each kept view K / n
        times, interleaved, rather than one view for K / n epochs in a row)."""
        e = int(epoch)
        if e < 0:
            raise InputError(f"{self.path}: training epoch must be >= 0, found {e}")
        return e if self.pool is None else e % len(self.pool["kept_epochs"])

    # -- metadata and statistics -------------------------------------------------------------------
    @property
    def aug(self) -> AugMeta:
        """The store's whole augmentation metadata (read on first access; see :attr:`aug_reader` for
        per-epoch access that does not hold every row)."""
        if self._aug is None:
            self._aug = self.aug_reader.full()
        return self._aug

    @property
    def aug_reader(self) -> AugReader:
        """Lazy access to the metadata: ``attrs``, ``batches``, ``images``, ``num_rows``, ``epoch_rows(e)``."""
        if self._augr is None:
            self._augr = AugReader(self._index_path(), self._toc, self.verify_checksums,
                                   self.manifest.get("format_version"))
        return self._augr

    def meta(self, i: int) -> np.ndarray:
        """Augmentation rows of image ``i`` ordered by aug (ROW_DTYPE; empty when none were stored)."""
        return self.aug.image_rows(self._check_id(i))

    def stats(self) -> Dict[str, Any]:
        """Sizes and ratios; ``ratio`` = fp16 label bytes (2 C per row) / stored label bytes."""
        return store_stats(self)

    def verify(self) -> List[str]:
        """Check every record and basis, and for directory stores the whole-file checksums of the index
        and of each shard's HDF5 structure (which reads do not depend on, but other HDF5 tools do);
        returns the problems found (empty list: healthy)."""
        problems = verify_store(self)
        if self._toc is not None and not self.single:
            checks = [lambda: check_index_file(self._toc._abs, self.manifest["index"], True)]
            checks += [lambda s=s, e=e: check_shard_file(self._shard_at[s][0], e) for s, e in enumerate(self.manifest["shards"])]
            for check in checks:
                try:
                    check()
                except ScoreError as exc:
                    problems.append(str(exc))
        return problems

    def __repr__(self) -> str:
        return f"LabelStore({self.path!r}, images={len(self)}, classes={self.num_classes})"


def _read_pool(attr: Any, version: Any, ks: np.ndarray, where: str) -> Optional[Dict[str, Any]]:
    """The index's ``pool`` attribute (its JSON text), checked (docs/FORMAT.md section 4), or None when the
    store has none."""
    if attr is None:
        return None
    if not isinstance(version, int) or version < POOL_VERSION:
        raise StoreError(f"{where}: a pool attribute in a version {version} store "
                         f"(pools exist from version {POOL_VERSION})")
    pool = parse_json(attr, f"{where}: pool attribute")
    kept = pool.get("kept_epochs") if isinstance(pool, dict) else None
    k = pool.get("source_epochs") if isinstance(pool, dict) else None
    ok = (isinstance(k, int) and isinstance(kept, list) and 1 <= len(kept) < k and all(isinstance(e, int) for e in kept)
          and kept[0] >= 0 and all(b > a for a, b in zip(kept, kept[1:])))
    if not ok:
        raise StoreError(f"{where}: pool attribute is malformed (expected source_epochs:int and kept_epochs: 1 to "
                         f"source_epochs - 1 increasing non-negative ints), found {str(pool)[:200]}")
    if len(ks) and np.any(ks != len(kept)):
        raise IndexMismatchError(f"{where}: the pool keeps {len(kept)} epochs but images hold "
                                 f"{int(ks.min())}..{int(ks.max())} rows")
    return {"source_epochs": k, "kept_epochs": kept}
