"""One-call encoding of in-memory labels (``score_codec.encode``)."""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..codecs.arguments import check_int
from ..errors import InputError
from .meta import AugMeta
from .reader import LabelStore
from .writer import DEFAULT_SHARD_BYTES, StoreWriter

__all__ = ["encode"]

#: images encoded per batched call; bounds peak memory to a few of these chunks
CHUNK_IMAGES = 512


def encode(
    Y: Union[torch.Tensor, np.ndarray, Iterable[Any]],
    path: Union[str, os.PathLike],
    method: str = "global",
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    ratio: Optional[float] = None,
    quant: str = "fp16",
    device: str = "cpu",
    meta: Optional[AugMeta] = None,
    *,
    residual: int = 0,
    target_bytes: Optional[int] = None,
    keep_mean: bool = False,
    labels: Optional[Sequence[int]] = None,
    zstd_level: int = 3,
    shuffle: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    codec_config: Optional[Dict[str, Any]] = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    chunk_images: int = CHUNK_IMAGES,
    resume: bool = False,
    head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None,
    bases: Optional[Any] = None,
) -> Dict[str, Any]:
    """Encode teacher logits into a label store at ``path`` and return its :meth:`LabelStore.stats`.

    ``Y``: (N, K, C) tensor or array, or an iterable of (K_i, C) matrices (fp16/fp32 logits).
    Rate control: at most one of ``rank`` (per image), ``energy`` (share of squared singular values
    kept per image), ``ratio`` (fp16 label bytes / stored bytes, met per chunk of ``chunk_images``) or
    ``target_bytes`` (total stored label bytes); default rank 8.  ``labels`` (N,) are the classes
    (used by ``method="shared"``; stored in the index).  ``meta`` is the augmentation metadata.
    ``resume=True`` continues an interrupted run from its last complete shard (same arguments).
    Store-wide methods (``"global"``, ``"two-level"``) fit their bases on all of ``Y`` first (a sample of
    ``codec_config["fit_rows"]`` rows for the global basis); ``head=(W, b)`` takes the teacher's final
    linear layer (``logits = W h + b``, W (C, d)) as the global basis instead of fitting one, and
    ``bases`` (a :class:`~score_codec.codecs.BasisSet`) uses bases fitted elsewhere (another rank).
    """
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
    c = int(mats[0].shape[1])
    chunk_images = check_int("chunk_images", chunk_images, 1)
    if target_bytes is not None:
        if ratio is not None:
            raise InputError("give ratio or target_bytes, not both")
        rows = sum(int(m.shape[0]) for m in mats)
        target_bytes = check_int("target_bytes", target_bytes, 1)
        ratio = 2.0 * c * rows / target_bytes
    if labels is not None and len(labels) != len(mats):
        raise InputError(f"got {len(labels)} labels for {len(mats)} images")
    # shared bases are fitted per chunk: one chunk keeps one basis per class
    step = len(mats) if method == "shared" else chunk_images
    with StoreWriter(path, c, method=method, rank=rank, energy=energy, ratio=ratio, quant=quant, residual=residual,
                     device=device, keep_mean=keep_mean, zstd_level=zstd_level, shuffle=shuffle, overwrite=overwrite,
                     shard_bytes=shard_bytes, codec_config=codec_config, resume=resume) as w:
        if w.codec.scope == "store" and w._basis_set is None:
            if bases is not None:
                w.set_bases(bases)
            else:
                w.fit(mats, labels, head=head)
        elif head is not None and w.codec.scope != "store":
            raise InputError(f"head= gives a store-wide basis; method {method!r} fits per image (use 'global')")
        done = w.num_images  # > 0 only when resuming
        for s in tqdm(range(done, len(mats), step), desc=f"encode {method}", disable=not progress, unit="chunk"):
            w.add(mats[s : s + step], labels=None if labels is None else list(labels[s : s + step]))
        if meta is not None:
            w.set_meta(meta)
    return LabelStore(os.fspath(path)).stats()
