"""Convert between dumps and label stores: :func:`encode_dump` and :func:`decode_dump`.

These are ``score-codec encode`` and ``score-codec decode`` as library calls, with the same guarantees:
the dump family is detected (or named), SRe2L rows are checked to map to the right images, every dump file
is read once (into a scratch file beside the destination, removed afterwards; the global codec without a
residual codes it row by row in dump order, every other codec image by image), an interrupted encode
resumes from its last complete shard, and a failed run leaves nothing at the destination.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ..progress import progress_bar

from ..codecs.global_basis import GlobalCodec
from ..errors import InputError, IOFailureError, WriteFailedError
from ..codecs.global_basis import FitSource
from ..store.allocate import (PROBE_VIEWS, Allocation, KeptViews, allocate, check_plan_method, check_plannable, check_ratios,
                              epoch_values, finish, matrix_inputs, plan_entry, plan_ratios, probe_from_rows,
                              prune_meta, store_kl)
from ..store.options import CodecOptions, split_codec_options
from ..store.reader import LabelStore
from ..store.rowwise import RowBlocks, encode_rows, supports_rowwise
from ..store.writer import DEFAULT_SHARD_BYTES, StoreWriter
from .base import DumpReader
from .contents import read_dump
from .detect import open_reader
from .options import DumpOptions, split_dump_options
from .writers import WRITERS, write_dump

__all__ = ["encode_dump", "plan_dump", "decode_dump", "CHUNK_IMAGES"]

PathLike = Union[str, os.PathLike]
Head = Tuple[torch.Tensor, Optional[torch.Tensor]]

#: images coded per batched call when a dump is regrouped per image
CHUNK_IMAGES = 256


def _note(progress: bool, msg: str) -> None:
    # one-line notes travel with the progress bars: both are for a person watching stderr
    if progress:
        print(msg, file=sys.stderr)


class _Matrices:
    """The dump's per-image matrices as an indexable (what store-scope codecs fit on)."""

    def __init__(self, contents: Any) -> None:
        self.c = contents

    def __len__(self) -> int:
        return self.c.num_images

    def __getitem__(self, i: int) -> np.ndarray:
        return self.c.matrix(i)


def _check_contents(src: str, c: Any) -> None:
    empty = np.flatnonzero(c.ks == 0)
    if len(empty):
        raise InputError(f"{src}: images {empty[:5].tolist()}{'...' if len(empty) > 5 else ''} have no rows in "
                         f"the dump (pass num_images= to fix the dataset size)")


def _resolve_target(opts: CodecOptions, c: Any) -> CodecOptions:
    """``target_bytes`` as the ratio it means for this dump's row count."""
    if opts.target_bytes is None:
        return opts
    if opts.target_bytes <= 0:
        raise InputError(f"target_bytes must be positive, found {opts.target_bytes}")
    rows = int(c.ks.sum())
    return opts.replace(ratio=2.0 * c.num_classes * rows / opts.target_bytes, target_bytes=None)


def encode_dump(
    src: PathLike,
    dst: PathLike,
    options: Optional[CodecOptions] = None,
    *,
    format: str = "auto",
    dump_options: Optional[DumpOptions] = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_images: int = CHUNK_IMAGES,
    head: Optional[Head] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """Compress a soft-label dump on disk into a label store (``score-codec encode`` as a function).

    ``encode_dump("dumps/FKD_cutmix_fp16", "labels.store", method="global", ratio=30, quant="int8", ipc=50)``

    Args:
        src: the dump: a directory (``epoch_0/batch_0.tar`` ..., per-image files) or a ``.npy`` file.
        dst: the store to create (a directory, or one file when it ends in ``.h5``).
        options: how to code the labels (:class:`~score_codec.store.options.CodecOptions`).
        format: the dump family (``"sre2l"``, ``"lpld"``, ``"lpqld"``, ``"edc"``, ``"gvbsm"``, ``"fkd"``,
            ``"npy"``) or ``"auto"`` to detect it.
        dump_options: how to interpret the dump (:class:`~score_codec.formats.options.DumpOptions`: classes,
            the SRe2L sampler seed, the mapping check, ...).
        overwrite: replace an existing store (only once the new one is complete).
        resume: continue an interrupted encode from its last complete shard (kept in ``<dst>.partial``);
            the options must match the interrupted run's.
        progress: progress bars and one-line notes (the family found, the resume point) on stderr.
        shard_bytes: bytes of records per shard file.
        chunk_images: images coded per batched call when the dump is regrouped per image.
        head: ``(W, b)`` of the teacher's final linear layer (W (C, d), b (C,)) as the global basis
            (``method="global"`` only).
        **kwargs: any field of :class:`~score_codec.store.options.CodecOptions` (``method``, ``rank``,
            ``ratio``, ``quant``, ...) or of :class:`~score_codec.formats.options.DumpOptions` (``ipc``,
            ``labels``, ``num_classes``, ``seed``, ...); keywords win over the option objects.

    Returns:
        The dict ``score-codec encode --json`` prints: the store's :meth:`~score_codec.LabelStore.stats`
        plus ``source_format``.

    Raises:
        InputError: a dump or an option that cannot be used (FormatError for a dump that breaks its layout).
        IOFailureError: the operating system refused a read or a write (e.g. the disk is full).
    """
    codec_kw, rest = split_codec_options(kwargs)
    dump_kw, rest = split_dump_options(rest)
    if rest:
        raise TypeError(f"encode_dump() got unexpected keyword argument(s) {', '.join(map(repr, sorted(rest)))}")
    opts = CodecOptions.build(options, **codec_kw)
    dopts = DumpOptions.build(dump_options, **dump_kw)
    src, dst = os.fspath(src), os.fspath(dst)
    if head is not None and opts.method != "global":
        raise InputError(f"head= gives a global basis; method {opts.method!r} does not use one (use 'global')")
    if os.path.exists(dst) and not overwrite and not resume:
        raise InputError(f"{dst}: destination exists (pass overwrite=True to replace it)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise InputError(f"{dst}: parent directory does not exist")
    try:
        reader = open_reader(src, format, **dopts.reader_kwargs())
        _note(progress, f"format: {reader.name} ({reader.summary()})")
        if opts.method == "global" and not opts.residual and not resume:
            fmt, opts, alloc, kl = _encode_one_pass(src, dst, reader, opts, overwrite, progress, shard_bytes, head)
        else:
            fmt, opts, alloc, kl = _encode_gathered(src, dst, reader, opts, overwrite, resume, progress, shard_bytes,
                                              chunk_images, head)
    except OSError as exc:
        # a read or write the layers below did not translate: the disk, not the input, failed
        raise IOFailureError(f"{src} -> {dst}: {exc}") from exc
    stats = finish(LabelStore(dst).stats(), opts, alloc, None if kl is None else lambda: kl)
    stats["source_format"] = fmt
    return stats



def _global_codec(opts: CodecOptions) -> GlobalCodec:
    """The global codec of ``opts.codec_config``; a bad configuration raises its error here."""
    return GlobalCodec(**dict(opts.codec_config or {}))


def _allocation_inputs(c: Any, opts: CodecOptions, labels: Optional[np.ndarray], one_pass: bool,
                       rowwise: bool = False) -> Tuple[Optional[List[Any]], Dict[str, Any]]:
    """What an encode of dump contents ``c`` fits the global basis on and probes: ``(sample, kwargs)`` with
    ``kwargs`` the ``fit_source``, ``probe`` and ``records`` of :func:`allocate` / :func:`plan_ratios` (one
    definition, so that a plan is made on exactly what the encode uses).

    ``one_pass`` (the global codec without a residual, ``_encode_one_pass``): ``sample`` is files spread over
    the dump holding the codec's ``fit_rows`` rows, which the writer also fits on, and record sizes are
    measured on the probe's rows.  Otherwise (``_encode_gathered``; ``sample`` None): every image's matrix,
    or with ``rowwise`` blocks of rows in dump order, and record sizes on a sample of images."""
    if one_pass:
        sample = c.spread_sample(_global_codec(opts).fit_rows)
        ks, rows = [len(b) for b in sample], len(c.aug.rows)
        return sample, dict(fit_source=lambda: FitSource(sample, None, ks, c.num_images, rows),
                            probe=lambda: probe_from_rows(sample, min(int(c.ks.max()), PROBE_VIEWS)), records=None)
    kwargs = matrix_inputs(_Matrices(c), labels, c.ks)
    if rowwise:
        blocks, nrows = RowBlocks(c.row_logits, 4096), int(c.ks.sum())
        kwargs["fit_source"] = lambda: FitSource(blocks, None, [len(blocks[i]) for i in range(len(blocks))],
                                                 c.num_images, nrows)
    return None, kwargs


def plan_dump(
    src: PathLike,
    ratios: Sequence[float],
    options: Optional[CodecOptions] = None,
    *,
    format: str = "auto",
    dump_options: Optional[DumpOptions] = None,
    progress: bool = False,
    scratch_dir: Optional[PathLike] = None,
    head: Optional[Head] = None,
    **kwargs: Any,
) -> List[Dict[str, Any]]:
    """How :func:`encode_dump` would spend each of several ratios on a dump; writes no store
    (``score-codec plan`` as a function).

    The dump is read once, as an encode reads it (its rows go to a scratch file in ``scratch_dir``, default
    the working directory, removed afterwards), the global basis is fitted once, and each ratio is split
    between kept label epochs and rank with the same inputs ``encode_dump`` uses.

    Args:
        src, options, format, dump_options, head, kwargs: as :func:`encode_dump` (``method="global"`` only;
            ``ratio`` / ``target_bytes`` are ignored).
        ratios: target ratios against fp16 logits (positive numbers).
        progress: progress bars and notes on stderr.
        scratch_dir: where the scratch copy of the dump's rows goes (it needs the dump's size in free space).

    Returns:
        One dict per ratio (see :func:`score_codec.plan`): ``keep_epochs``, ``inner_ratio``, ``rank``,
        ``kl_t1``, ``label_bytes``, ``predicted_ratio``, or ``error`` and ``max_ratio``; the list's dicts
        all carry ``source_format``.

    Raises:
        InputError: a dump or an option that cannot be used; another method than ``global``; views that are
            not label epochs.
        IOFailureError: the operating system refused a read or a write.
    """
    codec_kw, rest = split_codec_options(kwargs)
    dump_kw, rest = split_dump_options(rest)
    if rest:
        raise TypeError(f"plan_dump() got unexpected keyword argument(s) {', '.join(map(repr, sorted(rest)))}")
    opts = CodecOptions.build(options, **codec_kw).replace(ratio=None, target_bytes=None)
    dopts = DumpOptions.build(dump_options, **dump_kw)
    src = os.fspath(src)
    ratios = check_ratios(ratios)
    check_plan_method(opts)   # before the dump is read
    if opts.method == "global":
        _global_codec(opts)   # a bad codec_config, before the dump is read
    scratch = os.path.abspath(os.fspath(scratch_dir) if scratch_dir is not None else os.getcwd())
    if not os.path.isdir(scratch):
        raise InputError(f"{scratch}: the scratch directory " +
                         ("is not a directory" if os.path.exists(scratch) else "does not exist"))
    try:
        reader = open_reader(src, format, **dopts.reader_kwargs())
        _note(progress, f"format: {reader.name} ({reader.summary()})")
        with read_dump(src, reader=reader, scratch_dir=scratch, progress=progress) as c:
            _check_contents(src, c)
            labels = c.labels if (c.labels >= 0).all() else None
            values = epoch_values(c.aug, c.ks)
            k = None if values is None else len(values)
            check_plannable(opts, k, src)
            if opts.keep_epochs is not None and not 1 <= opts.keep_epochs <= k:
                raise InputError(f"{src}: cannot keep {opts.keep_epochs} of the dump's {k} label epochs")
            # the inputs encode_dump's path for these options uses (a residual goes per image)
            _, inputs = _allocation_inputs(c, opts, labels, one_pass=not opts.residual)
            results = plan_ratios(opts, ratios, num_classes=c.num_classes, num_images=c.num_images,
                                  source_epochs=k, head=head, device=opts.device, **inputs)
            out = [plan_entry(x, r, c.num_classes, c.num_images, k) for x, r in zip(ratios, results)]
            for e in out:
                e["source_format"] = c.format
            return out
    except OSError as exc:
        raise IOFailureError(f"{src}: {exc}") from exc


def _encode_one_pass(src: str, dst: str, reader: DumpReader, opts: CodecOptions, overwrite: bool, progress: bool,
                     shard_bytes: int, head: Optional[Head]) -> Tuple[str, CodecOptions, Allocation, None]:
    """The global codec without a residual: every dump file is read once, its rows appended to a scratch file
    beside ``dst``; the basis is fitted on (and the allocation probes) files spread over the scratch, whose rows
    are then coded in sequential chunks.  Reading a flat array back costs a fraction of unpickling the dump
    again; the scratch is removed whether the encode succeeds or fails."""
    _global_codec(opts)   # a bad codec_config, before the dump is read
    scratch = os.path.dirname(os.path.abspath(dst))
    with read_dump(src, reader=reader, scratch_dir=scratch, progress=progress) as c:
        _check_contents(src, c)
        opts = _resolve_target(opts, c)
        labels = c.labels if (c.labels >= 0).all() else None
        # the basis is fitted on files spread over the dump holding the codec's fit_rows rows
        sample, inputs = _allocation_inputs(c, opts, labels, one_pass=True)
        rows = c.aug.rows
        image, aug, ks = rows["image"].astype(np.int64), rows["aug"].astype(np.int64), c.ks
        values = epoch_values(c.aug, c.ks)
        alloc = allocate(opts, num_classes=c.num_classes, num_images=c.num_images,
                         source_epochs=None if values is None else len(values), head=head, device=opts.device,
                         **inputs)
        logits: Any = c.scratch_rows
        meta = c.aug
        if alloc.pooled:
            _note(progress, f"pooling: keeping {len(alloc.kept)} of {len(values)} epochs")
            keep = np.isin(aug, alloc.kept)
            logits = _KeptRows(c.scratch_rows, keep)
            image, aug = image[keep], _renumber(aug[keep], alloc.kept, len(values))
            ks = np.full(c.num_images, len(alloc.kept), dtype=np.int64)
            meta = prune_meta(c.aug, alloc.kept, values)
        inner = alloc.writer_options(opts)
        with StoreWriter(dst, c.num_classes, inner, overwrite=overwrite, shard_bytes=shard_bytes) as w:
            _set_pool(w, opts, alloc, values)
            if alloc.bases is not None:
                w.set_bases(alloc.bases)
            else:
                _note(progress, f"fitting the global basis on {sum(len(b) for b in sample):,} rows from files spread "
                            f"over the dump")
            encode_rows(w, logits, image, aug, ks, labels, head=head, progress=progress, fit_on=sample)
            w.set_meta(meta)
        return c.format, opts, alloc, None


def _set_pool(w: StoreWriter, opts: CodecOptions, alloc: Allocation, values: Optional[np.ndarray]) -> None:
    """Record the allocation (and the kept epochs of a pooled store) in the store being written."""
    if values is not None and (opts.ratio is not None or opts.keep_epochs is not None):
        w.set_pool(len(values), values[alloc.kept].tolist(), alloc.record())


def _renumber(aug: np.ndarray, kept: np.ndarray, k: int) -> np.ndarray:
    """Source view positions of kept rows -> their positions among the kept views."""
    remap = np.full(k, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return remap[aug]


class _KeptRows:
    """The rows of a (rows, C) array whose entry of ``keep`` is true, as an array-like sliced in kept rows."""

    def __init__(self, rows: Any, keep: np.ndarray) -> None:
        self.rows, self.idx = rows, np.flatnonzero(keep)
        self.shape, self.ndim = (len(self.idx), int(rows.shape[1])), 2

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.rows[self.idx[s]])


def _encode_gathered(src: str, dst: str, reader: DumpReader, opts: CodecOptions, overwrite: bool, resume: bool,
                     progress: bool, shard_bytes: int, chunk_images: int,
                     head: Optional[Head]) -> Tuple[str, CodecOptions, Allocation, Optional[float]]:
    """Every other codec: read the dump once into a scratch file beside ``dst``, then code image by image."""
    scratch = os.path.dirname(os.path.abspath(dst))
    with read_dump(src, reader=reader, scratch_dir=scratch, progress=progress) as c:
        _check_contents(src, c)
        opts = _resolve_target(opts, c)
        labels = c.labels if (c.labels >= 0).all() else None
        if opts.method in ("shared", "two-level") and labels is None:
            raise InputError(f"method {opts.method!r} needs image classes: pass labels= or ipc=")
        values = epoch_values(c.aug, c.ks)
        # the row-wise encode (global, no residual) fits on blocks of rows in dump order
        rowwise = opts.method == "global" and opts.residual == 0
        _, inputs = _allocation_inputs(c, opts, labels, one_pass=False, rowwise=rowwise)
        alloc = allocate(opts, num_classes=c.num_classes, num_images=c.num_images,
                         source_epochs=None if values is None else len(values), head=head, device=opts.device,
                         **inputs)
        kept = alloc.kept if alloc.pooled else None
        meta, image, aug, ks = c.aug, c.aug.rows["image"].astype(np.int64), c.aug.rows["aug"].astype(np.int64), c.ks
        row_logits: Any = c.row_logits
        if kept is not None:
            _note(progress, f"pooling: keeping {len(kept)} of {len(values)} epochs")
            keep = np.isin(aug, kept)
            row_logits, image, aug = _KeptRows(row_logits, keep), image[keep], _renumber(aug[keep], kept, len(values))
            ks = np.full(c.num_images, len(kept), dtype=np.int64)
            meta = prune_meta(c.aug, kept, values)
        inner = alloc.writer_options(opts)
        with StoreWriter(dst, c.num_classes, inner, overwrite=overwrite, resume=resume, shard_bytes=shard_bytes) as w:
            _set_pool(w, opts, alloc, values)
            if w.codec.scope == "store" and w.bases is None and alloc.bases is not None:
                w.set_bases(alloc.bases)
            if supports_rowwise(w):
                # one basis for all rows: code them in dump order, no per-image regrouping of the logits
                encode_rows(w, row_logits, image, aug, ks, labels, head=head, progress=progress)
            elif w.codec.scope == "store" and w.bases is None:
                _note(progress, f"fitting the {opts.method} bases on {c.num_images} images")
                w.fit(KeptViews(_Matrices(c), kept), labels, ks=ks, head=head)
            # shared bases are fitted per chunk: one chunk keeps one basis per class
            step = c.num_images if opts.method == "shared" else chunk_images
            done = w.num_images  # images already in complete shards when resuming (all of them after encode_rows)
            if done and done < c.num_images:
                _note(progress, f"resuming: {done} of {c.num_images} images were already encoded")
            bar = progress_bar(total=c.num_images, initial=done, desc=f"encode {opts.method}", unit="img", enabled=progress)
            s = 0
            for mats in (c.matrices(step) if done < c.num_images else []):
                if s + len(mats) <= done:
                    s += len(mats)
                    continue
                skip = max(done - s, 0)
                mats, s = mats[skip:], s + skip
                if kept is not None:
                    mats = [m[kept] for m in mats]
                w.add(mats, labels=None if labels is None else labels[s:s + len(mats)].tolist())
                s += len(mats)
                bar.update(len(mats))
            bar.close()
            w.set_meta(meta)
        kl = None
        if (opts.ratio is not None or opts.keep_epochs is not None) and alloc.kl_t1 is None:
            kl = store_kl(LabelStore(dst), _Matrices(c), kept)   # measured here: the scratch copy goes next
        return c.format, opts, alloc, kl


class _DeviceRows:
    """A LabelStore whose ``rows`` decode on a chosen device and return CPU tensors."""

    def __init__(self, store: LabelStore, device: str) -> None:
        self.store, self.device = store, device
        self.aug, self.ks, self.num_classes, self.labels = store.aug, store.ks, store.num_classes, store.labels

    def rows(self, image_ids: Any, view_ids: Any, device: str = "cpu") -> torch.Tensor:
        return self.store.rows(image_ids, view_ids, device=self.device).cpu()


def decode_dump(
    store: Union[PathLike, LabelStore],
    dst: PathLike,
    *,
    format: Optional[str] = None,
    overwrite: bool = False,
    progress: bool = False,
    plain_ints: bool = False,
    device: str = "cpu",
) -> Dict[str, Any]:
    """Write a label store back as a dump (``score-codec decode`` as a function).

    Crop boxes, flips and mix parameters come back bit-exact; logits as decoded (row-centred unless the
    store was encoded with ``keep_mean=True``; softmax is the same either way).  The dump is assembled
    beside ``dst`` and renamed into place, so a failed run leaves nothing.

    Args:
        store: a store path or an open :class:`~score_codec.LabelStore`.
        dst: the dump to write: a directory, or a ``.npy`` file for ``format="npy"`` (dense (N, K, C)
            float32).
        format: the layout to write (``"sre2l"``, ``"lpld"``, ...); None: the family the store was encoded
            from, else SRe2L when the store records batches, else npy.
        overwrite: replace an existing ``dst``.
        progress: progress bars and one-line notes on stderr.
        plain_ints: write CutMix boxes as Python ints instead of ``numpy.int64``, so ``torch.load``'s default
            ``weights_only=True`` accepts the files.
        device: where rows are decoded (``"cpu"``, ``"cuda"``).

    Returns:
        ``{"store", "dst", "format", "images", "rows"}``: the dict ``score-codec decode --json`` prints.
    """
    st = store if isinstance(store, LabelStore) else LabelStore(os.fspath(store))
    dst = os.fspath(dst)
    fmt = format or st.aug.attrs.get("format") or "sre2l"
    if fmt not in WRITERS:
        if format is not None:
            raise InputError(f"cannot write format {format!r}; writable: {', '.join(sorted(WRITERS))}")
        fmt = "sre2l" if len(st.aug.batches) else "npy"
    _note(progress, f"writing {fmt} dump to {dst}")
    if not st.encoding.get("keep_mean"):
        _note(progress, "note: the store holds row-centred logits (encoded without keep_mean=True); softmax is "
                        "unchanged")
    try:
        write_dump(_DeviceRows(st, device), dst, fmt, overwrite=overwrite, progress=progress, plain_ints=plain_ints)
    except OSError as exc:
        raise WriteFailedError(f"{dst}: writing the dump failed ({exc}); nothing was kept") from exc
    return {"store": st.path, "dst": dst, "format": fmt, "images": len(st), "rows": int(st.ks.sum())}
