"""Streaming store writer: records go to HDF5 shards, the index and the manifest are written last.

The store is assembled in a sibling directory ``<path>.partial`` and renamed into place by
:meth:`StoreWriter.close`, so a reader never sees a half-written store.  A write that fails on bad
input or a full disk leaves nothing behind; an interrupted one (Ctrl-C, a killed process) leaves the
partial directory, whose completed shards ``resume=True`` picks up (see :mod:`score_codec.store.journal`).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import h5py
import numpy as np
import torch

from ..codecs.arguments import check_int
from ..codecs.quantize import dequantize
from ..codecs.global_basis import BasisEntry, BasisSet, FitSource
from ..errors import InputError, WriteFailedError
from .encoder import check_matrices, encode_chunk, encode_store_chunk
from .header import write_toc, write_toc_prefix
from .integrity import USERBLOCK_BYTES, shard_entry
from .indexio import (StoredBasis, basis_table, fsync_file, make_manifest, stored_basis, write_index, write_index_file,
                      write_manifest_file)
from .journal import JOURNAL_DIR, load_journal, write_entry, write_options
from .atomic import WriteLock, install, recover
from .layout import (BASIS_FLAG_MEAN, IMAGE_INDEX_DTYPE, INDEX_FILE, MANIFEST_FILE, RECORDS_DATASET, SHARD_DIR, is_single_file,
                     shard_name)
from .allocate import fit_rate_control
from .meta import AugMeta
from .options import CodecOptions

__all__ = ["StoreWriter", "DEFAULT_SHARD_BYTES", "check_replaceable"]

log = logging.getLogger(__name__)
DEFAULT_SHARD_BYTES = 256 * 2**20
MatrixInput = Union[torch.Tensor, np.ndarray, Sequence[Any]]


def _as_matrices(mats: MatrixInput) -> List[torch.Tensor]:
    if isinstance(mats, np.ndarray):
        mats = torch.from_numpy(mats)
    if isinstance(mats, torch.Tensor):
        if mats.ndim == 2:
            mats = mats[None]
        if mats.ndim != 3:
            raise InputError(f"expected a (N, K, C) array or a list of (K, C) matrices, found shape {tuple(mats.shape)}")
        return list(mats.unbind(0))
    out = []
    for m in mats:
        out.append(torch.from_numpy(np.asarray(m)) if not isinstance(m, torch.Tensor) else m)
    return out


def check_replaceable(path: str) -> None:
    """InputError unless ``path`` is a label store that overwriting may delete: a single-file store, or a
    directory holding nothing but a store's files (an unrelated file inside would be deleted with it)."""
    from .integrity import HDF5_SIGNATURE, PREFIX_MAGIC

    if os.path.islink(path) or not (os.path.isfile(path) or os.path.isdir(path)):
        raise InputError(f"{path}: not a file or directory score wrote; remove it yourself to replace it")
    if os.path.isfile(path):
        with open(path, "rb") as fh:
            head = fh.read(8)
        if head not in (HDF5_SIGNATURE, PREFIX_MAGIC):
            raise InputError(f"{path}: not a label store (no HDF5 or store signature); refusing to overwrite it")
        return
    for d, dirs, files in os.walk(path):
        rel = os.path.relpath(d, path)
        for f in files:
            ok = ((rel == "." and f in (MANIFEST_FILE, INDEX_FILE))
                  or (rel == SHARD_DIR and f.startswith("shard-") and f.endswith(".h5"))
                  or rel == JOURNAL_DIR)
            if not ok:
                raise InputError(f"{path}: holds {os.path.join(rel, f)!r}, which is not part of a label store; "
                                 f"refusing to overwrite it (move that file out first)")
        for sub in dirs:
            if rel != "." or sub not in (SHARD_DIR, JOURNAL_DIR):
                raise InputError(f"{path}: holds the folder {os.path.join(rel, sub)!r}, which is not part of a label "
                                 f"store; refusing to overwrite it")


class StoreWriter:
    """Write a label store incrementally.

    >>> with StoreWriter("labels.store", num_classes=10, method="svd", rank=4) as w:   # doctest: +SKIP
    ...     w.add(y_chunk)            # (n, K, C) or a list of (K_i, C) logit matrices
    ...     w.set_meta(aug_meta)

    Rate control by ``ratio`` is applied per :meth:`add` call (each chunk meets the ratio, so the
    store does); ``rank`` and ``energy`` are per image.  ``path`` ending in ``.h5`` writes a single
    file, anything else a directory of shards.

    Store-scope codecs (``method="global"`` or ``"two-level"``) fit their bases before the first record:
    call :meth:`fit` with an indexable of all the store's matrices (or a representative sample), or
    :meth:`set_bases` with bases fitted elsewhere (another rank); otherwise the first :meth:`add` chunk is
    used for fitting (a warning says so).  Their ``ratio`` is met by the whole store, bases included.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        num_classes: int,
        options: Optional[CodecOptions] = None,
        *,
        overwrite: bool = False,
        resume: bool = False,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        **codec: Any,
    ) -> None:
        """Open ``path`` for writing.

        Args:
            path: the store to create: a directory, or a single file when it ends in ``.h5``.
            num_classes: C, the width of every logit row.
            options: how to code the labels (:class:`~score_codec.store.options.CodecOptions`); any of its
                fields may also be given as keywords (``method="svd", rank=4``), which win.
            overwrite: replace an existing store at ``path`` (only once the new one is complete).
            resume: continue an interrupted write from its last complete shard (the options must match).
            shard_bytes: records per shard file, in bytes; a resumed write restarts after the last full one.
        """
        self.path = os.fspath(path)
        self.num_classes = check_int("num_classes", num_classes, 1)
        shard_bytes = check_int("shard_bytes", shard_bytes, 1)
        self.options = CodecOptions.build(options, **codec)
        if self.options.target_bytes is not None:
            raise InputError("target_bytes needs the store's row count in advance: use score_codec.encode, or "
                             "ratio= with StoreWriter")
        if self.options.keep_epochs is not None:
            raise InputError("keep_epochs is applied by score_codec.encode, encode_dump and relabel; a StoreWriter "
                             "writes the rows it is given (pass it the kept epochs and call set_pool)")
        self.opts = self.options.encode_options()
        device = self.options.device
        self.codec = self.opts.make_codec()  # fails early on an unknown method
        self.device = device
        self.single = is_single_file(self.path)
        self.overwrite = overwrite
        self._lock: Optional[WriteLock] = None
        if os.path.lexists(self.path) and not overwrite:
            raise InputError(f"{self.path}: destination exists (pass overwrite=True to replace it)")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise InputError(f"{self.path}: parent directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise WriteFailedError(f"{self.path}: parent directory {parent} is not writable")
        self.tmp = f"{self.path}.partial"
        if resume and self.single:
            raise InputError(f"{self.path}: resume needs a directory store (single-file stores are written in one go)")
        if os.path.lexists(self.path) and overwrite:
            check_replaceable(self.path)   # refuse before any work is done, not after
        # one writer per destination: the lock is held until close() or abort()
        self._lock = WriteLock(self.path)
        try:
            recover(self.path)
            self._prepare_tmp(resume)
        except BaseException:
            self._lock.release()
            raise
        self.shard_bytes = int(shard_bytes)
        self._index: List[np.ndarray] = []
        self._bases: List[StoredBasis] = []
        self._basis_set: Optional[BasisSet] = None
        self._buf = bytearray()
        self._shard = 0
        self._shard_sizes: List[int] = []
        self._shard_members: List[Dict[str, int]] = []   # directory stores: integrity members per written shard
        self._meta = AugMeta()
        self._pool: Optional[Dict[str, Any]] = None
        self._allocation: Optional[Dict[str, Any]] = None
        self._closed = False
        self._h5: Optional[h5py.File] = None
        options = {**self.opts.as_json(), "num_classes": self.num_classes, "shard_bytes": self.shard_bytes,
                   "scope": self.codec.scope}
        try:
            self._open_tmp(resume, options)
        except BaseException:
            self._lock.release()
            raise
        # index entries of the records in the shard being filled (journaled when it is flushed)
        self._open_entries: List[np.ndarray] = []

    def _prepare_tmp(self, resume: bool) -> None:
        """Clear ``<path>.partial`` unless it is resumed; a complete store in it that still has its journal
        was finished but not yet moved into place, and is resumed like any other (nothing is re-encoded)."""
        if not os.path.lexists(self.tmp):
            return
        journal = os.path.isdir(os.path.join(self.tmp, JOURNAL_DIR))
        if resume and journal:
            if os.path.exists(os.path.join(self.tmp, MANIFEST_FILE)):
                os.remove(os.path.join(self.tmp, MANIFEST_FILE))   # rewritten, last, by close()
            return
        if resume and os.path.isdir(self.tmp):
            # without a journal this is the previous store, moved aside by a replacement that was cut short
            log.warning("%s: %s holds no resume journal (a replaced store); starting afresh", self.path, self.tmp)
        shutil.rmtree(self.tmp) if os.path.isdir(self.tmp) and not os.path.islink(self.tmp) else os.remove(self.tmp)

    def _open_tmp(self, resume: bool, options: Dict[str, Any]) -> None:
        try:
            if self.single:
                self._h5 = h5py.File(self.tmp, "w", userblock_size=USERBLOCK_BYTES)
            elif resume and os.path.isdir(self.tmp):
                state = load_journal(self.tmp, options)
                self._index, self._shard_sizes = state.index, state.shard_sizes
                self._shard_members = state.shard_members
                self._bases = state.bases
                if self.codec.scope == "store" and self._bases:
                    self._basis_set = self._restore_basis_set()
                self._shard = len(state.shard_sizes)
                log.info("%s: resuming after %d complete shards (%d images)", self.path, self._shard, self.num_images)
            else:
                os.makedirs(os.path.join(self.tmp, SHARD_DIR))
                write_options(self.tmp, options)
        except OSError as exc:
            raise WriteFailedError(f"{self.path}: cannot create the store: {exc}") from exc

    # -- writing -------------------------------------------------------------------------------
    @property
    def num_images(self) -> int:
        """Images written so far (after a resume: those in the complete shards that were kept)."""
        return sum(len(x) for x in self._index)

    @property
    def bases(self) -> Optional[BasisSet]:
        """The fitted bases of a store-scope codec (``global``, ``two-level``), once :meth:`fit` or
        :meth:`set_bases` ran or a resumed write restored them; None before that and for image-scope codecs."""
        return self._basis_set

    def fit(self, matrices: Sequence[Any], labels: Optional[Sequence[int]] = None, ks: Optional[Sequence[int]] = None,
            head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
            num_images: Optional[int] = None, total_rows: Optional[int] = None) -> BasisSet:
        """Fit a store-scope codec's bases on ``matrices`` (an indexable of (K_i, C) logits; read at most
        twice) and write them; ``head=(W, b)`` uses the teacher's final linear layer as the basis instead.
        ``num_images`` / ``total_rows``: the store's sizes when ``matrices`` are a sample of it (rate control)."""
        if self.codec.scope != "store":
            raise InputError(f"method {self.opts.method!r} fits per image; fit() is for store-scope codecs "
                             f"(global, two-level)")
        if self._basis_set is not None:
            raise InputError(f"{self.path}: the bases are already fitted")
        if len(matrices) == 0:
            raise InputError("fit() needs at least one matrix")
        budget = None if self.opts.ratio is None else 2.0 * self.num_classes / self.opts.ratio
        src = FitSource(matrices, labels, ks, num_images, total_rows)
        budget, kw = fit_rate_control(self.opts, src, budget)
        bs = self.codec.fit(src, self.opts.quant, rank=self.opts.rank, energy=self.opts.energy,
                            budget_per_row=budget, residual=self.opts.residual, device=self.device, head=head, **kw)
        self.set_bases(bs)
        return bs

    def set_bases(self, bases: BasisSet) -> None:
        """Use store-scope ``bases`` fitted elsewhere (e.g. on rank 0 of a distributed encode)."""
        if self._basis_set is not None or self.num_images:
            raise InputError(f"{self.path}: set the bases before adding images, once")
        self._basis_set = bases
        self._bases = [stored_basis(e.rows, "fp16", e.parent, e.mean) for e in bases.entries]
        if not self.single:
            with open(os.path.join(self.tmp, JOURNAL_DIR, "basis_set.json"), "w") as fh:
                json.dump({"of_class": {str(k): v for k, v in bases.of_class.items()}, "default": bases.default,
                           "residual": bases.residual}, fh)

    def _restore_basis_set(self) -> BasisSet:
        """The BasisSet of a resumed store-scope run, from its journaled bases."""
        entries = []
        for b in self._bases:
            rows, n = dequantize(memoryview(b.blob), b.quant, b.rank, self.num_classes)
            mean = None
            if b.flags & BASIS_FLAG_MEAN:
                mean = torch.from_numpy(np.frombuffer(b.blob, "<f4", count=self.num_classes, offset=n).copy())
            entries.append(BasisEntry(rows, b.parent, mean))
        with open(os.path.join(self.tmp, JOURNAL_DIR, "basis_set.json")) as fh:
            m = json.load(fh)
        return BasisSet(entries, {int(k): v for k, v in m["of_class"].items()}, m["default"], m["residual"])

    def add(self, matrices: MatrixInput, labels: Optional[Sequence[int]] = None) -> List[int]:
        """Encode and append images; returns their ids (consecutive, in input order)."""
        mats = _as_matrices(matrices)
        if not mats:
            return []
        first = self.num_images
        check_matrices(mats, self.num_classes, first)
        if labels is not None and len(labels) != len(mats):
            raise InputError(f"got {len(labels)} labels for {len(mats)} images")
        if self.codec.scope == "store":
            if self._basis_set is None:
                log.warning("%s: %s bases fitted on the first chunk only (%d images); call fit() with the whole "
                            "store for a basis that represents it", self.path, self.opts.method, len(mats))
                self.fit(mats, labels)
            chunk = encode_store_chunk(mats, self.opts, self._basis_set, labels=labels, device=self.device)
        else:
            budget = None
            if self.opts.ratio is not None:
                budget = 2.0 * self.num_classes * sum(int(m.shape[0]) for m in mats) / self.opts.ratio
            chunk = encode_chunk(mats, self.opts, labels=labels, device=self.device, budget=budget,
                                 next_basis=len(self._bases))
        for bid in sorted(chunk.bases):
            self._bases.append(stored_basis(chunk.bases[bid], self.opts.quant))
        return self.append_encoded(chunk, [int(m.shape[0]) for m in mats], labels)

    def append_encoded(self, chunk: Any, ks: Sequence[int], labels: Optional[Sequence[int]] = None) -> List[int]:
        """Append records encoded elsewhere (an :class:`~score_codec.store.encoder.EncodedChunk` whose bases
        are already in the store) for images with ``ks`` rows; returns their ids."""
        first = self.num_images
        entries = np.zeros(len(chunk.records), IMAGE_INDEX_DTYPE)
        for j, rec in enumerate(chunk.records):
            if self._buf and len(self._buf) + len(rec) > self.shard_bytes:
                self._flush_shard()
            entries[j] = (self._shard, len(self._buf), len(rec), zlib.crc32(rec), ks[j], chunk.ranks[j],
                          chunk.nnz[j], -1 if labels is None else int(labels[j]), chunk.basis_of[j])
            self._buf += rec
            self._open_entries.append(entries[j : j + 1])
        self._index.append(entries)
        return list(range(first, first + len(chunk.records)))

    def set_meta(self, meta: AugMeta) -> None:
        """Attach the store's augmentation metadata (validated against the image row counts at close)."""
        if not isinstance(meta, AugMeta):
            raise InputError(f"meta must be an AugMeta, found {type(meta).__name__}")
        self._meta = meta

    def set_pool(self, source_epochs: int, kept_epochs: Sequence[int],
                 allocation: Optional[Dict[str, Any]] = None) -> None:
        """Record that the store keeps only the label epochs ``kept_epochs`` (source epoch numbers, increasing)
        of the source's ``source_epochs``; every image must then have ``len(kept_epochs)`` rows, row j from
        epoch ``kept_epochs[j]``.  ``allocation``: how the choice was made (written into the index's
        ``encoding`` as ``allocation``, informative)."""
        kept = [int(e) for e in kept_epochs]
        if not kept or any(b <= a for a, b in zip(kept, kept[1:])) or kept[0] < 0 or len(kept) > int(source_epochs):
            raise InputError(f"kept epochs must be 1..{source_epochs} increasing non-negative numbers, found {kept[:8]}")
        pooled = len(kept) < int(source_epochs)
        self._pool = {"source_epochs": int(source_epochs), "kept_epochs": kept} if pooled else None
        self._allocation = None if allocation is None else dict(allocation)

    def _flush_shard(self) -> None:
        try:
            self._write_shard()
        except (OSError, RuntimeError) as exc:
            # h5py reports ENOSPC / EFBIG as OSError or RuntimeError depending on where it hits
            self.abort()
            raise WriteFailedError(f"{self.path}: writing shard {self._shard} failed ({exc}); nothing was kept") from None

    def _write_shard(self) -> None:
        data = np.frombuffer(bytes(self._buf), dtype=np.uint8)
        if self.single:
            self._h5.create_dataset(f"{SHARD_DIR}/{shard_name(self._shard)}", data=data)
        else:
            fn = os.path.join(self.tmp, SHARD_DIR, shard_name(self._shard))
            with h5py.File(fn + ".tmp", "w") as f:
                # contiguous (unchunked) so reading one record reads only its bytes
                f.create_dataset(RECORDS_DATASET, data=data)
            fsync_file(fn + ".tmp")
            # measured on the file just written: the manifest seals these values, not the file as found at close
            members = shard_entry(fn + ".tmp", len(data))
            os.replace(fn + ".tmp", fn)
            entries = np.concatenate(self._open_entries) if self._open_entries else np.zeros(0, IMAGE_INDEX_DTYPE)
            write_entry(self.tmp, self._shard, len(data), entries, self._bases, members)
            self._shard_members.append(members)
            self._open_entries = []
        self._shard_sizes.append(len(data))
        self._shard += 1
        self._buf = bytearray()

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Write the last shard, the index and the manifest; then move the store into place."""
        if self._closed:
            return
        try:
            if self._buf or self._shard == 0:
                self._flush_shard()
            index = np.concatenate(self._index) if self._index else np.zeros(0, IMAGE_INDEX_DTYPE)
            self._meta.validate(index["k"].astype(np.int64))
            if self._pool is not None and len(index) and np.any(index["k"] != len(self._pool["kept_epochs"])):
                raise InputError(f"{self.path}: a pooled store keeps {len(self._pool['kept_epochs'])} epochs, so every "
                                 f"image needs that many rows; found {int(index['k'].min())}..{int(index['k'].max())}")
            if self.single:
                sections = write_index(self._h5, **self._index_contents(index))
                sections.update({f"{SHARD_DIR}/{shard_name(s)}": ("u1", None) for s in range(self._shard)})
                manifest = make_manifest(len(index), self.num_classes, self._shard_sizes)
                self._h5.attrs["manifest"] = json.dumps(manifest)
                toc = write_toc(self._h5, sections)
                self._h5.close()
                write_toc_prefix(self.tmp, toc)   # written last: marks completeness
                fsync_file(self.tmp)
            else:
                write_index_file(os.path.join(self.tmp, INDEX_FILE), **self._index_contents(index))
                manifest = make_manifest(len(index), self.num_classes, self._shard_sizes, self.tmp, self._shard_members)
                # the journal stays until the store is in place: a complete store interrupted before that
                # is resumed (and moved in) rather than encoded again
                write_manifest_file(self.tmp, manifest)
            if os.path.lexists(self.path) and not self.overwrite:
                raise InputError(f"{self.path}: destination appeared while the store was written; not replaced")
            # the old store is removed only once the new one is in place
            install(self.tmp, self.path, check_replaceable)
            if not self.single:
                shutil.rmtree(os.path.join(self.path, JOURNAL_DIR), ignore_errors=True)
        except (OSError, RuntimeError) as exc:
            self.abort()
            raise WriteFailedError(f"{self.path}: writing the index failed ({exc}); nothing was kept") from None
        except BaseException as exc:
            self.abort(keep_partial=isinstance(exc, KeyboardInterrupt))
            raise
        self._closed = True
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _encoding(self) -> Dict[str, Any]:
        """The index's ``encoding`` attribute: the options, the codec's config and how a ratio was split."""
        encoding = {**self.opts.as_json(), "codec": self.codec.get_config()}
        if self._allocation is not None:
            encoding["allocation"] = self._allocation
        return encoding

    def _index_contents(self, index: np.ndarray) -> Dict[str, Any]:
        """What the index holds, as keyword arguments of ``write_index`` and ``write_index_file``."""
        return dict(num_classes=self.num_classes, encoding=self._encoding(), index=index,
                    table=basis_table(self._bases), blob=b"".join(b.blob for b in self._bases), meta=self._meta,
                    pool=self._pool)

    def abort(self, keep_partial: bool = False) -> None:
        """Stop writing; discard everything unless ``keep_partial`` (then ``resume=True`` continues)."""
        self._closed = True
        try:
            if self._h5 is not None and self._h5.id.valid:
                self._h5.close()
        except Exception:  # pragma: no cover - best effort cleanup
            pass
        try:
            if keep_partial and not self.single:
                log.warning("%s: interrupted; completed shards kept in %s (resume with resume=True / --resume)", self.path, self.tmp)
                return
            if os.path.isdir(self.tmp):
                shutil.rmtree(self.tmp, ignore_errors=True)
            elif os.path.exists(self.tmp):
                os.remove(self.tmp)
        finally:
            self._release()

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(keep_partial=issubclass(exc_type, KeyboardInterrupt))
