"""Tables, CSV, JSON and plots of the storage-versus-accuracy benchmark (``<out>/<name>.*``).

Result rows (dicts) come from :func:`benchmarks.storage_vs_accuracy.run`:

* ``experiment="selection"``: method, ipc, images, K, target_ratio (1: raw labels; X: the library's default
  encode at X), top1 (list over seeds, fractions), and for compressed rows keep_epochs / inner_ratio /
  probe_kl_t1 or a note ("n/a: ..." when the budget cannot hold the labels);
* ``experiment="hard"``: the hard-label student on the sweep's views;
* ``experiment="storage"``: vid, family, name, target (ratio), rows (N*K of the full dump), C,
  label_bytes, rows_kept, kl (nats, at the student's T), kl_t1, agree (fraction), top1 (list), note
  ("n/a: ..." when the budget is unreachable).
"""
from __future__ import annotations

import csv
import json
import re
import logging
import os
import statistics
from typing import Any, Dict, List, Optional

from score_codec.store.allocate import POOL_BUDGET_ADVICE

__all__ = ["budget_bytes", "meets_budget", "mean_std", "NOT_RUN", "converged", "doubling_gain", "converged_by_doubling",
           "write_report", "render_markdown",
           "render_console", "best_by_target", "compare", "provenance", "default_command", "FAMILY_ORDER", "JSON_FAMILY"]

log = logging.getLogger(__name__)
FAMILY_ORDER = ["raw", "fp16+zstd", "ours", "library", "ours+pool", "LPLD", "LPQLD", "MR-k", "FKD"]
#: family names of the machine-readable result
JSON_FAMILY = {"ours": "ours", "library": "library", "ours+pool": "ours+pool", "LPLD": "lpld", "LPQLD": "lpqld",
               "MR-k": "mrk", "FKD": "fkd", "fp16+zstd": "zstd", "raw": "raw"}
#: display names of the JSON's family names
FAMILY_DISPLAY = {v: k for k, v in JSON_FAMILY.items()}
#: the families of the best-per-budget table: ours first (OURS_FAMILIES), then the peers
BEST_FAMILIES = ["ours", "library", "ours+pool", "LPLD", "LPQLD", "MR-k", "FKD"]
OURS_FAMILIES = ("ours", "library", "ours+pool")
#: the schedule is long enough when twice the schedule gains less than this (top-1 fraction)
CONVERGED_GAIN = 0.005


def budget_bytes(row: Dict[str, Any]) -> float:
    """Label-byte budget of a storage row: fp16 dump bytes (rows * 2C) / target ratio."""
    return row["rows"] * 2 * row["C"] / float(row["target"])


def meets_budget(row: Dict[str, Any]) -> Optional[bool]:
    """True when the stored label bytes fit the budget; None for n/a rows."""
    if row.get("label_bytes") is None or row["family"] == "fp16+zstd":   # lossless: measured, not budgeted
        return None
    return row["label_bytes"] <= budget_bytes(row) * (1 + 1e-12)


#: the student cell of a row whose student was not started (``--time-limit``); a re-run resumes it
NOT_RUN = "not run (time limit)"


def mean_std(v: Optional[List[float]]) -> str:
    """'mean +- std' in percent ('mean' alone for one value; '' for none)."""
    if not v:
        return ""
    m = 100 * statistics.fmean(v)
    return f"{m:.2f} ± {100 * statistics.stdev(v):.2f}" if len(v) > 1 else f"{m:.2f}"


def selection_entry(r: Dict[str, Any]) -> Dict[str, Any]:
    """One ``selection`` entry of the results JSON: a selection method at one IPC and one label ratio."""
    t = r.get("top1") or []
    out = dict(method=r["method"], ipc=r["ipc"], images=r.get("images"), K=r["K"],
               target_ratio=r.get("target_ratio", 1), top1=t,
               top1_mean=statistics.fmean(t) if t else None, top1_std=statistics.stdev(t) if len(t) > 1 else None,
               seeds=len(t))
    out.update({k: r[k] for k in ("keep_epochs", "inner_ratio", "probe_kl_t1", "note") if r.get(k) is not None})
    return out


def selection_table(entries: List[Dict[str, Any]]) -> List[str]:
    """Markdown: selection method x label ratio per IPC, each row against random, herding and SCORE with
    beta = 0 at the same IPC and ratio (Welch's t-test, :func:`compare`)."""
    if not entries:
        return []
    ratios = sorted({float(e.get("target_ratio", 1)) for e in entries})
    rivals = ("random", "herding", "score-beta0")
    out = ["| method | IPC | labels | student top-1 (%) | seeds | " + " | ".join(f"vs {m}" for m in rivals) + " |",
           "|---|---:|---|---:|---:|" + "---|" * len(rivals)]
    for ipc in sorted({e["ipc"] for e in entries}):
        for x in ratios:
            cell = {e["method"]: e for e in entries if e["ipc"] == ipc and float(e.get("target_ratio", 1)) == x}
            for m, e in cell.items():
                label = "raw fp16" if x == 1 else f"library default {x:g}x"
                if e.get("keep_epochs") is not None:
                    label += f" (keeps {e['keep_epochs']} epochs)"
                vs = ["" if m == r or r not in cell or e.get("top1_mean") is None or cell[r].get("top1_mean") is None
                      else compare(e, cell[r]) for r in rivals]
                # the table keeps what was measured, not the advice a BudgetError gives at the prompt
                acc = mean_std(e.get("top1")) or (e.get("note") or NOT_RUN).replace(f". {POOL_BUDGET_ADVICE}", "")
                out.append(f"| {m} | {ipc} | {label} | {acc} | {e.get('seeds', 0)} | " + " | ".join(vs) + " |")
    return out


def _last_quarter_gain(curve: List[List[float]]) -> Optional[float]:
    pts = dict((round(f, 4), a) for f, a in curve)
    return None if 0.75 not in pts or 1.0 not in pts else pts[1.0] - pts[0.75]


def converged(curve: List[List[float]]) -> Optional[bool]:
    """True when the last quarter of the schedule added < 0.5 point of top-1 (None without a curve).  A
    cosine schedule anneals in its last quarter, so this is informative only; the convergence test is
    :func:`converged_by_doubling`."""
    g = _last_quarter_gain(curve)
    return None if g is None else g < CONVERGED_GAIN


def doubling_gain(ref: Dict[str, Any]) -> Optional[float]:
    """The doubling test's gain (top-1 fraction) of a result's ``reference``: the first seed trained for
    twice the schedule minus the same seed at the schedule.  ``reference.doubling_gain`` where the JSON has
    it, else its ``doubled_schedule`` figure (results written before the field existed), else None (not
    measured)."""
    if "doubling_gain" in ref:
        return ref["doubling_gain"]
    d = ref.get("doubled_schedule")
    return None if not d else d.get("gain")


def converged_by_doubling(ref: Dict[str, Any]) -> Optional[bool]:
    """True when twice the schedule gains < 0.5 point (:data:`CONVERGED_GAIN`); None when not measured."""
    g = doubling_gain(ref)
    return None if g is None else g < CONVERGED_GAIN


def _schedule(cfg: Dict[str, Any], info: Dict[str, Any]) -> str:
    if cfg.get("train_epochs"):
        return f"{cfg['train_epochs']} epochs (label epoch e mod K)"
    if cfg.get("train_steps"):
        return (f"about {cfg['train_steps']} steps per student (label epoch e mod K, so each stored view is "
                f"replayed several times)")
    return f"{info['label_epochs']} epochs, training epoch e on label epoch e (each stored view once)"


def _yes(v: Optional[bool]) -> str:
    return "-" if v is None else ("yes" if v else "NO")


def _row_sort_key(r: Dict[str, Any]):
    fam = FAMILY_ORDER.index(r["family"]) if r["family"] in FAMILY_ORDER else 99
    return (float(r["target"]) if r["family"] not in ("raw", "fp16+zstd") else 0.0, fam, r.get("vid") or r["name"])


def _table_rows(j: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The storage rows of a result JSON in the table's form: the raw fp16 reference first (it is the
    ``reference`` entry of the JSON, not one of its rows), display family names, ``rows`` and ``C``."""
    rows_n, c = j["images"] * j["label_epochs"], j["num_classes"]
    ref = j["reference"]
    raw = dict(family="raw", name="raw fp16 (SRe2L dump)", vid="raw", target=1.0,
               label_bytes=ref.get("label_bytes", rows_n * 2 * c), kl=ref.get("kl_t", 0.0), kl_t1=ref.get("kl_t1", 0.0),
               agree=ref.get("agree", 1.0), rows_kept=rows_n, top1_mean=ref["top1_mean"], top1_std=ref["top1_std"],
               note=None)
    out = [raw]
    for r in j["rows"]:
        fam, name = FAMILY_DISPLAY.get(r["family"], r["family"]), r["variant"]
        if fam == "LPQLD" and re.fullmatch(r"LPQLD MR-\d+", name or ""):   # results written before MR-k had its
            fam, name = "MR-k", name[len("LPQLD "):]                      # own family: MR-k alone, no pruning
        out.append(dict(family=fam, name=name, vid=r.get("vid"),
                        target=r["target_ratio"], label_bytes=r["label_bytes"], kl=r["kl_t"], kl_t1=r["kl_t1"],
                        agree=r.get("agree"), rows_kept=r.get("rows_kept"), top1_mean=r["top1_mean"],
                        top1_std=r["top1_std"], seeds=r["seeds"], note=r["note"] or "",
                        keep_epochs=r.get("keep_epochs"), inner_ratio=r.get("inner_ratio"),
                        probe_kl_t1=r.get("probe_kl_t1")))
    for r in out:
        r.update(rows=rows_n, C=c)
    return out


def _pct(m: Optional[float], s: Optional[float]) -> str:
    """'mean ± std' in percent from a mean and a standard deviation (fractions); '' without a mean."""
    if m is None:
        return ""
    return f"{100 * m:.2f} ± {100 * s:.2f}" if s is not None else f"{100 * m:.2f}"


def _fmt(v: Optional[float], spec: str) -> str:
    return "" if v is None else format(v, spec)


def _storage_table(j: Dict[str, Any]) -> List[str]:
    T = j["temperature"]
    out = [f"| target | variant | family | label bytes | B/row | ratio | in budget | KL(T=1) | KL(T={T:g}) | top-1 agree "
           "| student top-1 (%) | note |",
           "|---:|---|---|---:|---:|---:|:-:|---:|---:|---:|---:|---|"]
    for r in sorted(_table_rows(j), key=_row_sort_key):
        if r.get("label_bytes") is None:
            note = r["note"] or ""
            top = _pct(r["top1_mean"], r["top1_std"]) or ("n/a" if note.startswith(("n/a", "error")) else
                                                          NOT_RUN if note == NOT_RUN else "not run")
            out.append(f"| {r['target']:g}x | {r['name']} | {r['family']} | | | | | | | | {top} | {note[:110]} |")
            continue
        ratio = r["rows"] * 2 * r["C"] / r["label_bytes"] if r["label_bytes"] else float("inf")
        kept = None if r.get("rows_kept") is None else r["rows_kept"] / r["rows"]
        note = r.get("note") or ("" if kept in (None, 1) else f"keeps {100 * kept:.1f}% of rows; KL/agree over kept rows")
        if r["family"] == "library" and r.get("keep_epochs") is not None:
            note = (f"allocation: {r['keep_epochs']} of {j['label_epochs']} epochs"
                    + (f" at {r['inner_ratio']:.3g}x" if r.get("inner_ratio") else "")
                    + (f", probe KL(T=1) {r['probe_kl_t1']:.3g}" if r.get("probe_kl_t1") is not None else "")
                    + ("; " + note if note else ""))
        agree = "" if r.get("agree") is None else f"{100 * r['agree']:.1f}%"
        out.append(f"| {r['target']:g}x | {r['name']} | {r['family']} | {r['label_bytes']:,} | "
                   f"{r['label_bytes'] / r['rows']:.3f} | {ratio:.2f}x | {_yes(meets_budget(r))} | "
                   f"{_fmt(r.get('kl_t1'), '.3g')} | {_fmt(r.get('kl'), '.3g')} | {agree} | "
                   f"{_pct(r['top1_mean'], r['top1_std']) or NOT_RUN} | {note} |")
    return out


def _best(rows: List[Dict[str, Any]], fam: str, t: float) -> Optional[Dict[str, Any]]:
    cand = [r for r in rows if r["family"] == fam and float(r["target"]) == t and r.get("top1_mean") is not None]
    return max(cand, key=lambda r: r["top1_mean"]) if cand else None


def compare(a: Dict[str, Any], b: Dict[str, Any], alpha: float = 0.05) -> str:
    """How row ``a`` stands against row ``b`` by student top-1: Welch's t-test
    (``scipy.stats.ttest_ind_from_stats(..., equal_var=False)``) on their means, standard deviations and
    seed counts.  'ahead' / 'behind' when p < ``alpha``, 'within noise' otherwise, each with p; 'one seed'
    when either row has fewer than two seeds (no variance to test against)."""
    from scipy.stats import ttest_ind_from_stats

    na, nb = a.get("seeds") or 1, b.get("seeds") or 1
    if na < 2 or nb < 2 or a.get("top1_std") is None or b.get("top1_std") is None:
        return "one seed"
    if a["top1_std"] == 0 and b["top1_std"] == 0:
        return "equal" if a["top1_mean"] == b["top1_mean"] else ("ahead" if a["top1_mean"] > b["top1_mean"] else "behind")
    p = float(ttest_ind_from_stats(a["top1_mean"], a["top1_std"], na, b["top1_mean"], b["top1_std"], nb,
                                   equal_var=False).pvalue)
    if p >= alpha:
        return f"within noise (p = {p:.2f})"
    shown = f"{p:.3f}"
    if float(shown) >= alpha:   # a p just below alpha keeps the digit that shows it is below
        shown = f"{p:.4f}"
    return f"{'ahead' if a['top1_mean'] > b['top1_mean'] else 'behind'} ({'p < 0.001' if p < 0.001 else f'p = {shown}'})"


def best_by_target(j: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per target ratio (ascending): ``{"target", "best": {family: row or None}, "ours", "peer"}`` where
    ``ours`` is the best of ours / the library default / ours+pool and ``peer`` the best of LPLD / LPQLD /
    MR-k / FKD (rows of :func:`_table_rows`, by mean student top-1)."""
    rows = [r for r in _table_rows(j) if r["family"] not in ("raw", "fp16+zstd")]
    out = []
    for t in sorted({float(r["target"]) for r in rows}):
        best = {f: _best(rows, f, t) for f in BEST_FAMILIES}
        mine = [best[f] for f in BEST_FAMILIES if f in OURS_FAMILIES and best[f]]
        peers = [best[f] for f in BEST_FAMILIES if f not in OURS_FAMILIES and best[f]]
        out.append(dict(target=t, best=best, ours=max(mine, key=lambda r: r["top1_mean"]) if mine else None,
                        peer=max(peers, key=lambda r: r["top1_mean"]) if peers else None))
    return out


def _best_table(j: Dict[str, Any]) -> List[str]:
    """Per target ratio: the best of each family (by mean student top-1), our margins and Welch's test."""
    raw_m = j["reference"]["top1_mean"]
    present = {r["family"] for r in _table_rows(j)}
    fams = [f for f in BEST_FAMILIES if f in present]
    out = ["| target | " + " | ".join(f"best {f}" for f in fams)
           + " | best ours - raw (pt) | best ours - best peer (pt) | best ours vs best peer (Welch) |",
           "|---:|" + "---|" * len(fams) + "---:|---:|---|"]
    for b in best_by_target(j):
        cells = [f"{r['name']}: {_pct(r['top1_mean'], r['top1_std'])}" if r else "n/a" for r in (b["best"][f] for f in fams)]
        o, p = b["ours"], b["peer"]
        d_raw = f"{100 * (o['top1_mean'] - raw_m):+.2f}" if o and raw_m is not None else "n/a"
        d_peer = f"{100 * (o['top1_mean'] - p['top1_mean']):+.2f}" if o and p else "n/a"
        test = compare(o, p) if o and p else "n/a"
        out.append(f"| {b['target']:g}x | " + " | ".join(cells) + f" | {d_raw} | {d_peer} | {test} |")
    return out


def _json(rows: List[Dict[str, Any]], info: Dict[str, Any], name: str) -> Dict[str, Any]:
    cfg, ref = info["config"], info["reference"]
    hard = next((r for r in rows if r["experiment"] == "hard"), None)
    out_rows = []
    for r in rows:
        if r["experiment"] != "storage" or r["family"] == "raw":
            continue
        t = r.get("top1") or []
        out_rows.append(dict(
            family=JSON_FAMILY.get(r["family"], r["family"]), variant=r["name"], vid=r.get("vid"),
            target_ratio=float(r["target"]),
            achieved_ratio=(r["rows"] * 2 * r["C"] / r["label_bytes"]) if r.get("label_bytes") else None,
            label_bytes=r.get("label_bytes"), kl_t1=r.get("kl_t1"), kl_t=r.get("kl"), agree=r.get("agree"),
            rows_kept=r.get("rows_kept"), keep_epochs=r.get("keep_epochs"), inner_ratio=r.get("inner_ratio"),
            probe_kl_t1=r.get("probe_kl_t1"),
            top1_mean=statistics.fmean(t) if t else None, top1_std=statistics.stdev(t) if len(t) > 1 else None,
            seeds=len(t), note=r.get("note") or None))
    raw = next((r for r in rows if r["experiment"] == "storage" and r["family"] == "raw"), {})
    t = ref["top1"]
    dbl = ref.get("doubled")
    if dbl:
        dbl = dict(epochs=dbl["epochs"], top1=dbl["top1"], gain=dbl["top1"] - t[0],
                   converged=dbl["top1"] - t[0] < CONVERGED_GAIN, curve=dbl["curve"])
    gain = dbl["gain"] if dbl else None
    return dict(preset=name, dataset=cfg["data"], test=cfg["test"], num_classes=info["classes"],
                ipc=cfg["sweep_ipc"], images=info["sweep_images"], label_epochs=info["label_epochs"],
                teacher_top1=info["teacher_top1"], temperature=cfg["T"],
                reference=dict(top1_mean=statistics.fmean(t), top1_std=statistics.stdev(t) if len(t) > 1 else None,
                               seeds=len(t), doubling_gain=gain,
                               converged=None if gain is None else gain < CONVERGED_GAIN,
                               last_quarter_gain=_last_quarter_gain(ref["curve"]), curve=ref["curve"],
                               doubled_schedule=dbl, label_bytes=raw.get("label_bytes"), kl_t1=raw.get("kl_t1"),
                               kl_t=raw.get("kl"), agree=raw.get("agree")),
                hard_label_top1=statistics.fmean(hard["top1"]) if hard and hard.get("top1") else None,
                selection=[selection_entry(r) for r in rows if r["experiment"] == "selection"],
                rows=out_rows, seconds=info.get("seconds"), config=cfg,
                batches_per_epoch=info.get("batches_per_epoch"), provenance=info.get("provenance"))


def render_console(j: Dict[str, Any]) -> str:
    """The short results table printed at the end of a run (``<name>.txt``), from the result JSON."""
    ref = j["reference"]
    g = doubling_gain(ref)
    conv = ("convergence not measured (no doubled-schedule run)" if g is None else
            f"{'converged' if g < CONVERGED_GAIN else 'NOT converged'} by the doubling test: {100 * g:+.2f} pt")
    lines = [f"== {j['preset']}: {j['num_classes']} classes, IPC {j['ipc']}, K = {j['label_epochs']}, "
             f"teacher {100 * j['teacher_top1']:.2f}% ==",
             f"raw fp16 labels {100 * ref['top1_mean']:.2f}% ({conv}; curve "
             + ", ".join(f"{int(100 * f)}%: {100 * a:.1f}" for f, a in ref["curve"]) + ")"]
    if ref.get("doubled_schedule"):
        d = ref["doubled_schedule"]
        lines.append(f"twice the schedule ({d['epochs']} epochs, seed 0): {100 * d['top1']:.2f}% "
                     f"({100 * d['gain']:+.2f} pt: {'long enough' if d['gain'] < CONVERGED_GAIN else 'NOT long enough'})")
    if j["hard_label_top1"] is not None:
        lines.append(f"hard labels     {100 * j['hard_label_top1']:.2f}%")
    lines.append(f"{'target':>7} {'family':<10} {'variant':<34} {'ratio':>8} {'KL(T=1)':>9} {'top-1 %':>8}")
    for r in sorted(j["rows"], key=lambda r: (r["target_ratio"], r["family"])):
        if r["top1_mean"] is None:
            continue
        ratio = "-" if r["achieved_ratio"] is None else f"{r['achieved_ratio']:.1f}x"
        kl = "-" if r["kl_t1"] is None else f"{r['kl_t1']:.4f}"   # a row reported from cached students only
        lines.append(f"{r['target_ratio']:>6g}x {r['family']:<10} {r['variant'][:34]:<34} "
                     f"{ratio:>8} {kl:>9} {100 * r['top1_mean']:>8.2f}")
    if j.get("seconds") is not None:
        lines.append(f"({j['seconds'] / 60:.1f} min)")
    return "\n".join(lines) + "\n"


def _doubled_line(ref: Dict[str, Any]) -> List[str]:
    d = ref.get("doubled_schedule")
    if not d:
        return []
    verdict = ("the schedule is long enough by this test" if d["gain"] < CONVERGED_GAIN else
               "**the schedule is too short**: longer training would change the table")
    return [f"- Twice the schedule ({d['epochs']} epochs, each stored view twice; seed 0): {100 * d['top1']:.2f}%, "
            f"{100 * d['gain']:+.2f} point against seed 0 of the reference: {verdict} (the curve's last quarter "
            "is where the cosine schedule anneals, so it gains even at convergence)."]


def default_command(name: str) -> str:
    """The command that runs preset ``name``."""
    return f"python -m benchmarks.storage_vs_accuracy --preset {name}"


def provenance(command: str, threads: int) -> Dict[str, str]:
    """Where and when a run ran: ``{"hardware", "date" (UTC, YYYY-MM-DD), "command", "torch"}``."""
    import datetime
    import os as _os

    import torch

    from benchmarks.shared import cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return dict(hardware=f"{cpu_name()} ({_os.cpu_count()} logical CPUs, {threads} torch thread{'s' if threads != 1 else ''}), {gpu}",
                date=datetime.datetime.now(datetime.timezone.utc).date().isoformat(), command=command,
                torch=torch.__version__)


def render_markdown(j: Dict[str, Any]) -> str:
    """The full report of one run (``<name>.md``) from its result JSON (a function of the JSON alone)."""
    cfg, name = j["config"], j["preset"]
    prov = j.get("provenance") or {}
    ref = j["reference"]
    g = doubling_gain(ref)
    conv = ("convergence **not measured** (no run at twice the schedule; the curve's last quarter is where the "
            "cosine schedule anneals, so it is no test)" if g is None else
            f"converged by the doubling test (twice the schedule: {100 * g:+.2f} point, under 0.5)"
            if g < CONVERGED_GAIN else
            f"**NOT converged** by the doubling test (twice the schedule: {100 * g:+.2f} point, 0.5 or more), so the "
            "table measures how fast each variant is fitted as much as how good its labels are")
    hard_txt = "not run" if j["hard_label_top1"] is None else f"{100 * j['hard_label_top1']:.2f}%"
    teacher = (f"ConvNet width {cfg['teacher_width']} depth {cfg['teacher_depth']} ({cfg['teacher_norm']} norm)"
               if cfg.get("teacher_arch") == "convnet" else f"ResNet width {cfg['teacher_width']}")
    info = dict(label_epochs=j["label_epochs"])
    bpe = j.get("batches_per_epoch")
    md = [f"# Storage versus accuracy: preset `{name}`", "",
          f"<!-- generated from {name}.json by python -m benchmarks.render; do not edit -->", "",
          f"Command: `{prov.get('command') or default_command(name)}`"
          + (f" ({j['seconds'] / 60:.1f} min)" if j.get("seconds") and not prov.get("runs") else "")
          + (f" as {prov['runs']} resumable runs ({prov['minutes']:.0f} min in all)" if prov.get("runs") else ""), ""]
    if prov.get("hardware") or prov.get("date"):
        md += [f"Run on {prov.get('hardware', 'unrecorded hardware')}"
               + (f", torch {prov['torch']}" if prov.get("torch") else "")
               + (f"; date {prov['date']}" if prov.get("date") else "") + ".", ""]
    if prov.get("note"):   # what a reader must know that the command does not say (an archived result)
        md += [f"**Note.** {prov['note']}", ""]
    md += [f"Data `{cfg['data']}` ({j['num_classes']} classes), test `{cfg['test']}`; teacher {teacher}, test top-1 "
           f"**{100 * j['teacher_top1']:.2f}%**. Relabel: K = {j['label_epochs']} epochs of RandomResizedCrop "
           f"(scale {cfg['crop_scale'][0]:g}-1) + flip + CutMix, batch {cfg['batch_size']}"
           + (f" ({bpe} batches per epoch)" if bpe else "") + ". "
           f"Student: ConvNet width {cfg['student_width']} depth {cfg['student_depth']} "
           f"({cfg.get('student_norm', 'instance')} norm), KL at T = {cfg['T']:g}, AdamW lr {cfg['lr']:g} wd {cfg['wd']:g}, "
           f"cosine, {_schedule(cfg, info)}; top-1 in % (mean ± std over seeds where several ran).", "",
           "## Reference and calibration", "",
           f"- Raw fp16 labels: {_pct(ref['top1_mean'], ref['top1_std'])}% over {ref['seeds']} seed(s); {conv}. "
           "Curve (share of the schedule: top-1): "
           + ", ".join(f"{int(100 * f)}%: {100 * a:.2f}" for f, a in ref["curve"]) + ".",
           *_doubled_line(ref),
           f"- Hard labels on the same views: {hard_txt}; teacher {100 * j['teacher_top1']:.2f}%.", "",
           ]
    if any(float(r.get("target_ratio", 1)) != 1 for r in j["selection"]):
        md += ["## Selection x compression", "",
               "Each selection relabelled with the same teacher and augmentation; labels raw, or the library's default "
               "encode (automatic allocation) at the ratio. Comparisons: Welch's t-test over the seeds (p < 0.05).", ""]
        md += selection_table(j["selection"])
    else:
        md += ["## Selection (uncompressed labels)", "",
               "| method | IPC | images | K | student top-1 (%) |", "|---|---:|---:|---:|---:|"]
        md += [f"| {r['method']} | {r['ipc']} | {r.get('images') or ''} | {r.get('K', '')} | "
               f"{mean_std(r['top1']) or NOT_RUN} |" for r in j["selection"]]
    row_b = 2 * j["num_classes"]
    md += ["", f"## Label storage at matched budgets ({cfg['sweep_method']} selection, IPC {cfg['sweep_ipc']}, "
               f"{j['images']} images x {j['label_epochs']} rows)", "",
           f"A raw fp16 row is {row_b} bytes ({j['num_classes']} classes); the budget at target X is {row_b}/X bytes "
           f"per row. Bytes are label bytes only (augmentation metadata is the same for every variant). KL is the "
           f"mean KL(teacher || stored target) in nats over stored rows (MR-k targets are zero outside the top k, "
           f"so their KL is dominated by the 1e-30 floor).", ""]
    md += _storage_table(j)
    md += ["", "## Best of each family per budget (student top-1 %)", "",
           "Welch's t-test (unequal variances) on the seeds of the best ours and the best peer row; "
           "'within noise' when p >= 0.05.", ""] + _best_table(j) + [""]
    return "\n".join(md)


def write_report(rows: List[Dict[str, Any]], info: Dict[str, Any], out_dir: str, name: str) -> Dict[str, str]:
    """Write ``<name>.json`` (the result), ``.md`` and ``.txt`` (rendered from the JSON alone, as
    ``python -m benchmarks.render`` does), ``.csv`` (every row with its per-seed top-1) and ``.png``;
    returns their paths (``console`` is the ``.txt``)."""
    os.makedirs(out_dir, exist_ok=True)
    j = _json(rows, info, name)
    sto = [r for r in rows if r["experiment"] == "storage"]
    paths = {k: os.path.join(out_dir, f"{name}.{k}") for k in ("md", "csv", "json")}
    paths["console"] = os.path.join(out_dir, f"{name}.txt")
    with open(paths["json"], "w") as f:
        json.dump(j, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(render_markdown(j))
    with open(paths["console"], "w") as f:
        f.write(render_console(j))
    keys = ["experiment", "method", "ipc", "images", "vid", "family", "name", "target", "rows", "C", "label_bytes",
            "bytes_per_row", "ratio", "meets_budget", "kl_t1", "kl", "agree", "top1_mean", "top1_std", "top1_seeds", "note"]
    with open(paths["csv"], "w", newline="") as f:
        w = csv.DictWriter(f, keys, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            d = dict(r)
            t = r.get("top1") or []
            d.update(top1_mean=statistics.fmean(t) if t else "", top1_std=statistics.stdev(t) if len(t) > 1 else "",
                     top1_seeds=";".join(f"{v:.4f}" for v in t))
            if r.get("label_bytes"):
                d.update(bytes_per_row=r["label_bytes"] / r["rows"], ratio=r["rows"] * 2 * r["C"] / r["label_bytes"],
                         meets_budget=meets_budget(r))
            w.writerow(d)
    png = _plot(sto, os.path.join(out_dir, f"{name}.png"), name, j["reference"]["top1_mean"], j["hard_label_top1"])
    if png:
        paths["png"] = png
    log.info("wrote %s", ", ".join(paths.values()))
    return paths


def _plot(rows: List[Dict[str, Any]], path: str, name: str, raw_m, hard_m) -> Optional[str]:
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
    for v, lab, ls in ((raw_m, "raw fp16", "--"), (hard_m, "hard labels", ":")):
        if v is not None:
            ax.axhline(100 * v, ls=ls, color="gray", lw=1, label=lab)
    ax.set_xscale("log")
    ax.set_xlabel("label bytes (log scale)")
    ax.set_ylabel("student test top-1 (%)")
    ax.set_title(f"storage vs accuracy ({name})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
