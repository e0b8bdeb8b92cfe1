"""Store statistics (sizes, ratios, ranks) and full verification."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np

from ..errors import ScoreError
from .meta import ROW_DTYPE
from .protocols import StoreTables

__all__ = ["store_stats", "verify_store", "disk_bytes"]


def disk_bytes(path: str) -> int:
    """Bytes a store occupies on disk (all files)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def store_stats(store: StoreTables) -> Dict[str, Any]:
    """Sizes and ratios of a store.

    ``label_bytes`` counts records and shared bases (what encodes the logits); ``fp16_bytes`` is the
    uncompressed fp16 label size, 2 C bytes per row; ``ratio`` is their quotient.  ``disk_bytes`` and
    ``ratio_disk`` include the index, the augmentation metadata and HDF5 overhead.  A pooled store (one that
    keeps ``keep_epochs`` of its source's ``source_epochs`` label epochs) counts ``fp16_bytes`` over the
    source's rows (``source_rows``), so ``ratio`` is what the source shrank by; ``inner_ratio`` counts the kept
    rows only.  ``kl_t1`` is the probe KL(T=1) the encode measured (None when it measured none).
    """
    idx = store.index
    rows = int(store.ks.sum())
    label_bytes = int(idx["length"].sum()) + int(store.basis_table["length"].sum())
    pool = getattr(store, "pool", None)
    source_rows = rows if pool is None else rows // len(pool["kept_epochs"]) * int(pool["source_epochs"])
    fp16 = 2 * store.num_classes * source_rows
    on_disk = disk_bytes(store.path)
    ranks = idx["rank"].astype(np.int64)
    enc = store.encoding
    return {
        "path": store.path,
        "images": len(store),
        "rows": rows,
        "num_classes": store.num_classes,
        "k_min": int(store.ks.min()) if len(store) else 0,
        "k_max": int(store.ks.max()) if len(store) else 0,
        "method": enc.get("method"),
        "codec": enc.get("codec"),
        "quant": enc.get("quant"),
        "residual_per_row": enc.get("residual"),
        "keep_mean": enc.get("keep_mean"),
        "methods": {enc.get("method"): len(store)},
        "rank_min": int(ranks.min()) if len(ranks) else 0,
        "rank_mean": float(ranks.mean()) if len(ranks) else 0.0,
        "rank_max": int(ranks.max()) if len(ranks) else 0,
        "residual_entries": int(idx["nnz"].sum()),
        "shared_bases": int(len(store.basis_table)),
        "label_bytes": label_bytes,
        "bytes_per_row": label_bytes / rows if rows else 0.0,
        "fp16_bytes": fp16,
        "ratio": fp16 / label_bytes if label_bytes else float("inf"),
        "disk_bytes": on_disk,
        "ratio_disk": fp16 / on_disk if on_disk else float("inf"),
        "meta_rows": int(store.aug_reader.num_rows),
        "meta_bytes": int(store.aug_reader.num_rows * ROW_DTYPE.itemsize + store.aug_reader.batches.nbytes
                          + store.aug_reader.images.nbytes),
        "format_version": store.manifest.get("format_version"),
        "source_rows": source_rows,
        "source_epochs": int(pool["source_epochs"]) if pool is not None else (int(store.ks.min()) if len(store) else 0),
        "keep_epochs": len(pool["kept_epochs"]) if pool is not None else (int(store.ks.min()) if len(store) else 0),
        "kept_epochs": None if pool is None else list(pool["kept_epochs"]),
        "inner_ratio": 2 * store.num_classes * rows / label_bytes if label_bytes else float("inf"),
        "kl_t1": (enc.get("allocation") or {}).get("kl_t1"),
    }


def verify_store(store: StoreTables) -> List[str]:
    """Read and check every record and basis; returns one message per problem found."""
    problems: List[str] = []
    for b in range(len(store.basis_table)):
        try:
            store.basis(b)
        except ScoreError as exc:
            problems.append(str(exc))
    for i in range(len(store)):
        try:
            store.record(i)
        except ScoreError as exc:
            problems.append(str(exc))
    try:
        store.aug.validate(store.ks)
    except ScoreError as exc:
        problems.append(f"{store.path}: augmentation metadata: {exc}")
    return problems
