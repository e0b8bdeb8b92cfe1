"""What ``score-codec info`` and ``score-codec verify`` report, as library calls: :func:`store_info` and
:func:`verify_store`."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

from ..store.reader import LabelStore
from .fidelity import fidelity
from .options import DumpOptions

__all__ = ["store_info", "verify_store", "DUMP_ROW_OVERHEAD"]

#: bytes of non-logit fields per row in an SRe2L fp16 dump (coords 16 + flip 1 + mix_index 8)
DUMP_ROW_OVERHEAD = 25

StoreLike = Union[str, os.PathLike, LabelStore]


def _open(store: StoreLike) -> LabelStore:
    return store if isinstance(store, LabelStore) else LabelStore(os.fspath(store))


def store_info(store: StoreLike) -> Dict[str, Any]:
    """:meth:`LabelStore.stats` plus where the labels came from and the ratio against the dump on disk.

    Adds ``source_format`` (the dump family, or "unknown"), ``dump_fp16_bytes`` (bytes of an SRe2L fp16
    dump of the source's rows: 2 C + 25 per row; a pooled store counts the epochs it dropped too) and
    ``ratio_vs_dump`` (those bytes over the store's bytes on disk).
    """
    st = _open(store)
    info = st.stats()
    attrs = st.aug.attrs
    info["source_format"] = attrs.get("format") or attrs.get("source") or "unknown"
    # the labels the dump itself held (k values and ids per row for a top-k dump) plus its per-row metadata,
    # over every source row (a pooled store keeps only some of them)
    info["dump_fp16_bytes"] = int(info["source_label_bytes"] + info["source_rows"] * DUMP_ROW_OVERHEAD)
    info["ratio_vs_dump"] = info["dump_fp16_bytes"] / info["disk_bytes"] if info["disk_bytes"] else float("inf")
    return info


def verify_store(store: StoreLike, against: Optional[Union[str, os.PathLike]] = None, *, format: str = "auto",
                 dump_options: Optional[DumpOptions] = None, progress: bool = False, device: str = "cpu",
                 **kwargs: Any) -> Dict[str, Any]:
    """Check every record of ``store``; with ``against`` (the dump it was encoded from) also its fidelity.

    Args:
        store: a store path or an open :class:`~score_codec.LabelStore`.
        against: the source dump, or None for the integrity check alone.
        format: the dump's family or ``"auto"`` (then the family recorded in the store).
        dump_options: how to read the dump; the seed, sampler draws, class count and dataset size the store
            recorded fill in what it leaves unset.  Its fields may also be given as keywords.
        progress: a progress bar on stderr.
        device: where rows are decoded.

    Returns:
        ``{"store", "ok", "problems"}``: ``problems`` lists every damaged record (empty when ``ok``); with
        ``against`` and no problems also ``fidelity``: KL divergence at T = 1 and T = 20 (nats per row) and
        top-1 agreement, ``per_epoch`` and ``overall``.
    """
    st = _open(store)
    problems: List[str] = st.verify()
    out: Dict[str, Any] = {"store": st.path, "ok": not problems, "problems": problems}
    if against is not None and not problems:
        attrs = st.aug.attrs
        dopts = DumpOptions.build(dump_options, **kwargs)
        given = dopts.reader_kwargs()
        defaults = DumpOptions()
        for name, recorded in (("seed", attrs.get("seed")), ("sampler_draws", attrs.get("sampler_draws")),
                               ("num_images", attrs.get("num_images")), ("num_classes", st.num_classes)):
            if recorded is not None and given.get(name) == getattr(defaults, name):
                given[name] = recorded
        out["fidelity"] = fidelity(st, os.fspath(against), given, format, progress=progress, device=device)
    return out
