"""Throughput of the label path, the encoders and the selectors, as ratios measured in one run.

    python -m benchmarks.label_path.throughput --preset quick   # reuses benchmarks/cache/quick/ (or builds it)

* Student-training data path, images/s over one pass of every stored epoch (views + labels):
  - ``sre2l``: labels from the raw SRe2L dump, one ``torch.load`` of ``epoch_e/batch_b.tar`` per step (what
    SRe2L's patched fetcher does), views replayed by the dataset;
  - ``store-workers``: ``CompressedSoftLabelDataset`` + ``ReplayBatchSampler`` in a DataLoader with CPU workers;
  - ``store-decoder``: views from the dataset (``decode_labels=False``) and labels from ``LabelDecoder``
    (one batched decode per step, CPU here; CUDA on a GPU machine).
  Also the label fetch alone (no views), where the codecs differ most.
* Encode: matrices/s per method at the sweep's 10x budget (rank 1 where 10x is out of reach).
* Selection: seconds per method on the preset's candidate pool.
Writes ``benchmarks/label_path/results/throughput_<preset>.md`` and prints it.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from benchmarks.shared import CACHE_DIR, replay_epochs
from benchmarks.storage_vs_accuracy.artifact_cache import selection_name
from benchmarks.storage_vs_accuracy.pipeline import Pipeline
from benchmarks.storage_vs_accuracy.presets import PRESETS

__all__ = ["measure", "main"]

log = logging.getLogger("throughput")


def _timed(fn: Callable[[], int], repeat: int = 1) -> float:
    """Items per second of ``fn`` (which returns the number of items it processed); best of ``repeat``."""
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / max(time.perf_counter() - t, 1e-9))
    return best


def measure(preset: str = "quick", workers: int = 2, epochs: int = 0) -> List[str]:
    """Run every measurement on ``preset``'s cached sweep dump; returns the markdown lines."""
    import score_codec
    import score_select

    from score_codec.training.images import TensorImages
    from score_codec.training.dataset import CompressedSoftLabelDataset, LabelDecoder

    cfg = PRESETS[preset]
    torch.set_num_threads(cfg.threads)
    pipe = Pipeline(cfg, os.path.join(CACHE_DIR, cfg.name))
    teacher = pipe.teacher()
    t = time.perf_counter()
    sels = pipe.selections(teacher)
    idx = sels[(cfg.sweep_method, cfg.sweep_ipc)]
    store, Y, table = pipe.relabel(teacher, selection_name(cfg.sweep_method, cfg.sweep_ipc), idx, cfg.label_epochs)
    raw_dir = os.path.join(os.path.dirname(store), "sre2l")
    images = TensorImages(pipe.train.images[idx], np.asarray(pipe.train.targets)[idx], pipe.train.classes)
    enc_dir = os.path.join(CACHE_DIR, cfg.name, "throughput")
    comp = os.path.join(enc_dir, "svd_x10")
    os.makedirs(enc_dir, exist_ok=True)
    if not os.path.isfile(os.path.join(comp, "manifest.json")):
        kw = dict(meta=score_codec.LabelStore(store).aug, labels=images.targets.tolist(), overwrite=True)
        try:
            score_codec.encode(Y, comp, method="svd", ratio=10, **kw)
        except score_codec.errors.BudgetError:
            score_codec.encode(Y, comp, method="svd", rank=1, **kw)
    E = min(epochs, table.epochs) if epochs > 0 else table.epochs

    def sre2l(views: bool) -> int:
        ds = CompressedSoftLabelDataset(images, store, decode_labels=False)
        n = 0
        for e in range(E):
            ds.set_epoch(e)
            for b in range(table.per_epoch):
                logits = torch.load(os.path.join(raw_dir, f"epoch_{e}", f"batch_{b}.tar"), weights_only=False)[5]
                ids = table.images(e, b)
                if views:
                    ds.views(ids)
                n += len(logits)
        return n

    def workers_path(path: str) -> Callable[[], int]:
        def run() -> int:
            return replay_epochs(CompressedSoftLabelDataset(images, path), path, E, workers)
        return run

    def decoder_path(path: str, views: bool) -> Callable[[], int]:
        def run() -> int:
            ds = CompressedSoftLabelDataset(images, path, decode_labels=False)
            dec = LabelDecoder(path, device="cpu")
            n = 0
            for e in range(E):
                ds.set_epoch(e)
                for b in range(table.per_epoch):
                    ids = table.images(e, b)
                    if views:
                        ds.views(ids)
                    n += len(dec(ids, e))
            return n
        return run

    rates: Dict[str, float] = {}
    # best of 2: the first pass also pays one-off costs (opening files, building the decoder's factors)
    rates["sre2l dump (torch.load per batch) + views"] = _timed(lambda: sre2l(True), 2)
    rates[f"store, DataLoader {workers} workers (views + labels)"] = _timed(workers_path(comp), 2)
    rates["store, batched decoder (views + labels)"] = _timed(decoder_path(comp, True), 2)
    rates["labels only: sre2l torch.load per batch"] = _timed(lambda: sre2l(False), 2)
    rates["labels only: store batched decoder"] = _timed(decoder_path(comp, False), 2)
    base = rates["sre2l dump (torch.load per batch) + views"]
    base_l = rates["labels only: sre2l torch.load per batch"]
    md = [f"# Throughput (preset `{preset}`, {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs)", "",
          f"Sweep dump: {Y.shape[0]} images x {Y.shape[1]} epochs x {Y.shape[2]} classes, batch {cfg.batch_size}; "
          f"store = svd at {score_codec.LabelStore(comp).stats()['ratio']:.1f}x; {E} epochs per measurement.", "",
          "| data path | images/s | ratio |", "|---|---:|---:|"]
    for k, v in rates.items():
        ref = base_l if k.startswith("labels only") else base
        md.append(f"| {k} | {v:,.0f} | {v / ref:.2f}x |")
    md += ["", "| encode method (10x, or rank 1) | matrices/s |", "|---|---:|"]
    for m in cfg.codecs:
        def enc(m=m) -> int:
            try:
                score_codec.encode(Y, os.path.join(enc_dir, f"enc_{m}"), method=m, ratio=10,
                                   labels=images.targets.tolist(), overwrite=True)
            except score_codec.errors.BudgetError:
                score_codec.encode(Y, os.path.join(enc_dir, f"enc_{m}"), method=m, rank=1,
                                   labels=images.targets.tolist(), overwrite=True)
            return len(Y)
        md.append(f"| {m} | {_timed(enc):,.1f} |")
    f = torch.load(os.path.join(pipe.dir, "features.pt"))
    md += ["", f"| selection method (pool {len(f['labels'])}, IPC {max(cfg.ipcs)}) | seconds |", "|---|---:|"]
    for m in cfg.select_methods:
        soft = f["soft_labels"].float() if m != "rded" else f["logits"]
        t = time.perf_counter()
        score_select.select(f["features"], f["labels"], max(cfg.ipcs), method=m, soft_labels=soft, alpha=cfg.alpha,
                            beta=cfg.beta)
        md.append(f"| {m} | {time.perf_counter() - t:.2f} |")
    return md


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.label_path.throughput", description="Label-path, encode and selection throughput, as ratios in one run.")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the store path")
    p.add_argument("--epochs", type=int, default=0, help="stored epochs per measurement (0: all)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    md = measure(a.preset, a.workers, a.epochs)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"throughput_{a.preset}.md")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
