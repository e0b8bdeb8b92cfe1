"""Codec benchmark on real teacher logits: size, fidelity and speed of every method, rank and quantisation.

    python -m benchmarks.codec --preset quick --threads 1      # CI-sized
    python -m benchmarks.codec --preset full

Quality rows use the logits of a small ResNet teacher trained here on Fashion-MNIST (C = 10), over K
SRe2L-style augmented views per image (:mod:`benchmarks.shared`).  Speed rows need ImageNet-sized
matrices (300 x 1000): the same teacher's penultimate features of real augmented views times a fixed
random 1000-way head (described in the output).  Prints markdown to stdout and writes
``<out>/codec_bench_<preset>.md`` and ``.csv``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import logging
import math
import os
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import zstandard

from benchmarks.codec.manyclass import MANY_METHODS, coefficient_study, glyph_teacher_logits, manyclass_rows
from benchmarks.shared import cached_teacher_logits, cpu_name, load_subset, logit_quality, train_teacher
from score_codec import LabelStore, encode
from score_codec.errors import ScoreError
from score_codec.store.encoder import EncodeOptions, encode_chunk

__all__ = ["PRESETS", "main"]

log = logging.getLogger(__name__)
#: the committed results (``codec_bench_<preset>.md`` / ``.csv``)
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

PRESETS: Dict[str, Dict[str, Any]] = {
    "quick": dict(n=500, k=50, ranks=[1, 2, 4, 8], residuals=[0, 1], ratios=[3, 5, 10, 20, 30], shuffle_ranks=[2, 8],
                  speed_n=24, speed_rpca=4, speed_rank=16, decode_n=64, decode_batches=30,
                  many_n=100, many_k=50, many_targets=[10, 30, 100],
                  many_methods=["svd", "shared (per class)", "global", "two-level", "global, teacher head"],
                  many_methods_crop=["svd", "global"]),
    "full": dict(n=1000, k=300, ranks=[1, 2, 3, 4, 6, 8], residuals=[0, 1, 2], ratios=[3, 5, 10, 20, 30],
                 shuffle_ranks=[2, 4, 8], speed_n=96, speed_rpca=4, speed_rank=16, decode_n=200, decode_batches=200,
                 many_n=300, many_k=100, many_targets=[10, 20, 30, 100], many_methods=None,
                 many_methods_crop=["svd", "shared (per class)", "global", "two-level", "global, teacher head"]),
}
METHODS = ["svd", "rsvd", "cur", "rpca", "shared"]
QUANTS = ["fp16", "int8"]
SPEED_CLASSES = 1000
HEAD_SEED = 1234


def _timed(fn: Callable[[], Any], min_time: float = 0.0) -> tuple:
    """(result of the last call, seconds per call); repeats until ``min_time`` has passed."""
    calls, t0 = 0, time.perf_counter()
    while True:
        res = fn()
        calls += 1
        dt = time.perf_counter() - t0
        if dt >= min_time:
            return res, dt / calls


def _decode_all(path: str) -> torch.Tensor:
    fac = LabelStore(path).factors()
    n = fac.ks.numel()
    return torch.cat([fac.matrices(range(s, min(s + 256, n))) for s in range(0, n, 256)])


def quality_rows(y: torch.Tensor, labels: List[int], cfg: Dict[str, Any], tmp: str) -> List[Dict[str, Any]]:
    """Encode the real logits with every (method, rank, quant, residual), and the ratio-targeted svd rows."""
    n = y.shape[0]
    jobs = [dict(method=m, rank=r, quant=q, residual=s) for m in METHODS for r in cfg["ranks"] for q in QUANTS
            for s in cfg["residuals"]]
    jobs += [dict(method="svd", ratio=float(t), quant="fp16", residual=0) for t in cfg["ratios"]]
    jobs += [dict(method="svd", rank=r, quant=q, residual=0, shuffle=True) for r in cfg["shuffle_ranks"] for q in QUANTS]
    out = []
    for j, job in enumerate(jobs):
        path = os.path.join(tmp, "q.store")
        t0 = time.perf_counter()
        try:
            st = encode(y, path, labels=labels, overwrite=True, **job)
        except ScoreError as exc:
            log.warning("%s: %s: %s", job, type(exc).__name__, exc)
            out.append(dict(job, error=f"{type(exc).__name__}: {exc}"))
            continue
        enc_s = time.perf_counter() - t0
        met = logit_quality(y, _decode_all(path))
        row = dict(job, bytes_per_row=st["bytes_per_row"], ratio_fp16=st["ratio"], rank_mean=st["rank_mean"],
                   enc_mat_s=n / enc_s, **met)
        out.append(row)
        log.info("[%d/%d] %s -> %.2f B/row KL1 %.3g", j + 1, len(jobs), job, row["bytes_per_row"], met["kl_T1"])
    return out


def zstd_rows(y: torch.Tensor) -> List[Dict[str, Any]]:
    """Baselines: fp16 logits (raw, row-centred) and fp16 softmax probabilities, zstd per image, +- byte shuffle."""
    out = []
    rows = y.shape[0] * y.shape[1]
    probs = torch.softmax(y.double(), -1).float()
    for name, src in [("raw", y), ("centred", y - y.mean(-1, keepdim=True)), ("probabilities", probs)]:
        h = src.half()
        # probabilities decode to log(p), floored at the smallest fp16 subnormal
        dec = h.float().clamp_min(2.0 ** -24).log() if name == "probabilities" else h.float()
        met = logit_quality(y, dec)
        arr = h.numpy()
        for level in (3, 19):
            comp = zstandard.ZstdCompressor(level=level)
            for shuffle in (False, True):
                total = 0
                for m in arr:
                    buf = m.tobytes()
                    if shuffle:
                        buf = np.frombuffer(buf, np.uint8).reshape(-1, 2).T.tobytes()
                    total += len(comp.compress(buf))
                out.append(dict(method=f"fp16 {name} + zstd-{level}", shuffle=shuffle, quant="fp16",
                                bytes_per_row=total / rows, ratio_fp16=2.0 * y.shape[-1] * rows / total, **met))
        out.append(dict(method=f"fp16 {name}", quant="fp16", bytes_per_row=2.0 * y.shape[-1], ratio_fp16=1.0, **met))
    return out


def speed_logits(model: torch.nn.Module, cfg: Dict[str, Any], y10: torch.Tensor) -> tuple:
    """(speed_n, 300, 1000) teacher-like logits: alpha * features @ W, W ~ N(0, 1/d) fixed by HEAD_SEED,
    alpha matching the mean row std of the real 10-class logits ``y10``."""
    imgs, labels = load_subset("train", max(cfg["speed_n"], cfg["decode_n"]), seed=1)
    _, feats = cached_teacher_logits(model, imgs, 300, seed=1, features=True)
    d = feats.shape[-1]
    w = torch.randn(d, SPEED_CLASSES, generator=torch.Generator().manual_seed(HEAD_SEED)) / math.sqrt(d)
    z = feats @ w
    alpha = float(y10.std(-1).mean() / z.std(-1).mean())
    return z * alpha, labels.tolist(), d, alpha


def encode_speed(z: torch.Tensor, labels: List[int], cfg: Dict[str, Any], tmp: str) -> List[Dict[str, Any]]:
    """Matrices/s of encode_chunk (in memory) and of encode (to a temp store) per method, rank speed_rank."""
    z, labels = z[:cfg["speed_n"]], labels[:cfg["speed_n"]]
    mats = list(z.unbind(0))
    out = []
    for m in METHODS:
        cnt = cfg["speed_rpca"] if m == "rpca" else len(mats)
        opts = EncodeOptions(method=m, rank=cfg["speed_rank"], quant="fp16")
        encode_chunk(mats[:2], opts, labels=labels[:2])  # warm-up
        ranks = torch.full((cnt,), cfg["speed_rank"])
        _, t_codec = _timed(lambda: opts.make_codec().factorize(z[:cnt], ranks))
        _, t_chunk = _timed(lambda: encode_chunk(mats[:cnt], opts, labels=labels[:cnt]))
        path = os.path.join(tmp, "s.store")
        _, t_store = _timed(lambda: encode(z[:cnt], path, method=m, rank=cfg["speed_rank"], labels=labels[:cnt],
                                           overwrite=True))
        out.append(dict(method=m, matrices=cnt, codec_mat_s=cnt / t_codec, chunk_mat_s=cnt / t_chunk,
                        store_mat_s=cnt / t_store))
        log.info("encode speed %s: %.1f matrices/s in memory, %.1f to a store", m, cnt / t_chunk, cnt / t_store)
    base = next(r for r in out if r["method"] == "svd")
    for r in out:
        r["chunk_vs_svd"] = r["chunk_mat_s"] / base["chunk_mat_s"]
        r["store_vs_svd"] = r["store_mat_s"] / base["store_mat_s"]
    return out


def decode_speed(z: torch.Tensor, cfg: Dict[str, Any], tmp: str, rank: int) -> List[Dict[str, Any]]:
    """Rows/s of batched full-matrix decode and random (image, aug) row decode, vs a plain fp16 gather."""
    n, k, _ = z.shape
    path = os.path.join(tmp, "d.store")
    encode(z, path, method="svd", rank=rank, quant="fp16", overwrite=True)
    fac = LabelStore(path).factors()
    dense = z.half().numpy()
    per = max(1, 1024 // k)
    groups = [list(range(s, min(s + per, n))) for s in range(0, n, per)]
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, n, 1024), rng.integers(0, k, 1024)) for _ in range(cfg["decode_batches"])]
    runs = {
        "store matrices (batched)": lambda: [fac.matrices(g) for g in groups],
        "fp16 array slices -> float32": lambda: [torch.from_numpy(dense[g[0]:g[-1] + 1]).float() for g in groups],
        "store rows (random pairs)": lambda: [fac.rows(i, a) for i, a in pairs],
        "fp16 array gather -> float32": lambda: [torch.from_numpy(dense[i, a]).float() for i, a in pairs],
    }
    out = []
    for name, fn in runs.items():
        rows = n * k if "matrices" in name or "slices" in name else 1024 * len(pairs)
        fn()
        _, t = _timed(fn, min_time=1.0)
        out.append(dict(method=name, rank=rank, rows_s=rows / t))
    for r, base in ((out[0], out[1]), (out[2], out[3])):
        r["vs_fp16"] = r["rows_s"] / base["rows_s"]
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.3g}" if (abs(v) < 0.01 or abs(v) >= 1e4) and v != 0 else f"{v:.3f}".rstrip("0").rstrip(".")
    return "" if v is None else str(v)


def md_table(rows: Sequence[Dict[str, Any]], cols: Sequence[tuple]) -> str:
    """Markdown table of ``rows`` with ``cols`` as (key, header) pairs."""
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c, _ in cols) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.codec", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="Problem sizes (default: quick).")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default: 2).")
    p.add_argument("--out", default=RESULTS_DIR,
                   help="Folder for codec_bench_<preset>.md / .csv (default: benchmarks/codec/results).")
    p.add_argument("--note", default="", help="A line added to the header (e.g. why the run was single-threaded).")
    p.add_argument("--quiet", action="store_true", help="Warnings only on stderr.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    cfg = PRESETS[args.preset]
    t_start = time.time()
    model = train_teacher(progress=not args.quiet)
    info = getattr(model, "bench_info", {})
    imgs, labels = load_subset("train", cfg["n"], seed=0)
    y = cached_teacher_logits(model, imgs, cfg["k"], seed=0, progress=not args.quiet)
    n, k, c = y.shape
    many: Dict[str, List[Dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="codec_bench_") as tmp:
        for mix, names in (("cutmix", cfg["many_methods"]), ("none", cfg["many_methods_crop"])):
            methods = [m for m in MANY_METHODS if names is None or m[0] in names]
            ym, ylab, head, g_top1 = glyph_teacher_logits(cfg["many_n"], cfg["many_k"], mix, progress=not args.quiet)
            many[mix] = manyclass_rows(ym, ylab, head, cfg["many_targets"], tmp, methods)
            if mix == "cutmix":
                coef = coefficient_study(ym)
    with tempfile.TemporaryDirectory(prefix="codec_bench_") as tmp:
        qual = quality_rows(y, labels.tolist(), cfg, tmp)
        zst = zstd_rows(y)
        z, zlab, d, alpha = speed_logits(model, cfg, y)
        enc = encode_speed(z, zlab, cfg, tmp)
        dec = decode_speed(z[:cfg["decode_n"]], cfg, tmp, cfg["speed_rank"])
    hdr = [f"# codec_bench, preset `{args.preset}`", "",
           f"- date {datetime.datetime.now().isoformat(timespec='seconds')}; CPU: {cpu_name()} ({os.cpu_count()} logical CPUs); "
           f"torch {torch.__version__}; torch threads {torch.get_num_threads()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
           f"- teacher: ResNet {model.config}, trained here on the 60k Fashion-MNIST train images; test top-1 "
           f"{_fmt(info.get('test_top1', float('nan')))}",
           f"- quality data: N={n} train images x K={k} views x C={c} classes, fp32 teacher logits; views: "
           f"RandomResizedCrop(28, scale (0.08, 1)) + flip p=0.5, CutMix (lam ~ Beta(1,1)) per batch of 64; "
           f"an fp16 row is {2 * c} B",
           f"- speed data: {z.shape[0]} matrices of 300 x {SPEED_CLASSES}: alpha * F @ W with F the teacher's "
           f"penultimate features (d={d}) of real augmented views (same recipe), W ~ N(0, 1/d) ({d} x {SPEED_CLASSES}, "
           f"seed {HEAD_SEED}), alpha={alpha:.3g} matching the mean row std of the real logits (so rank <= {d}); "
           f"for throughput only",
           "- KL(softmax(Y/T) || softmax(Y_hat/T)), batchmean over rows, float64, Y row-centred; top-1 = argmax agreement; "
           "B/row counts records + shared bases (label_bytes / rows)"]
    if args.note:
        hdr.append(f"- note: {args.note}")
    qcols = [("method", "method"), ("rank", "rank"), ("quant", "quant"), ("residual", "res"),
             ("bytes_per_row", "B/row"), ("ratio_fp16", "ratio vs fp16"), ("kl_T1", "KL T=1"), ("kl_T20", "KL T=20"),
             ("top1", "top-1 agree"), ("enc_mat_s", "encode mat/s")]
    main_rows = [r for r in qual if "ratio" not in r and not r.get("shuffle")]
    ratio_rows = [r for r in qual if "ratio" in r]
    shuf = [r for r in qual if r.get("shuffle")]
    for r in shuf:
        plain = next((q for q in main_rows if q["method"] == "svd" and q["rank"] == r["rank"] and q["quant"] == r["quant"]
                      and q["residual"] == 0), None)
        r["plain_bytes_per_row"] = plain["bytes_per_row"] if plain else None
        r["shuffle_gain"] = (1 - r["bytes_per_row"] / plain["bytes_per_row"]) if plain and "bytes_per_row" in r else None
    mcols = [("codec", "codec"), ("target", "target"), ("ratio", "achieved"), ("bytes_per_row", "B/row"),
             ("rank", "rank"), ("kl_T1", "KL T=1"), ("kl_T20", "KL T=20"), ("top1", "top-1 agree"),
             ("enc_mat_s", f"encode {cfg['many_k']}x1000 mat/s"), ("dec_rows_s", "decode rows/s (matrices)"),
             ("rand_rows_s", "decode rows/s (random, batch 256)"), ("error", "note")]
    many_hdr = (f"Real logits of the glyphs-full benchmark's teacher (1000 classes, ConvNet width 128, penultimate "
                f"width 128, test top-1 {100 * g_top1:.2f}% on unseen font families): {cfg['many_n']} training images "
                f"x K = {cfg['many_k']} views, RandomResizedCrop (scale 0.08-1) + flip, int8 factors. An fp16 row is "
                f"2,000 B; 10x / 20x / 30x / 100x leave 200 / 100 / 67 / 20 B per row.")
    parts = hdr + ["", "## Many classes: every codec on real 1000-class logits", "", many_hdr, "",
                   "### CutMix views (one CutMix per batch of 64, the SRe2L recipe)", "", md_table(many["cutmix"], mcols), "",
                   "### Crop + flip views (no mixing)", "", md_table(many["none"], mcols), "",
                   "### Coefficient coding of the global codec's basis (CutMix views)", "",
                   md_table(coef, [("budget", "budget B/row"), ("variant", "variant"), ("rank", "rank"),
                                   ("bytes_per_row", "B/row"), ("kl_T1", "KL T=1"), ("kl_T20", "KL T=20"),
                                   ("note", "note")]), "",
                   "## Quality on real teacher logits (10 classes)", "", md_table(main_rows, qcols), "",
                   "## Rate control: svd with a target ratio (fp16)", "",
                   md_table(ratio_rows, [("ratio", "target ratio"), ("ratio_fp16", "achieved ratio"),
                                         ("bytes_per_row", "B/row"), ("rank_mean", "mean rank"), ("kl_T1", "KL T=1"),
                                         ("kl_T20", "KL T=20"), ("top1", "top-1 agree"), ("error", "error")]), "",
                   "## Byte shuffle before zstd on factor bytes (svd, residual 0)", "",
                   md_table(shuf, [("rank", "rank"), ("quant", "quant"), ("plain_bytes_per_row", "B/row plain"),
                                   ("bytes_per_row", "B/row shuffle"), ("shuffle_gain", "saving")]), "",
                   "## Baselines: fp16 logits / probabilities + zstd per image (lossless after fp16 rounding)", "",
                   md_table(zst, [("method", "baseline"), ("shuffle", "byte shuffle"), ("bytes_per_row", "B/row"),
                                  ("ratio_fp16", "ratio vs fp16"), ("kl_T1", "KL T=1 (fp16 rounding)"), ("top1", "top-1 agree")]), "",
                   f"## Encode speed, 300 x {SPEED_CLASSES} matrices, rank {cfg['speed_rank']}, fp16", "",
                   md_table(enc, [("method", "method"), ("matrices", "matrices"), ("codec_mat_s", "factorize only mat/s"),
                                  ("chunk_mat_s", "encode_chunk mat/s"),
                                  ("chunk_vs_svd", "vs svd"), ("store_mat_s", "encode() to store mat/s"),
                                  ("store_vs_svd", "vs svd")]), "",
                   f"## Decode speed, {cfg['decode_n']} images x 300 x {SPEED_CLASSES}, svd rank {cfg['speed_rank']}, "
                   f"batches of ~1024 rows", "",
                   md_table(dec, [("method", "decode"), ("rows_s", "rows/s"), ("vs_fp16", "vs fp16 array")]), "",
                   f"Total time {time.time() - t_start:.0f} s."]
    text = "\n".join(parts)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"codec_bench_{args.preset}.md"), "w") as f:
        f.write(text + "\n")
    sections = [("many_cutmix", many["cutmix"]), ("many_crop", many["none"]), ("coefficients", coef), ("quality", main_rows), ("ratio", ratio_rows), ("shuffle", shuf), ("zstd", zst), ("encode_speed", enc),
                ("decode_speed", dec)]
    keys: List[str] = []
    for _, rows in sections:
        for r in rows:
            keys += [x for x in r if x not in keys]
    with open(os.path.join(args.out, f"codec_bench_{args.preset}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, ["section"] + keys)
        w.writeheader()
        for name, rows in sections:
            for r in rows:
                w.writerow(dict(r, section=name))
    return 0

