"""Peer soft-label compression methods at a matched byte budget.

Budget: a target ratio ``X`` against the fp16 dump means at most ``N * K * 2C / X`` label bytes.

* **LPLD** label-pool pruning keeps the first ``1 - r`` share of stored batches: ``r = 1 - 1/X``
  (0.9 / 0.95 / 0.967 at 10x / 20x / 30x; LPLD's own 0.97 is 33x).  Labels of kept rows are exact fp16.
* **MR-k** alone (LPQLD's label coding without its pruning) stores per row the top-k logits (fp16) and
  their class ids (int16): 4k bytes, ``k = floor(2C / (4X))``; "n/a" when k < 1.
* **LPQLD** as its authors compose it: keep ``1/p`` of the stored batches (LPLD's pool and sampling),
  then MR-k on the kept rows, ``k = floor(2C p / (4X))``.  The benchmark sweeps p (``Config.lpqld_splits``)
  and each split is its own row (``LPQLD keep 1/p + MR-k``); the best-per-budget table picks the best.
* **FKD top-k** with marginal smoothing: 4k bytes per row, ``k = floor(2C / (4X))``; "n/a" when < 1.
* **fp16 + zstd**: the raw dump's logits, each stored batch compressed with zstd (lossless).

Ours: the global codec coding every row (``pool=False``), ours + pool (a fixed split: ``pool_inner``),
and the library default (``score_codec.encode(Y, path, ratio=X)``: the library's automatic
pool-and-code allocation).

With 10 classes a row is only 20 bytes, so top-k methods cannot reach 10x at all (4 bytes per kept
entry); with 1000 classes they reach 100x with k = 5.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from benchmarks.storage_vs_accuracy.artifact_cache import ENCODE_INFO
from benchmarks.storage_vs_accuracy.claims import exclusive
from benchmarks.storage_vs_accuracy.label_sources import (BatchTable, LabelSource, LogitSource, PooledStoreSource,
                                                          PoolSource, StoreSource, TopKSource)

log = logging.getLogger(__name__)

__all__ = ["GLOBAL_TAG", "library_vid", "library_store_name", "lpld_prune_ratio", "topk_k", "lpqld_params", "legacy_lpqld_vid", "fp16_zstd_bytes", "PeerVariant",
           "LazyVariant", "build_peers", "codec_settings", "ours", "ours_pooled", "library_allocation", "library_default",
           "storage_variants"]

#: LPQLD's reproduce scripts prune with this ratio before MR-k.
LPQLD_PRUNE = 0.9


def lpld_prune_ratio(x: float) -> float:
    """LPLD prune ratio for a target ratio ``x`` (keep ``1/x`` of the batches)."""
    return 1.0 - 1.0 / float(x)


def topk_k(num_classes: int, x: float, keep: float = 1.0) -> int:
    """Largest k with ``keep * 4k <= 2C / x`` bytes per row (k fp16 values + k int16 ids), capped at C."""
    return int(min(num_classes, math.floor(2.0 * num_classes / (4.0 * float(x) * keep) + 1e-9)))


def lpqld_params(num_classes: int, x: float) -> Optional[Tuple[float, int]]:
    """``(prune_ratio, k)`` of the single LPQLD row earlier versions of the benchmark built at ratio ``x``
    (MR-k alone where k >= 1 fits, else LPQLD's reproduce recipe r = 0.9 then MR-k), or None when no k >= 1
    fits.  Its students were cached under the id ``lpqld@X``; see :func:`legacy_lpqld_vid`."""
    k = topk_k(num_classes, x)
    if k >= 1:
        return 0.0, k
    k = topk_k(num_classes, x, keep=1.0 - LPQLD_PRUNE)
    return (LPQLD_PRUNE, k) if k >= 1 else None


def legacy_lpqld_vid(num_classes: int, x: float, split: Optional[int]) -> Optional[str]:
    """``"lpqld@X"`` when the variant (MR-k alone: ``split`` None; LPQLD keeping 1/``split``) has exactly
    the targets and schedule of that earlier row (:func:`lpqld_params`), so its cached students are reused;
    None otherwise."""
    p = lpqld_params(num_classes, x)
    if p is None:
        return None
    r, _ = p
    if (split is None and r == 0) or (split is not None and r > 0 and abs((1 - r) * split - 1) < 1e-9):
        return f"lpqld@{x:g}"
    return None


def fp16_zstd_bytes(Y: torch.Tensor, table: BatchTable, level: int = 3) -> int:
    """Sum over stored batches of ``len(zstd(fp16 logits of the batch rows))`` (the batch files' payload)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=level)
    Yh = Y.half().numpy()
    total = 0
    for rec in table.batches:
        s = int(rec["row_start"])
        ids = table.rows["image"][s:s + int(rec["size"])]
        total += len(cctx.compress(np.ascontiguousarray(Yh[ids, int(rec["epoch"])]).tobytes()))
    return total


class PeerVariant:
    """One label variant at one budget: ``source`` is None when the budget is unreachable (``note`` says
    why); ``same_as`` names a variant with bit-identical targets whose students are reused."""

    def __init__(self, vid: str, family: str, ratio: float, source: Optional[LabelSource], note: str = "",
                 same_as: Optional[str] = None, name: Optional[str] = None,
                 extra: Optional[Dict[str, object]] = None) -> None:
        self.vid, self.family, self.ratio, self.source, self.note = vid, family, float(ratio), source, note
        self.same_as = same_as
        self.name = name or (source.name if source is not None else vid)
        #: row fields beyond the metrics (keep_epochs, inner_ratio, probe_kl_t1 of an allocation)
        self.extra = dict(extra or {})


class LazyVariant:
    """A variant built (encoded, top-k'd) on first use of ``source`` / ``note``: its id, family, target and
    a display name are known without building it, so a resumed run can report a variant from cached students
    and metrics, or skip it, without paying its encode."""

    def __init__(self, vid: str, family: str, ratio: float, make: Callable[[], PeerVariant],
                 name: Optional[str] = None, same_as: Optional[str] = None, legacy: Optional[str] = None) -> None:
        self.vid, self.family, self.ratio, self.same_as = vid, family, float(ratio), same_as
        #: the id an earlier version of the benchmark gave the same targets (its students are this variant's)
        self.legacy = legacy
        self._make, self._built, self._name = make, None, name or vid

    def build(self) -> PeerVariant:
        if self._built is None:
            self._built = self._make()
        return self._built

    @property
    def source(self) -> Optional[LabelSource]:
        return self.build().source

    @property
    def note(self) -> str:
        return self.build().note

    @property
    def name(self) -> str:
        return self._built.name if self._built is not None else self._name

    @property
    def extra(self) -> Dict[str, object]:
        return self.build().extra


def build_peers(x: float, Y: torch.Tensor, table: BatchTable, T: float, lpld: bool = True,
                topk: bool = True, splits: Sequence[int] = ()) -> List[PeerVariant]:
    """LPLD (``lpld``), MR-k alone and FKD (``topk``) and LPQLD keeping 1/p of the batches for each p of
    ``splits`` for target ratio ``x`` (x = 1: no LPLD; LPLD at 1x is the raw dump)."""
    c = int(Y.shape[-1])
    out: List[PeerVariant] = []
    if lpld and x > 1:
        r = lpld_prune_ratio(x)
        try:
            out.append(PeerVariant(f"lpld@{x:g}", "LPLD", x, PoolSource(LogitSource(Y), table, r,
                                                                         name=f"LPLD r={r:.3f}")))
        except ValueError as exc:
            out.append(PeerVariant(f"lpld@{x:g}", "LPLD", x, None, f"n/a: {exc}"))
    k = topk_k(c, x)
    if topk:
        if k >= 1:
            out.append(PeerVariant(f"mrk@{x:g}", "MR-k", x, TopKSource(Y, k, "mr", T, name=f"MR-{k}")))
        else:
            out.append(PeerVariant(f"mrk@{x:g}", "MR-k", x, None,
                                   f"n/a: top-1 needs 4 B/row > {2 * c / x:.2f} B/row (LPQLD prunes first)"))
    for p in splits:
        out.append(_lpqld(x, int(p), Y, table, T))
    if topk:
        if k >= 1:
            out.append(PeerVariant(f"fkd@{x:g}", "FKD", x, TopKSource(Y, k, "fkd", T, name=f"FKD top-{k} MS")))
        else:
            out.append(PeerVariant(f"fkd@{x:g}", "FKD", x, None, f"n/a: top-1 needs 4 B/row > {2 * c / x:.2f} B/row"))
    return out


def _lpqld(x: float, p: int, Y: torch.Tensor, table: BatchTable, T: float) -> PeerVariant:
    """LPQLD at ratio ``x``: keep the first 1/``p`` of the stored batches (LPLD's pool and sampling), MR-k on
    their rows with the largest k the budget pays for."""
    c = int(Y.shape[-1])
    vid = f"lpqld-p{p}@{x:g}"
    k = topk_k(c, x, keep=1.0 / p)
    if k < 1:
        return PeerVariant(vid, "LPQLD", x, None, f"n/a: keep 1/{p}: top-1 needs 4 B/kept row > "
                                                   f"{2 * c * p / x:.2f} B/kept row", name=f"LPQLD keep 1/{p}")
    if k >= c:
        return PeerVariant(vid, "LPQLD", x, None, f"n/a: keep 1/{p} pays for every class of the kept rows "
                                                   "(LPLD at a lower prune ratio does better)", name=f"LPQLD keep 1/{p}")
    inner = TopKSource(Y, k, "mr", T)
    try:
        pool = PoolSource(inner, table, 1.0 - 1.0 / p, name=f"LPQLD keep 1/{p} + MR-{k}")
    except ValueError as exc:
        return PeerVariant(vid, "LPQLD", x, None, f"n/a: {exc}", name=f"LPQLD keep 1/{p}")
    inner.mask = pool.stored_mask(table)
    return PeerVariant(vid, "LPQLD", x, pool, extra=dict(keep_share=round(1.0 / p, 6), k=k))


#: how the library writes global-codec stores, as a tag: the store format (5: basis rows scaled to the store's
#: spread, one int8 scale per record) and "z" for the allocation that measures record sizes after zstd.  Variants
#: of the global codec carry it in their ids and store paths, so that students of stores written another way
#: are never reported as the current library's
GLOBAL_TAG = "f5z"


def _fmt(method: str) -> str:
    """The suffix of a variant id and store path: ``.`` + :data:`GLOBAL_TAG` for the global codec, else nothing."""
    return f".{GLOBAL_TAG}" if method == "global" else ""


def library_vid(x: float, max_kl: Optional[float] = None) -> str:
    """The variant id of the library default at ratio ``x`` (``max_kl``: the calibration variant)."""
    kl = "" if max_kl is None else f"-kl{max_kl:g}"
    return f"library{kl}{_fmt('global')}@{x:g}"


def library_store_name(x: float) -> str:
    """The file name of the library default's store at ratio ``x`` (the storage table and the selection rows
    of the sweep's selection share it, and so their students)."""
    return f"library{_fmt('global')}_x{x:g}"


def codec_settings(method: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """The part of a preset's ``codec_config`` that codec ``method`` takes (the library refuses the rest)."""
    from score_codec import get_codec

    accepted = type(get_codec(method)).settings()
    return {k: v for k, v in config.items() if k in accepted}


def _settings_tag(config: Dict[str, Any]) -> str:
    """A codec's settings in a store's folder name: ``_key value`` per setting, sorted."""
    return "".join(f"_{k}{v}" for k, v in sorted(config.items()))


def _ours_tag(method: str, residual: int, quant: str, codec_config: Optional[dict]) -> str:
    tag = f"{method}{'' if quant == 'fp16' else '-' + quant}{'+res' + str(residual) if residual else ''}"
    return tag + "".join(f"-{k}{v}" for k, v in sorted((codec_config or {}).items())) + _fmt(method)


def _pooled_vid(x: float, method: str, quant: str, codec_config: Optional[dict]) -> str:
    return f"{_ours_tag(method, 0, quant, codec_config)}+pool@{x:g}"


def ours(x: float, method: str, residual: int, Y: torch.Tensor, labels, path: str, quant: str = "fp16",
         codec_config: Optional[dict] = None) -> PeerVariant:
    """Our codec at ratio ``x`` (``score_codec.encode(..., ratio=x)`` rate control), cached at ``path``;
    "n/a" with the library's message when the budget is below what the format needs (a BudgetError)."""
    from score_codec import encode
    from score_codec.errors import ScoreError

    tag = _ours_tag(method, residual, quant, codec_config)
    vid = f"{tag}@{x:g}"
    with exclusive(path + ".build"):   # another run sharing the cache may be writing the same store
        if not os.path.isfile(os.path.join(path, "manifest.json")):
            try:
                # every row coded at ratio x: the library's automatic epoch pooling is a variant of its own
                encode(Y, path, method=method, ratio=float(x), quant=quant, residual=residual, labels=labels,
                       overwrite=True, codec_config=codec_config, pool=False)
            except ScoreError as exc:
                log.info("%s: %s", vid, exc)
                return PeerVariant(vid, "ours", x, None, f"n/a: {getattr(exc, 'reason', exc)}", name=tag)
    try:   # decode once: a store the library wrote but cannot read is reported, not fatal
        src = StoreSource(path, name=tag)
        src.targets(0, np.arange(min(len(Y), 4)), 1.0)
    except ScoreError as exc:
        log.warning("%s: written but unreadable: %s", vid, exc)
        return PeerVariant(vid, "ours", x, None, f"error (library bug): {type(exc).__name__}: {exc}", name=tag)
    return PeerVariant(vid, "ours", x, src)


def ours_pooled(x: float, inner: float, method: str, Y: torch.Tensor, table: BatchTable, labels, path: str,
                quant: str = "fp16", codec_config: Optional[dict] = None) -> PeerVariant:
    """Our codec composed with LPLD's label pool: keep the first ``inner / x`` share of the stored epochs
    (whole epochs) and encode them at ratio ``inner``, so the total is ``x``.  Per-image low-rank factors
    cost at least 2 bytes per row (one fp16 entry of U) plus a 32-byte header per image, so with 10
    classes they cannot pass about 10x alone; pooling trades stored epochs for rank."""

    vid = _pooled_vid(x, method, quant, codec_config)
    keep = int(table.epochs * inner / float(x) + 1e-9)
    if keep < 1 or x <= inner:
        return PeerVariant(vid, "ours+pool", x, None, f"n/a: keeps {keep} of {table.epochs} epochs", name=vid)
    sub = ours(inner, method, 0, Y[:, :keep].contiguous(), labels, path, quant, codec_config)
    if sub.source is None:
        return PeerVariant(vid, "ours+pool", x, None, sub.note, name=f"{method}@{inner:g}x on {keep} epochs")
    r = 1.0 - keep / table.epochs
    src = PoolSource(sub.source, table, r, name=f"{method}@{inner:g}x on {keep}/{table.epochs} epochs",
                     inner_pooled=True)
    return PeerVariant(vid, "ours+pool", x, src, extra=dict(keep_epochs=keep, inner_ratio=float(inner)))


def library_allocation(stats: Dict[str, Any]) -> Dict[str, Any]:
    """A result row's allocation fields (``keep_epochs``, ``inner_ratio``, ``probe_kl_t1``) from the library
    default's encode stats (the ``<store>.encode.json`` that :func:`library_default` writes)."""
    return dict(keep_epochs=stats.get("keep_epochs"), inner_ratio=stats.get("inner_ratio"),
                probe_kl_t1=stats.get("kl_t1"))


def library_default(x: float, Y: torch.Tensor, labels, path: str, max_kl: Optional[float] = None) -> PeerVariant:
    """The library's default at ratio ``x``: ``score_codec.encode(Y, path, ratio=x)`` (the global codec, int8,
    with automatic pool-and-code allocation), replayed as the library replays a pooled store
    (:class:`~benchmarks.storage_vs_accuracy.label_sources.PooledStoreSource`).  The encode's allocation
    (``keep_epochs``, ``inner_ratio`` and its probe ``kl_t1``, reported as ``probe_kl_t1``) is kept in
    ``<path>.encode.json``; a BudgetError is "n/a" with the library's message.  ``max_kl`` replaces the
    allocation's default KL level (the calibration variants ``library-kl<v>@X``)."""
    from score_codec import encode
    from score_codec.errors import ScoreError

    vid = library_vid(x, max_kl)
    name = "ours: library default" if max_kl is None else f"ours: library, max_kl={max_kl:g}"
    tuned = {} if max_kl is None else {"max_kl": float(max_kl)}
    info = path + ENCODE_INFO
    with exclusive(path + ".build"):   # another run sharing the cache may be writing the same store
        if not (os.path.isfile(os.path.join(path, "manifest.json")) and os.path.isfile(info)):
            try:
                st = encode(Y, path, ratio=float(x), labels=labels, overwrite=True, **tuned)
            except ScoreError as exc:
                log.info("%s: %s", vid, exc)
                # a BudgetError's advice is for a user at the prompt; the table keeps what was measured
                return PeerVariant(vid, "library", x, None, f"n/a: {getattr(exc, 'reason', exc)}", name=name)
            with open(info + ".tmp", "w") as fh:
                json.dump({k: st.get(k) for k in ("keep_epochs", "source_epochs", "inner_ratio", "kl_t1", "ratio")},
                          fh)
            os.replace(info + ".tmp", info)
    with open(info) as fh:
        st = json.load(fh)
    extra = library_allocation(st)
    keep, k = st.get("keep_epochs"), st.get("source_epochs") or int(Y.shape[1])
    label = name + (f" (keeps {keep}/{k} epochs at {st['inner_ratio']:.3g}x)" if keep is not None and keep < k and
                    st.get("inner_ratio") else " (every epoch)")
    try:   # decode once: a store the library wrote but cannot read is reported, not fatal
        src = PooledStoreSource(path, name=label)
        src.targets(src.kept[0], np.arange(min(len(Y), 4)), 1.0)
    except ScoreError as exc:
        log.warning("%s: written but unreadable: %s", vid, exc)
        return PeerVariant(vid, "library", x, None, f"error (library bug): {type(exc).__name__}: {exc}", name=name)
    return PeerVariant(vid, "library", x, src, extra=extra)


def _peer_name(family: str, c: int, x: float, split: Optional[int]) -> str:
    """The display name of a peer row, known before it is built (the name its built source gets)."""
    if family == "LPLD":
        return f"LPLD r={lpld_prune_ratio(x):.3f}"
    k = topk_k(c, x, keep=1.0 / split if split else 1.0)
    if family == "MR-k":
        return f"MR-{k}" if k >= 1 else "MR-k"
    if family == "LPQLD":
        return f"LPQLD keep 1/{split} + MR-{k}" if 1 <= k < c else f"LPQLD keep 1/{split}"
    return f"FKD top-{k} MS" if k >= 1 else "FKD top-k"


def storage_variants(cfg, Y: torch.Tensor, table: BatchTable, store_dir: str, classes) -> List[LazyVariant]:
    """Every variant of the storage sweep: raw fp16, fp16 + zstd, then per target ratio in ``cfg.ratios``
    our codecs (``cfg.codecs``, without and with ``cfg.residual`` residual entries per row), the library
    default (``cfg.library_default``), ours + pool and the peers (LPQLD once per split of ``cfg.lpqld_splits``);
    our codecs and ours + pool only at targets up to ``cfg.fixed_max_ratio``.
    ``classes`` (N,) are the images' classes (``method="shared"`` fits one basis per class).  Each is built
    (encoded under ``store_dir``) only when its source is first used.  Order: raw and fp16 + zstd, then
    target by target our first codec, the library default, ours + pool and the peers, then our other codecs.
    MR-k and LPQLD variants whose targets an earlier version of the benchmark built under the id
    ``lpqld@X`` carry it as ``legacy`` (their cached students are reused)."""
    os.makedirs(store_dir, exist_ok=True)
    out = [LazyVariant("raw", "raw", 1, lambda: PeerVariant("raw", "raw", 1, LogitSource(Y, "raw fp16 (SRe2L dump)")),
                       name="raw fp16 (SRe2L dump)"),
           LazyVariant("zstd", "fp16+zstd", 1, lambda: PeerVariant(
               "zstd", "fp16+zstd", 1, LogitSource(Y, "fp16 + zstd", fp16_zstd_bytes(Y, table)), same_as="raw"),
               name="fp16 + zstd", same_as="raw")]
    cls = [int(c) for c in classes]
    high = cfg.codecs if getattr(cfg, "codecs_high", None) is None else cfg.codecs_high
    with_res = cfg.codecs if getattr(cfg, "residual_codecs", None) is None else cfg.residual_codecs
    res_max = getattr(cfg, "residual_max_ratio", float("inf"))
    fixed_max = getattr(cfg, "fixed_max_ratio", float("inf"))
    jobs = [(x, m, r) for x in cfg.ratios if x <= fixed_max for m in (cfg.codecs if x <= 10 else high)
            for r in sorted({0, int(cfg.residual) if (m in with_res and x <= res_max) else 0})]
    cc = dict(getattr(cfg, "codec_config", None) or ())
    qtag = "" if cfg.quant == "fp16" else f"_{cfg.quant}"
    for x, m, r in jobs:
        mcc = codec_settings(m, cc)
        tag = _ours_tag(m, r, cfg.quant, mcc or None)
        path = os.path.join(store_dir, f"{m}{qtag}{_settings_tag(mcc)}{_fmt(m)}_res{r}_x{x:g}")
        # students of a codec without the preset's settings were cached under an id that named them anyway
        legacy = f"{_ours_tag(m, r, cfg.quant, cc)}@{x:g}" if cc and mcc != cc else None
        out.append(LazyVariant(f"{tag}@{x:g}", "ours", x, lambda x=x, m=m, r=r, path=path, mcc=mcc: ours(
            x, m, r, Y, cls, path, cfg.quant, mcc or None), name=tag, legacy=legacy))
    pool_codec = getattr(cfg, "pool_codec", None) or cfg.codecs[0]
    peers_at = getattr(cfg, "peers_at", None)
    c = int(Y.shape[-1])
    for x in cfg.ratios:
        if getattr(cfg, "library_default", True):
            path = os.path.join(store_dir, library_store_name(x))
            out.append(LazyVariant(library_vid(x), "library", x, lambda x=x, path=path: library_default(
                x, Y, cls, path), name="ours: library default"))
        kl_at = getattr(cfg, "library_max_kl_at", None)
        for v in (getattr(cfg, "library_max_kl", ()) or ()) if kl_at is None or x in kl_at else ():
            path = os.path.join(store_dir, f"library_kl{v:g}{_fmt('global')}_x{x:g}")
            out.append(LazyVariant(library_vid(x, v), "library", x, lambda x=x, path=path, v=v: library_default(
                x, Y, cls, path, max_kl=v), name=f"ours: library, max_kl={v:g}"))
        if getattr(cfg, "pool_inner", None) and cfg.pool_inner < x <= fixed_max:
            pcc = codec_settings(pool_codec, cc)
            path = os.path.join(store_dir, f"{pool_codec}_{cfg.quant}{_settings_tag(pcc)}{_fmt(pool_codec)}"
                                           f"_pool{cfg.pool_inner:g}_x{x:g}")
            out.append(LazyVariant(_pooled_vid(x, pool_codec, cfg.quant, pcc or None), "ours+pool", x,
                                   lambda x=x, path=path: ours_pooled(x, cfg.pool_inner, pool_codec, Y, table, cls, path,
                                                                      cfg.quant, pcc or None)))
        lpld_at = getattr(cfg, "lpld_at", None) or peers_at
        lpqld_at = getattr(cfg, "lpqld_at", None) or peers_at
        topk, lpld = peers_at is None or x in peers_at, lpld_at is None or x in lpld_at
        splits = tuple(getattr(cfg, "lpqld_splits", ()) or ()) if lpqld_at is None or x in lpqld_at else ()
        group: Dict[str, PeerVariant] = {}

        def peer(vid: str, x=x, topk=topk, lpld=lpld, splits=splits, group=group) -> PeerVariant:
            if vid not in group:   # the peers of one target are built together
                group.update((v.vid, v) for v in build_peers(x, Y, table, cfg.T, lpld=lpld, topk=topk, splits=splits))
            return group[vid]

        wanted = ([("lpld@", "LPLD", None)] if lpld and x > 1 else []) + ([("mrk@", "MR-k", None)] if topk else []) + \
            [(f"lpqld-p{p}@", "LPQLD", int(p)) for p in splits] + ([("fkd@", "FKD", None)] if topk else [])
        for p, family, split in wanted:
            vid = f"{p}{x:g}"
            legacy = legacy_lpqld_vid(c, x, split) if family in ("MR-k", "LPQLD") else None
            out.append(LazyVariant(vid, family, x, lambda vid=vid, peer=peer: peer(vid), legacy=legacy,
                                   name=_peer_name(family, c, x, split)))
    # the order a time-limited run builds them in: target by target, the comparison the benchmark is for
    # (our first codec, ours + pool, the peers) before our other codecs and residual variants
    first = {f"{_ours_tag(cfg.codecs[0], 0, cfg.quant, codec_settings(cfg.codecs[0], cc) or None)}@{x:g}"
             for x in cfg.ratios}
    out.sort(key=lambda v: (0.0, 0) if v.family in ("raw", "fp16+zstd") else
             (v.ratio, 0 if v.family != "ours" or v.vid in first else 1))
    return out
