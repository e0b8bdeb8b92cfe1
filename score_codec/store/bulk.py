"""One-call encoding of logits held in memory (``score_codec.encode``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from ..progress import progress_bar

from ..codecs.arguments import check_int
from ..errors import InputError
from ..codecs.global_basis import BasisSet
from .allocate import (KeptViews, check_ratios, epoch_values, finish, matrix_inputs, plan_and_prune, plan_entry,
                       plan_ratios, store_kl)
from .encoder import check_matrices
from .meta import AugMeta
from .options import CodecOptions
from .reader import LabelStore
from .writer import DEFAULT_SHARD_BYTES, StoreWriter

__all__ = ["encode", "plan"]

#: images encoded per batched call; bounds peak memory to a few of these chunks
CHUNK_IMAGES = 512


def _matrices(Y: Any) -> List[torch.Tensor]:
    """Y (an (N, K, C) tensor or array, or an iterable of (K_i, C) matrices) as a list of 2-D tensors."""
    if isinstance(Y, np.ndarray):
        Y = torch.from_numpy(Y)
    if isinstance(Y, torch.Tensor):
        if Y.ndim != 3:
            raise InputError(f"Y must have shape (N, K, C), found {tuple(Y.shape)}")
        mats = list(Y.unbind(0))
    else:
        mats = [m if isinstance(m, torch.Tensor) else torch.from_numpy(np.asarray(m)) for m in Y]
    if not mats:
        raise InputError("no images to encode")
    if any(m.ndim != 2 for m in mats):
        raise InputError("every label matrix must be 2-D (K, C)")
    return mats


def encode(
    Y: Union[torch.Tensor, np.ndarray, Iterable[Any]],
    path: Union[str, os.PathLike],
    options: Optional[CodecOptions] = None,
    *,
    labels: Optional[Sequence[int]] = None,
    meta: Optional[AugMeta] = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_images: int = CHUNK_IMAGES,
    head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    bases: Optional[BasisSet] = None,
    **codec: Any,
) -> Dict[str, Any]:
    """Encode teacher logits held in memory into a label store at ``path``.

    ``encode(Y, "labels.store", method="global", ratio=30, quant="int8")``

    Args:
        Y: (N, K, C) tensor or array, or an iterable of (K_i, C) matrices: fp16 / fp32 logits, one matrix
            per image, one row per view.
        path: the store to create (a directory, or one file when it ends in ``.h5``).
        options: :class:`~score_codec.store.options.CodecOptions`; every field may instead (or also) be
            given as a keyword (``method``, ``rank``, ``energy``, ``ratio``, ``target_bytes``, ``quant``,
            ``residual``, ``residual_score``, ``keep_mean``, ``zstd_level``, ``shuffle``, ``codec_config``,
            ``device``); keywords win.  Rate control: at most one of ``rank``, ``energy``, ``ratio`` (met per
            chunk of ``chunk_images`` by image-scope codecs, by the whole store by store-scope ones) or
            ``target_bytes`` (total stored label bytes); default rank 8.
        labels: (N,) class of each image; needed by ``method="shared"`` and ``"two-level"``, stored in the
            index otherwise.
        meta: the augmentation metadata of every view (:class:`~score_codec.AugMeta`), or None.
        overwrite: replace an existing store (only once the new one is complete).
        resume: continue an interrupted run from its last complete shard (same arguments).
        progress: a tqdm bar on stderr.
        shard_bytes: bytes of records per shard file.
        chunk_images: images coded per batched call; bounds peak memory.
        head: ``(W, b)`` of the teacher's final linear layer (``logits = W h + b``, W (C, d), b (C,)), used
            as the global basis instead of fitting one (``method="global"`` only).
        bases: a :class:`~score_codec.codecs.BasisSet` fitted elsewhere (e.g. on rank 0 of a distributed
            encode), used instead of fitting (store-scope codecs).

    Store-scope codecs fit their bases on all of ``Y`` first (on a sample of ``codec_config["fit_rows"]``
    rows for the global basis).

    Pooling: with a ``ratio`` (or ``target_bytes``) and the global codec, when coding every row would take
    the decoded labels past ``max_kl`` (KL(T=1) measured on a probe sample), the store keeps fewer label
    epochs, evenly spaced from the first, coded at a rank that stays within it (``pool=False`` codes every
    row; ``keep_epochs=n`` keeps n epochs).  Row j of every image is epoch j (or the epoch ``meta`` gives it).
    See :mod:`score_codec.store.allocate`.

    Returns:
        The store's :meth:`~score_codec.LabelStore.stats` dict (images, rows, bytes, ratio, ranks, ...), with
        ``keep_epochs``, ``inner_ratio`` and ``kl_t1`` (measured when a ratio or ``keep_epochs`` was given).

    Raises:
        BudgetError: the ratio cannot hold a useful label (see :func:`score_codec.store.allocate.allocate`).
    """
    opts = CodecOptions.build(options, **codec)
    mats = _matrices(Y)
    c = int(mats[0].shape[1])
    chunk_images = check_int("chunk_images", chunk_images, 1)
    if opts.target_bytes is not None:
        if opts.ratio is not None:
            raise InputError("give ratio or target_bytes, not both")
        rows = sum(int(m.shape[0]) for m in mats)
        target_bytes = check_int("target_bytes", opts.target_bytes, 1)
        opts = opts.replace(ratio=2.0 * c * rows / target_bytes, target_bytes=None)
    if labels is not None and len(labels) != len(mats):
        raise InputError(f"got {len(labels)} labels for {len(mats)} images")
    check_matrices(mats, c)
    source = mats
    alloc, values, inner, meta = plan_and_prune(opts, mats, meta, np.array([int(m.shape[0]) for m in mats]), c,
                                                labels=labels, head=head, bases=bases)
    if alloc.pooled:
        mats = list(KeptViews(mats, alloc.kept))
    # shared bases are fitted per chunk: one chunk keeps one basis per class
    step = len(mats) if opts.method == "shared" else chunk_images
    with StoreWriter(path, c, inner, overwrite=overwrite, shard_bytes=shard_bytes, resume=resume) as w:
        if values is not None and (opts.ratio is not None or opts.keep_epochs is not None):
            w.set_pool(len(values), values[alloc.kept].tolist(), alloc.record())
        if w.codec.scope == "store" and w.bases is None:
            if bases is not None:
                w.set_bases(bases)
            elif alloc.bases is not None:
                w.set_bases(alloc.bases)
            else:
                w.fit(mats, labels, head=head)
        elif head is not None and w.codec.scope != "store":
            raise InputError(f"head= gives a global basis; method {opts.method!r} fits per image (use 'global')")
        done = w.num_images  # > 0 only when resuming
        for s in progress_bar(range(done, len(mats), step), desc=f"encode {opts.method}", enabled=progress, unit="chunk"):
            w.add(mats[s : s + step], labels=None if labels is None else list(labels[s : s + step]))
        if meta is not None:
            w.set_meta(meta)
    store = LabelStore(os.fspath(path))
    return finish(store.stats(), opts, alloc, lambda: store_kl(store, source, alloc.kept if alloc.pooled else None))


def plan(
    Y: Union[torch.Tensor, np.ndarray, Iterable[Any]],
    ratios: Sequence[float],
    options: Optional[CodecOptions] = None,
    *,
    labels: Optional[Sequence[int]] = None,
    meta: Optional[AugMeta] = None,
    head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    **codec: Any,
) -> List[Dict[str, Any]]:
    """How :func:`encode` would spend each of several ratios, on one fit of the global basis; writes nothing.

    ``plan(Y, [30, 100, 300, 1000])`` answers "how many label epochs does each ratio keep, at what rank and
    KL?" before an encode: the basis is fitted once and each ratio's split between kept epochs and rank is
    the one ``encode(Y, path, ratio=x, ...)`` makes with the same options (see
    :mod:`score_codec.store.allocate`).

    Args:
        Y: as :func:`encode`: (N, K, C) logits, or an iterable of (K_i, C) matrices; row j of every image is
            label epoch j unless ``meta`` says otherwise.
        ratios: target ratios against fp16 logits (positive numbers).
        options, codec: as :func:`encode` (``method="global"`` only; ``ratio`` / ``target_bytes`` are
            ignored; ``max_kl``, ``pool``, ``keep_epochs``, ``quant``, ``keep_mean``, ``zstd_level`` ... apply).
        labels, meta, head: as :func:`encode`.

    Returns:
        One dict per ratio, in order (:func:`~score_codec.store.allocate.plan_entry`): ``keep_epochs`` of
        ``source_epochs``, ``inner_ratio``, ``rank``, ``kl_t1`` (probe KL at T = 1), ``label_bytes`` and
        ``predicted_ratio``; a ratio that cannot hold a useful label has ``error`` (why) and ``max_ratio``
        instead, where ``encode`` would raise :class:`~score_codec.errors.BudgetError`.

    Raises:
        InputError: another method, views that are not label epochs, a ratio that is not a positive number.
    """
    opts = CodecOptions.build(options, **codec).replace(ratio=None, target_bytes=None)
    ratios = check_ratios(ratios)
    mats = _matrices(Y)
    c = int(mats[0].shape[1])
    if labels is not None and len(labels) != len(mats):
        raise InputError(f"got {len(labels)} labels for {len(mats)} images")
    check_matrices(mats, c)
    values = epoch_values(meta, np.array([int(m.shape[0]) for m in mats]))
    k = None if values is None else len(values)
    results = plan_ratios(opts, ratios, num_classes=c, num_images=len(mats), source_epochs=k, head=head,
                          device=opts.device, **matrix_inputs(mats, labels))
    return [plan_entry(x, r, c, len(mats), k) for x, r in zip(ratios, results)]
