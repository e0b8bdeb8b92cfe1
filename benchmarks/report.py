"""Tables, CSV and plots of the storage-versus-accuracy benchmark (``benchmarks/results/<name>.*``).

Result rows (dicts) come from :func:`benchmarks.storage_vs_accuracy.run`:

* ``experiment="selection"``: method, ipc, images, top1 (list over seeds, fractions);
* ``experiment="storage"``: vid, family, name, target (ratio), rows (N*K of the full dump), C,
  label_bytes, rows_kept, kl (nats, T), agree (fraction), top1 (list), note ("n/a: ..." when the
  budget is unreachable).
"""
from __future__ import annotations

import csv
import logging
import os
import statistics
from typing import Any, Dict, List, Optional

__all__ = ["budget_bytes", "meets_budget", "mean_std", "write_report", "FAMILY_ORDER"]

log = logging.getLogger("benchmarks.report")
FAMILY_ORDER = ["raw", "fp16+zstd", "ours", "ours+pool", "LPLD", "LPQLD", "FKD"]


def budget_bytes(row: Dict[str, Any]) -> float:
    """Label-byte budget of a storage row: fp16 dump bytes (rows * 2C) / target ratio."""
    return row["rows"] * 2 * row["C"] / float(row["target"])


def meets_budget(row: Dict[str, Any]) -> Optional[bool]:
    """True when the stored label bytes fit the budget; None for n/a rows."""
    if row.get("label_bytes") is None or row["family"] == "fp16+zstd":   # lossless: measured, not budgeted
        return None
    return row["label_bytes"] <= budget_bytes(row) * (1 + 1e-12)


def mean_std(v: Optional[List[float]]) -> str:
    """'mean +- std' in percent ('mean' alone for one value; '' for none)."""
    if not v:
        return ""
    m = 100 * statistics.fmean(v)
    return f"{m:.2f} ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{m:.2f}"


def _schedule(cfg: Dict[str, Any]) -> str:
    if cfg.get("train_epochs"):
        return f"{cfg['train_epochs']} epochs (label epoch e mod K)"
    if cfg.get("train_steps"):
        return (f"about {cfg['train_steps']} steps per student (ceil(steps / batches per epoch) epochs; label epoch "
                f"e mod K, so each stored view is replayed several times)")
    return "one pass per label epoch"


def _yes(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def _sort_key(r: Dict[str, Any]):
    fam = FAMILY_ORDER.index(r["family"]) if r["family"] in FAMILY_ORDER else 99
    return (float(r["target"]) if r["family"] not in ("raw", "fp16+zstd") else 0.0, fam, r["vid"])


def _storage_table(rows: List[Dict[str, Any]]) -> List[str]:
    out = ["| target | variant | family | label bytes | B/row | ratio | in budget | KL(T) | top-1 agree "
           "| student top-1 (%) | note |",
           "|---:|---|---|---:|---:|---:|:-:|---:|---:|---:|---|"]
    for r in sorted(rows, key=_sort_key):
        if r.get("label_bytes") is None:
            out.append(f"| {r['target']:g}x | {r['name']} | {r['family']} | | | | | | | n/a | {r['note'][:110]} |")
            continue
        ratio = r["rows"] * 2 * r["C"] / r["label_bytes"]
        kept = r["rows_kept"] / r["rows"]
        note = r.get("note") or ("" if kept == 1 else f"keeps {100 * kept:.1f}% of rows; KL/agree over kept rows")
        out.append(f"| {r['target']:g}x | {r['name']} | {r['family']} | {r['label_bytes']:,} | "
                   f"{r['label_bytes'] / r['rows']:.3f} | {ratio:.2f}x | {_yes(meets_budget(r))} | "
                   f"{r['kl']:.3g} | {100 * r['agree']:.1f}% | {mean_std(r.get('top1'))} | {note} |")
    return out


def _best_table(rows: List[Dict[str, Any]]) -> List[str]:
    """Per target ratio: the best of each family (by mean student top-1) and our margin over the peers."""
    raw = next((r for r in rows if r["family"] == "raw"), None)
    raw_m = statistics.fmean(raw["top1"]) if raw and raw.get("top1") else None
    targets = sorted({float(r["target"]) for r in rows if r["family"] not in ("raw", "fp16+zstd")})
    fams = ["ours", "ours+pool", "LPLD", "LPQLD", "FKD"]
    out = ["| target | " + " | ".join(f"best {f}" for f in fams) + " | best ours - raw (pt) | best ours - best peer (pt) |",
           "|---:|" + "---|" * len(fams) + "---:|---:|"]
    for t in targets:
        best: Dict[str, Any] = {}
        for f in fams:
            cand = [r for r in rows if r["family"] == f and float(r["target"]) == t and r.get("top1")]
            best[f] = max(cand, key=lambda r: statistics.fmean(r["top1"])) if cand else None
        cells = [f"{b['name']}: {mean_std(b['top1'])}" if b else "n/a" for b in (best[f] for f in fams)]
        mine = [statistics.fmean(best[f]["top1"]) for f in fams[:2] if best[f]]
        o = max(mine) if mine else None
        peers = [statistics.fmean(best[f]["top1"]) for f in fams[2:] if best[f]]
        d_raw = f"{100 * (o - raw_m):+.2f}" if o is not None and raw_m is not None else "n/a"
        d_peer = f"{100 * (o - max(peers)):+.2f}" if o is not None and peers else "n/a"
        out.append(f"| {t:g}x | " + " | ".join(cells) + f" | {d_raw} | {d_peer} |")
    return out


def write_report(rows: List[Dict[str, Any]], info: Dict[str, Any], out_dir: str, name: str) -> Dict[str, str]:
    """Write ``<name>.md``, ``<name>.csv`` and (with matplotlib) ``<name>.png``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    cfg = info["config"]
    sel = [r for r in rows if r["experiment"] == "selection"]
    sto = [r for r in rows if r["experiment"] == "storage"]
    md = [f"# Storage versus accuracy: preset `{name}`", "",
          f"Command: `python benchmarks/storage_vs_accuracy.py --preset {name}`", "",
          f"Data `{cfg['data']}` ({info['classes']} classes), teacher ResNet (width {cfg['teacher_width']}) test "
          f"top-1 **{100 * info['teacher_top1']:.2f}%**. Relabel: K = {info['label_epochs']} epochs of "
          f"RandomResizedCrop + flip + CutMix, batch {cfg['batch_size']} ({info['batches_per_epoch']} batches per "
          f"epoch). Student: ConvNet width {cfg['student_width']} depth {cfg['student_depth']}, KL at T = {cfg['T']:g}, "
          f"AdamW lr {cfg['lr']:g} wd {cfg['wd']:g}, cosine, {_schedule(cfg)}; seeds {list(cfg['seeds'])}; "
          f"top-1 in % as mean ± std over seeds.", "",
          "## Selection (uncompressed labels)", "",
          "| method | IPC | images | K | student top-1 (%) |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['method']} | {r['ipc']} | {r['images']} | {r.get('K', '')} | {mean_std(r['top1'])} |" for r in sel]
    row_b = 2 * info["classes"]
    md += ["", f"## Label storage at matched budgets ({cfg['sweep_method']} selection, IPC {cfg['sweep_ipc']}, "
               f"{info['sweep_images']} images x {info['label_epochs']} rows)", "",
           f"A raw fp16 row is {row_b} bytes ({info['classes']} classes); the budget at target X is {row_b}/X bytes "
           f"per row. Bytes are label bytes only (augmentation metadata is the same for every variant). KL is the "
           f"mean KL(teacher || stored target) at T = {cfg['T']:g} in nats over stored rows (MR-k targets are zero "
           f"outside the top k, so their KL is dominated by the 1e-30 floor).", ""]
    md += _storage_table(sto)
    md += ["", "## Best of each family per budget (student top-1 %)", ""] + _best_table(sto) + [""]
    paths = {"md": os.path.join(out_dir, f"{name}.md"), "csv": os.path.join(out_dir, f"{name}.csv")}
    with open(paths["md"], "w") as f:
        f.write("\n".join(md))
    keys = ["experiment", "method", "ipc", "images", "vid", "family", "name", "target", "rows", "C", "label_bytes",
            "bytes_per_row", "ratio", "meets_budget", "kl", "agree", "top1_mean", "top1_std", "top1_seeds", "note"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = dict(r)
            t = r.get("top1") or []
            d.update(top1_mean=statistics.fmean(t) if t else "", top1_std=statistics.stdev(t) if len(t) > 1 else "",
                     top1_seeds=";".join(f"{v:.4f}" for v in t))
            if r.get("label_bytes") is not None:
                d.update(bytes_per_row=r["label_bytes"] / r["rows"], ratio=r["rows"] * 2 * r["C"] / r["label_bytes"],
                         meets_budget=meets_budget(r))
            w.writerow(d)
    png = _plot(sto, os.path.join(out_dir, f"{name}.png"), name)
    if png:
        paths["png"] = png
    log.info("wrote %s", ", ".join(paths.values()))
    return paths


def _plot(rows: List[Dict[str, Any]], path: str, name: str) -> Optional[str]:
    """Student top-1 vs label bytes (log x), one series per family; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fam, mk in zip(FAMILY_ORDER, "o*sDP^v"):
        pts = sorted((r["label_bytes"], 100 * statistics.fmean(r["top1"])) for r in rows
                     if r["family"] == fam and r.get("top1") and r.get("label_bytes"))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], mk, label=fam, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("label bytes (log scale)")
    ax.set_ylabel("student test top-1 (%)")
    ax.set_title(f"storage vs accuracy ({name})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
