"""Store statistics (sizes, ratios, ranks) and full verification."""
from __future__ import annotations

import os
from typing import Any, Dict, List

import numpy as np

from ..errors import ScoreError, UnreadableFileError
from .protocols import StoreTables

__all__ = ["store_stats", "verify_store", "disk_bytes", "source_label_bytes"]


def disk_bytes(path: str) -> int:
    """Bytes a store occupies on disk (all files); UnreadableFileError names a file that cannot be sized
    (a dangling link, a file removed meanwhile, no permission)."""
    files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    total = 0
    for fn in files:
        try:
            total += os.path.getsize(fn)
        except OSError as exc:
            what = "a dangling link" if os.path.islink(fn) else "not readable"
            raise UnreadableFileError(f"{fn}: {what} inside the store ({exc.strerror or exc})") from None
    return total


def source_label_bytes(attrs: Dict[str, Any], rows: int, num_classes: int) -> int:
    """Bytes the source dump spent on labels: 2 C per row for fp16 logits, or, for a top-k dump (LPQLD's
    MR-k: k logits and k class ids per row), what it really stored, so that ratios compare like with like."""
    style = attrs.get("style") or {}
    k = style.get("topk")
    if k is None:
        return 2 * num_classes * rows
    def size(name: str, default: int) -> int:
        try:
            return int(np.dtype(str(style.get(name))).itemsize)
        except TypeError:
            return default

    return int(k) * (size("logits", 2) + size("topk_ids", 2)) * rows


def store_stats(store: StoreTables) -> Dict[str, Any]:
    """Sizes and ratios of a store.

    ``label_bytes`` counts records and shared bases (what encodes the logits); ``fp16_bytes`` is the
    uncompressed fp16 label size, 2 C bytes per row; ``ratio`` is their quotient.  ``source_label_bytes`` is
    what the source dump spent on labels (less than ``fp16_bytes`` for a top-k dump) and
    ``ratio_vs_source`` its quotient with ``label_bytes``.  ``disk_bytes`` and
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
    source = source_label_bytes(store.aug_reader.attrs, source_rows, store.num_classes)
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
        "source_label_bytes": source,
        "ratio_vs_source": source / label_bytes if label_bytes else float("inf"),
        "disk_bytes": on_disk,
        "ratio_disk": fp16 / on_disk if on_disk else float("inf"),
        "meta_rows": int(store.aug_reader.num_rows),
        "meta_bytes": store.aug_reader.stored_bytes,
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
