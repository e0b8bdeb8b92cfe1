"""Many-class codec study on real 1000-class teacher logits (the glyph benchmark's teacher).

Used by :mod:`benchmarks.codec.bench`: every codec at target ratios against fp16 (bytes per row, KL at
T = 1 and T = 20, top-1 agreement, encode and decode speed), on CutMix views (the SRe2L recipe) and on
crop + flip views; a study of the coefficient coding of the global codec (scales, bit widths, zstd)
and of the KL fit.  Views: RandomResizedCrop (scale 0.08-1) + flip, one CutMix per batch of 64.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import zstandard

from benchmarks.shared import CACHE_DIR, cached_teacher_logits, logit_quality
from score_codec import LabelStore, encode
from score_codec.codecs.basis import GramAccumulator, fit_coefficients
from score_codec.codecs.quantize import roundtrip
from score_codec.errors import ScoreError

__all__ = ["glyph_teacher_logits", "manyclass_rows", "coefficient_study", "MANY_METHODS"]

log = logging.getLogger(__name__)

#: (label, method, codec_config or None); "head" is the global codec with the teacher's last layer as basis
MANY_METHODS = [("svd", "svd", None), ("rsvd", "rsvd", None), ("cur", "cur", None), ("rpca", "rpca", None),
                ("shared (per class)", "shared", None), ("global", "global", None),
                ("global, least squares", "global", {"newton_steps": 0}), ("two-level", "two-level", None),
                ("global, teacher head", "head", None)]
#: per-image codecs that cost seconds per 1000-class matrix run on the first images only (said in the table)
SLOW = {"cur": 40, "rpca": 40}


def glyph_teacher_logits(n: int, k: int, mix: str, progress: bool = True):
    """(y (n, k, 1000) float32, labels (n,), (W, b) of the teacher head, teacher top-1, config name).

    The teacher is the ``glyphs-full`` benchmark's (trained and cached there on first use); the images are
    a seeded subset of the training split, ``n / 1000`` per class rounded up."""
    from benchmarks.storage_vs_accuracy.pipeline import Pipeline
    from benchmarks.storage_vs_accuracy.presets import PRESETS
    from score_codec.training.models import classifier_of

    cfg = PRESETS["glyphs-full"]
    pipe = Pipeline(cfg, os.path.join(CACHE_DIR, cfg.name))
    model = pipe.teacher()
    g = np.random.default_rng(0)
    idx = np.sort(g.choice(len(pipe.train), n, replace=False))
    imgs = pipe.train.images[idx]
    y = cached_teacher_logits(model, imgs, k, seed=0, scale=tuple(cfg.crop_scale), mix=mix, progress=progress)
    return y, pipe.train.targets[idx].tolist(), classifier_of(model), pipe.teacher_top1


def _decode_all(path: str) -> torch.Tensor:
    fac = LabelStore(path).factors()
    n = fac.ks.numel()
    return torch.cat([fac.matrices(range(s, min(s + 64, n))) for s in range(0, n, 64)])


def _decode_speed(path: str, n: int, k: int) -> Tuple[float, float]:
    """(full-matrix rows/s, random-row rows/s in batches of 256) of a store, decoded from its dense tables."""
    st = LabelStore(path)
    fac = st.factors()
    t0 = time.perf_counter()
    for s in range(0, n, 32):
        fac.matrices(range(s, min(s + 32, n)))
    full = n * k / (time.perf_counter() - t0)
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, n, 256), rng.integers(0, k, 256)) for _ in range(200)]
    st.rows(*pairs[0])
    t0 = time.perf_counter()
    for i, a in pairs:
        st.rows(i, a)
    return full, 256 * len(pairs) / (time.perf_counter() - t0)


def manyclass_rows(y: torch.Tensor, labels: List[int], head, targets: Sequence[float], tmp: str,
                   methods=MANY_METHODS, quant: str = "int8") -> List[Dict[str, Any]]:
    """Every codec at every target ratio: bytes/row, KL, agreement, encode matrices/s, decode rows/s."""
    out = []
    for label, method, config in methods:
        yy, ll = (y[:SLOW[method]], labels[:SLOW[method]]) if method in SLOW else (y, labels)
        n, k, c = yy.shape
        for x in targets:
            path = os.path.join(tmp, "m.store")
            kw = dict(method="global", head=head) if method == "head" else dict(method=method)
            t0 = time.perf_counter()
            try:
                st = encode(yy, path, ratio=float(x), quant=quant, labels=ll, overwrite=True, codec_config=config, pool=False,
                            **kw)
            except ScoreError as exc:
                out.append(dict(codec=label, target=x, error=f"n/a: {exc}"))
                continue
            enc = time.perf_counter() - t0
            met = logit_quality(yy, _decode_all(path))
            full, rand = _decode_speed(path, n, k)
            out.append(dict(codec=label + (f" ({n} images)" if method in SLOW else ""), target=x, ratio=st["ratio"], bytes_per_row=st["bytes_per_row"],
                            rank=st["rank_max"], kl_T1=met["kl_T1"], kl_T20=met["kl_T20"], top1=met["top1"],
                            enc_mat_s=n / enc, dec_rows_s=full, rand_rows_s=rand))
            log.info("%s @%gx: %.1f B/row KL1 %.4f (%.1f mat/s)", label, x, st["bytes_per_row"], met["kl_T1"], n / enc)
    return out


def _quant_rows(a: torch.Tensor, bits: int, per: str, k: int) -> torch.Tensor:
    """Quantise coefficients a (n*k, r) with ``bits`` and scales per image-component ("col") or per row."""
    m = 2 ** (bits - 1) - 1
    if per == "row":
        s = (a.abs().amax(-1, keepdim=True) / m).half().float()
    else:
        a3 = a.reshape(-1, k, a.shape[-1])
        s = (a3.abs().amax(1, keepdim=True) / m).expand_as(a3).reshape(a.shape)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(a / s).clamp(-m, m) * s


def coefficient_study(y: torch.Tensor, budgets: Sequence[float] = (66.67, 20.0)) -> List[Dict[str, Any]]:
    """What each coding choice of the global codec's coefficients buys at a fixed bytes-per-row budget.

    Rows: (budget, variant, rank that fits, bytes/row, KL T=1 / T=20).  Variants: int8 with one scale per
    image and component (the stored format), int8 with an fp16 scale per row, 6- and 4-bit codes (more
    components in the same bytes), zstd-19 on the int8 blocks, and the coefficient fit (least squares,
    KL(T=1) alone, KL(T=1) with the default penalty)."""
    n, k, c = y.shape
    rows = (y - y.mean(-1, keepdim=True)).reshape(-1, c)
    acc = GramAccumulator(c)
    acc.add(rows)
    mean, basis, _ = acc.pca()
    mean, basis = mean.float(), roundtrip(basis.float(), "fp16")
    out = []

    def kl(yh: torch.Tensor) -> Tuple[float, float]:
        m = logit_quality(rows, yh)
        return m["kl_T1"], m["kl_T20"]

    for budget in budgets:
        head = 32 / k
        for bits, per in ((8, "col"), (8, "row"), (6, "col"), (4, "col")):
            scale_b = (4 / k) if per == "col" else 2.0
            r = int((budget - head) / (bits / 8 + (scale_b if per == "row" else 4 / k)))
            r = max(1, min(r, basis.shape[0]))
            a = fit_coefficients(rows, basis[:r], mean, steps=2, penalty=0.3)
            yh = _quant_rows(a, bits, per, k) @ basis[:r] + mean
            b = r * bits / 8 + (2.0 if per == "row" else 4 * r / k) + head
            k1, k20 = kl(yh)
            out.append(dict(budget=budget, variant=f"int{bits}, scale per {'row (fp16)' if per == 'row' else 'image x component'}",
                            rank=r, bytes_per_row=b, kl_T1=k1, kl_T20=k20))
        # zstd on the stored int8 blocks: what a rank-r record body would shrink to
        r = int((budget - head) / (1 + 4 / k))
        a = fit_coefficients(rows, basis[:r], mean, steps=2, penalty=0.3).reshape(n, k, r)
        comp = zstandard.ZstdCompressor(level=19)
        raw = z = 0
        for img in a:
            s = (img.abs().amax(0) / 127).clamp_min(1e-12)
            q = torch.round(img / s).clamp(-127, 127).to(torch.int8).T.contiguous().numpy().tobytes()
            raw += len(q)
            z += len(comp.compress(q))
        out.append(dict(budget=budget, variant=f"int8 + zstd-19 per record (rank {r})", rank=r,
                        bytes_per_row=(z + 4 * r * n) / (n * k) + head, kl_T1=out[-4]["kl_T1"], kl_T20=out[-4]["kl_T20"],
                        note=f"zstd saves {100 * (1 - z / raw):.1f}% of the coefficient bytes"))
        for name, steps, pen in (("least-squares projection", 0, 0.0), ("KL(T=1) fit, no penalty", 2, 0.0),
                                 ("KL(T=1) fit, penalty 0.3 (default)", 2, 0.3)):
            a = fit_coefficients(rows, basis[:r], mean, steps=steps, penalty=pen)
            yh = _quant_rows(a, 8, "col", k) @ basis[:r] + mean
            k1, k20 = kl(yh)
            out.append(dict(budget=budget, variant=f"fit: {name}", rank=r, bytes_per_row=r * (1 + 4 / k) + head,
                            kl_T1=k1, kl_T20=k20))
    return out
