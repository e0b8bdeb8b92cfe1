"""Storage versus accuracy on real data: selection, relabelling, label codecs vs peers, students.

    python -m benchmarks.storage_vs_accuracy --preset glyphs-quick    # the README's main command
    python -m benchmarks.storage_vs_accuracy --preset glyphs-1k       # 1000 classes, one codec
    python -m benchmarks.storage_vs_accuracy --preset glyphs-full     # 1000 classes, every row, 3 seeds
    python -m benchmarks.storage_vs_accuracy --preset glyphs-full --targets 100 --time-limit 90   # a resumable run
    python -m benchmarks.storage_vs_accuracy --preset full            # Fashion-MNIST, 10 classes
    python -m benchmarks.storage_vs_accuracy --preset full --data /path/to/imagefolder --test /path/to/val \
        --image-size 64 --name mine                                    # any ImageFolder, any class count

Steps (each cached under ``benchmarks/cache/<name>/`` and skipped when its output exists):
1. images (any image source: ``cjk-glyphs`` from Debian's CJK fonts, Fashion-MNIST, an ImageFolder);
2. teacher (``score_codec.training.student.train_teacher``; test top-1 logged);
3. selection (SCORE, random, herding, RDED-style) at each IPC from a seeded candidate pool;
4. relabel (``score_codec.relabel``): K epochs of crop + flip + CutMix views, written as an SRe2L dump
   (the uncompressed reference) and a store holding the augmentation metadata;
5. label variants at matched budgets (ours via ``ratio=X`` rate control; peers from
   :mod:`benchmarks.storage_vs_accuracy.peers`);
6. students (ConvNet, KL at T, AdamW, cosine; identical seeds, views and batch order for every variant),
   the reference's test top-1 curve (convergence), a hard-label student on the same views.
Runs write ``benchmarks/runs/<name>.{md,csv,png,json,txt}`` (untracked) and print the results table;
``--commit-results`` writes ``benchmarks/storage_vs_accuracy/results/`` instead (the committed results, which
``python -m benchmarks.render`` turns into the docs' results page and the README's table).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from benchmarks.shared import CACHE_DIR, RUNS_DIR
from benchmarks.storage_vs_accuracy.label_sources import HardLabelSource, LogitSource
from benchmarks.storage_vs_accuracy.pipeline import Pipeline, read_sre2l
from benchmarks.storage_vs_accuracy.presets import PRESETS, Config
from benchmarks.storage_vs_accuracy.report import FAMILY_ORDER, NOT_RUN, default_command, provenance
from benchmarks.storage_vs_accuracy.students import load_views
from benchmarks.storage_vs_accuracy.variant_metrics import MetricsCache

__all__ = ["Config", "PRESETS", "Pipeline", "run", "main", "read_sre2l", "RESULTS_DIR", "ARTIFACTS_DIR"]

log = logging.getLogger("benchmarks.storage_vs_accuracy")
HERE = os.path.dirname(os.path.abspath(__file__))
#: the committed results (``--commit-results``)
RESULTS_DIR = os.path.join(HERE, "results")
#: committed teachers, selections and finished students of the long presets (see ``artifact_cache``)
ARTIFACTS_DIR = os.path.join(HERE, "artifacts")


#: families whose rows are the library's own (they get their extra seeds before the peers')
OURS_FAMILIES = ("library", "ours", "ours+pool")


def _best_rows(rows: List[Dict[str, Any]], cfg: Config) -> List[Dict[str, Any]]:
    """Per target, the best storage row (first seed) of each family: these get every seed.  Order (the
    order of a seed round, so a time limit cuts the least needed students): target by target, our rows,
    then the peers from the best first seed down (the best peer is the comparison every claim needs)."""
    best: Dict[Tuple[str, float], Dict[str, Any]] = {}
    for r in rows:
        if r["experiment"] != "storage" or not r.get("top1") or r["family"] in ("raw", "fp16+zstd"):
            continue
        if (cfg.best_seed_families is not None and r["family"] not in cfg.best_seed_families) or \
                (cfg.best_seed_targets is not None and float(r["target"]) not in cfg.best_seed_targets):
            continue
        key = (r["family"], float(r["target"]))
        if key not in best or r["top1"][0] > best[key]["top1"][0]:
            best[key] = r
    return sorted(best.values(), key=lambda r: (float(r["target"]), r["family"] not in OURS_FAMILIES,
                                                -float(r["top1"][0])))


def run(cfg: Config, cache_dir: Optional[str] = None, out_dir: Optional[str] = None,
        time_limit: Optional[float] = None, artifacts: Optional[str] = None,
        save_artifacts: bool = False, targets: Optional[Sequence[float]] = None,
        command: Optional[str] = None, families: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Run every step of ``cfg`` and write the report; returns the result rows (see :mod:`benchmarks.storage_vs_accuracy.report`).

    Order: the storage sweep (reference, its doubled-schedule check, hard labels, every variant's first seed),
    the extra seeds of the best rows, then the selection comparison.  ``time_limit`` (minutes from the start):
    no student but the reference's, and no relabel, starts after it; the report then holds what ran (rows
    without a student say "not run"), and a re-run resumes from the cache.  ``artifacts`` (default
    ``benchmarks/storage_vs_accuracy/artifacts/<cache>``) seeds an empty cache
    (:mod:`benchmarks.storage_vs_accuracy.artifact_cache`); ``save_artifacts``
    writes it after every student and at the end.  ``targets``: build and train only the variants at these
    target ratios (and the reference); the others are reported from the cache, so a long preset can be run
    as several resumable runs that each finish some targets; ``families`` likewise for the storage variants'
    families.  ``command``: the command line recorded in the
    result's provenance (default: the preset's plain command)."""
    from benchmarks.storage_vs_accuracy.artifact_cache import ENCODE_INFO, selection_name, variants_dir
    from benchmarks.storage_vs_accuracy.peers import (library_allocation, library_default, library_store_name,
                                                      library_vid, storage_variants)
    from benchmarks.storage_vs_accuracy.report import write_report

    t_start = time.time()
    torch.set_num_threads(cfg.threads)
    cache_dir = cache_dir or os.path.join(CACHE_DIR, cfg.cache or cfg.name)
    out_dir = out_dir or RUNS_DIR
    artifacts = artifacts or os.path.join(ARTIFACTS_DIR, cfg.cache or cfg.name)
    pipe = Pipeline(cfg, cache_dir, None if time_limit is None else t_start + 60 * time_limit, artifacts)
    if save_artifacts:   # every finished student reaches the committed folder at once: a lost machine loses none
        from benchmarks.storage_vs_accuracy.artifact_cache import save_artifacts as save

        pipe.after_student = lambda: save(cache_dir, artifacts, pipe.hashes)
    teacher = pipe.teacher()
    sels = pipe.selections(teacher)
    first = cfg.seeds[:1] if cfg.extra_seeds_for_best else cfg.seeds
    rows: List[Dict[str, Any]] = []
    key = selection_name(cfg.sweep_method, cfg.sweep_ipc)
    sweep_idx = sels[(cfg.sweep_method, cfg.sweep_ipc)]
    store, Y, table = pipe.relabel(teacher, key, sweep_idx, cfg.label_epochs)
    views = load_views(store, pipe.train, sweep_idx)
    classes = pipe.train.targets[sweep_idx]
    variants = storage_variants(cfg, Y, table, variants_dir(cache_dir, key), classes)
    ref_key = f"select|{cfg.sweep_method}|ipc{cfg.sweep_ipc}|K{cfg.label_epochs}"

    def storage_key(stored: str) -> str:   # the students' cache id of a storage variant
        return f"storage|{key}|K{cfg.label_epochs}|{stored}"

    reference = pipe.students(ref_key, LogitSource(Y), views, table, cfg.seeds, curve=True)
    sweep_row = dict(experiment="selection", method=cfg.sweep_method, ipc=cfg.sweep_ipc, images=len(sweep_idx),
                     K=cfg.label_epochs, target_ratio=1, top1=reference["top1"][:len(cfg.seeds) if cfg.select_all_seeds else 1])
    rows.append(sweep_row)
    if cfg.double_check:   # the curve's last quarter is the cosine's annealing: a twice-as-long run is the test
        epochs = 2 * (cfg.train_epochs or (math.ceil(cfg.train_steps / table.per_epoch) if cfg.train_steps else table.epochs))
        long_cfg = dataclasses.replace(cfg, train_epochs=epochs, train_steps=None)
        dbl = pipe.students(ref_key, LogitSource(Y), views, table, cfg.seeds[:1], curve=True, cfg=long_cfg)
        reference["doubled"] = dict(epochs=epochs, top1=dbl["top1"][0], curve=dbl["curve"])
    if cfg.hard_labels:
        hard = HardLabelSource(classes, table, pipe.C, int(views[0].shape[-1]))
        rows.append(dict(experiment="hard", name="hard labels", **pipe.students(f"hard|{key}|K{cfg.label_epochs}", hard,
                                                                               views, table, first, optional=True)))
    metrics = MetricsCache(os.path.join(variants_dir(cache_dir, key), "metrics.json"))
    for var in variants:
        row = dict(experiment="storage", vid=var.vid, family=var.family, name=var.name, target=var.ratio,
                   rows=int(Y.shape[0] * Y.shape[1]), C=pipe.C)
        same = var.same_as or var.vid
        stored = same if var.same_as else (getattr(var, "legacy", None) or var.vid)   # the students' cache id
        k = ref_key if same == "raw" else storage_key(stored)
        # a variant is built (encoded) only for what this run trains: its students when some are missing
        # and the time limit has not passed, and its metrics when not cached (past the limit only for a
        # variant whose students are finished: they complete its row)
        chosen = (targets is None or var.ratio in targets or same == "raw") and \
            (families is None or var.family in families or same == "raw")
        todo = same != "raw" and bool(pipe.missing(k, table, first))
        m = metrics.get(var.vid, getattr(var, "legacy", None), var.name)
        live = not (todo and pipe.past_deadline())
        if chosen and live and m is None:
            m = metrics.compute(var, Y, table, cfg.T)
        row.update(m or dict(note=NOT_RUN if chosen else "not in this run's --targets / --families (no cached metrics)"))
        if m is not None and m.get("label_bytes") is None:
            rows.append(row)   # n/a at this budget
            continue
        row["_job"] = (k, var, chosen)
        row["top1"] = reference["top1"] if same == "raw" else \
            pipe.students(k, lambda var=var: var.source, views, table, first, optional=True, train=chosen)["top1"]
        rows.append(row)
    def report() -> Dict[str, str]:
        clean = [{k: v for k, v in r.items() if k != "_job"} for r in rows]
        info = dict(config=dataclasses.asdict(cfg), teacher_top1=pipe.teacher_top1, classes=pipe.C,
                    label_epochs=int(Y.shape[1]), sweep_images=int(Y.shape[0]), batches_per_epoch=table.per_epoch,
                    reference=reference, seconds=round(time.time() - t_start, 1),
                    provenance=provenance(command or default_command(cfg.name), cfg.threads))
        return write_report(clean, info, out_dir, cfg.name)

    if pipe.elsewhere:   # first seeds other runs were training decide which rows are best: wait for them
        for r in rows:
            if "_job" in r and r["_job"][2] and len(r.get("top1") or []) < len(first):
                k = r["_job"][0]
                pipe.wait_for(k, table, first)
                r["top1"] = pipe.students(k, lambda: None, views, table, first, train=False)["top1"]
    if cfg.extra_seeds_for_best and len(cfg.seeds) > 1:
        report()   # every variant has its first seed: a complete (interim) table before the extra seeds
        best = _best_rows(rows, cfg)
        for i in range(1, len(cfg.seeds)):   # seed-major: a time limit leaves every best row with as many seeds
            for r in best:
                k, var, chosen = r["_job"]
                r["top1"] = pipe.students(k, lambda var=var: var.source, views, table, cfg.seeds[:i + 1],
                                          optional=True, train=chosen)["top1"]
        # the other rows report the extra seeds earlier runs trained (a row that was best by then)
        picked = {id(r) for r in best}
        for r in rows:
            if "_job" in r and id(r) not in picked and r["_job"][0] != ref_key:
                k, var, _ = r["_job"]
                r["top1"] = pipe.students(k, lambda: None, views, table, cfg.seeds, train=False)["top1"]   # never built
    del views
    # the selection comparison last: the storage rows (the preset's goal) come first when a run is cut short
    ks = cfg.select_label_epochs or cfg.label_epochs
    sel_seeds = cfg.seeds if cfg.select_all_seeds else first
    # --targets picks the selection rows too: raw labels are target 1
    trains = {x: targets is None or x in targets for x in (1, *cfg.select_ratios)}
    k_only = SimpleNamespace(epochs=ks)   # a student's cache key needs only K, not the relabel's batch table
    for (method, ipc), idx in sels.items():
        is_sweep = (method, ipc) == (cfg.sweep_method, cfg.sweep_ipc) and ks == cfg.label_epochs
        if is_sweep and not cfg.select_ratios:
            continue   # the sweep's reference row is this selection's result
        # the sweep's raw row is the reference's students (already in rows)
        row = sweep_row if is_sweep else dict(experiment="selection", method=method, ipc=ipc, images=len(idx), K=ks,
                                               target_ratio=1, top1=[])
        if not is_sweep:
            rows.append(row)
        compressed = [dict(row, target_ratio=x, top1=[]) for x in cfg.select_ratios]
        rows.extend(compressed)
        sel_key = f"select|{method}|ipc{ipc}|K{ks}"
        name = selection_name(method, ipc)   # the selection's relabel and variants folder
        if not compressed and not (trains[1] and pipe.missing(sel_key, k_only, sel_seeds)):
            # raw labels only and nothing to train: the cached students, without relabelling the selection
            row.update(pipe.students(sel_key, None, None, k_only, sel_seeds, train=False))
            continue
        stores = {x: os.path.join(variants_dir(cache_dir, name), library_store_name(x))
                  for x in cfg.select_ratios}
        infos = {x: p + ENCODE_INFO for x, p in stores.items()}
        if not is_sweep and not pipe.relabelled(name, ks) and \
                all(os.path.isfile(p) for p in infos.values()) and \
                not any(pipe.missing(k, k_only, sel_seeds) for k in
                        [sel_key] + [f"{sel_key}|{library_vid(x)}" for x in cfg.select_ratios]):
            # every student finished and every encode's allocation kept (e.g. seeded from the artifacts): the
            # rows come from the cache, without a relabel (a 1M-row one takes about 20 min on one core)
            row.update(pipe.students(sel_key, None, None, k_only, sel_seeds, train=False))
            for r in compressed:
                with open(infos[r["target_ratio"]]) as fh:
                    r.update(library_allocation(json.load(fh)))
                r.update(pipe.students(f"{sel_key}|{library_vid(r['target_ratio'])}", None, None, k_only, sel_seeds,
                                       train=False))
            continue
        if pipe.past_deadline() and not pipe.relabelled(name, ks):
            pipe.skipped += 1   # a 1M-row relabel is not started after the limit either
            continue
        store, Ys, sel_table = pipe.relabel(teacher, name, idx, ks)
        jobs = [] if is_sweep else [(row, sel_key, LogitSource(Ys), trains[1])]
        for r in compressed:   # the library's default encode of this selection's labels at each ratio
            x = r["target_ratio"]
            path = stores[x]
            os.makedirs(os.path.dirname(path), exist_ok=True)
            var = library_default(x, Ys, pipe.train.targets[idx].tolist(), path)   # seconds; cached on disk
            r.update(var.extra)
            if var.source is None:
                r["note"] = var.note   # the budget cannot hold this selection's labels: no student
                continue
            # the sweep's selection at x is the storage table's library row: the same store (same path) and
            # schedule, so the same students
            k = storage_key(var.vid) if is_sweep else f"{sel_key}|{var.vid}"
            jobs.append((r, k, var.source, trains[x]))
        # replaying 1M views takes minutes: only when a student will train
        need = any(c and pipe.missing(k, sel_table, sel_seeds) for _, k, _, c in jobs)
        sel_views = load_views(store, pipe.train, idx) if need else None
        for r, k, src, c in jobs:
            r.update(pipe.students(k, src, sel_views, sel_table, sel_seeds, optional=True, train=c))
        del sel_views, Ys
    if pipe.elsewhere:
        log.warning("%d students were training in another run sharing the cache: a re-run reports them",
                    pipe.elsewhere)
    if pipe.skipped:
        log.warning("time limit reached: %d students not run (a re-run resumes from the cache)", pipe.skipped)
    paths = report()
    if save_artifacts:
        save(cache_dir, artifacts, pipe.hashes)
    for r in rows:
        r.pop("_job", None)
    print(open(paths["console"]).read())
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage_vs_accuracy", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="glyphs-quick", help="configuration")
    p.add_argument("--data", help="training images: any image source spec or an ImageFolder path")
    p.add_argument("--test", help="test images: any image source spec or an ImageFolder path")
    p.add_argument("--image-size", type=int, help="resize whole images to this square side")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--quant", choices=["fp16", "bf16", "int8"], help="factor quantisation of our codecs")
    p.add_argument("--steps", type=int, help="optimiser steps per student (the preset's train_steps)")
    p.add_argument("--epochs", type=int, help="training epochs per student (the preset's train_epochs; label epoch e mod K)")
    p.add_argument("--seeds", type=int, help="number of student seeds")
    p.add_argument("--name", help="output name (default: the preset's; set it when changing data)")
    p.add_argument("--cache-dir", help="step cache (default benchmarks/cache/<name>)")
    p.add_argument("--out-dir", help="results folder (default benchmarks/runs, untracked)")
    p.add_argument("--double-check", action="store_true",
                   help="also train the reference's first seed at twice the schedule (the convergence test)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="start no student (but the reference's) and no relabel after this many minutes; the report holds "
                        "what ran and a re-run resumes from the cache")
    p.add_argument("--save-artifacts", action="store_true",
                   help="write the teacher, selections and finished students to benchmarks/storage_vs_accuracy/artifacts/<cache> "
                        "(committed, so another machine resumes the preset)")
    p.add_argument("--targets", type=float, nargs="+", metavar="X",
                   help="build and train only the variants at these target ratios (and the reference) in this run, and "
                        "the selection rows at these ratios (1: raw labels); the others are reported from the cache")
    p.add_argument("--families", nargs="+", metavar="FAMILY",
                   help="build and train only the storage variants of these families (e.g. 'library' after a change "
                        "to the library default); the others are reported from the cache")
    p.add_argument("--select-methods", nargs="+", metavar="METHOD",
                   help="selections to run (the preset's select_methods; e.g. only 'score' to leave the selection "
                        "comparison, and its feature pass, to a later run)")
    p.add_argument("--ipcs", type=int, nargs="+", metavar="IPC",
                   help="images per class of the selections (the preset's ipcs; the storage sweep moves to the first "
                        "when the preset's sweep_ipc is not among them)")
    p.add_argument("--commit-results", action="store_true", help="write to benchmarks/storage_vs_accuracy/results (the committed results)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    over = {k: v for k, v in dict(data=a.data, test=a.test, image_size=a.image_size, threads=a.threads,
                                  name=a.name, quant=a.quant, train_steps=a.steps, train_epochs=a.epochs).items()
            if v is not None}
    if a.double_check:
        over["double_check"] = True
    if a.seeds:
        over["seeds"] = tuple(range(a.seeds))
    if a.select_methods:
        over["select_methods"] = tuple(a.select_methods)
    if a.ipcs:
        over["ipcs"] = tuple(a.ipcs)
        if PRESETS[a.preset].sweep_ipc not in a.ipcs:
            over["sweep_ipc"] = a.ipcs[0]
    cfg = dataclasses.replace(PRESETS[a.preset], **over)
    known = {*cfg.ratios, *((1, *cfg.select_ratios) if cfg.select_ratios else ())}
    if a.targets and not set(a.targets) <= known:
        p.error(f"--targets {' '.join(f'{x:g}' for x in a.targets)}: the preset's target ratios are "
                f"{' '.join(f'{x:g}' for x in sorted(known))}")
    if cfg.sweep_method not in cfg.select_methods:
        p.error(f"--select-methods must include {cfg.sweep_method!r}, the selection the storage sweep runs on")
    known_families = set(FAMILY_ORDER) - {"raw", "fp16+zstd"}
    if a.families and not set(a.families) <= known_families:
        p.error(f"--families {' '.join(a.families)}: the storage variants' families are "
                f"{' '.join(sorted(known_families))}")
    out = a.out_dir or (RESULTS_DIR if a.commit_results else None)
    argv = sys.argv[1:] if argv is None else list(argv)
    run(cfg, a.cache_dir, out, a.time_limit, save_artifacts=a.save_artifacts, targets=a.targets, families=a.families,
        command=" ".join(["python -m benchmarks.storage_vs_accuracy", *map(shlex.quote, argv)]))
    return 0

