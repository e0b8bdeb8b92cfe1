"""The 224-px training data path: what soft labels add to an epoch of JPEG decoding in DataLoader workers.

    python -m benchmarks.data_path                  # 2,000 JPEGs, writes benchmarks/data_path/results/
    python -m benchmarks.data_path --preset quick   # 40 small JPEGs, 0 workers, seconds; writes nothing
    python -m benchmarks.data_path --render         # re-render results/data_path.md from results/data_path.json

One relabel pass (``score_codec.training.relabel.relabel`` with a 1000-class teacher, CutMix, 224-px
RandomResizedCrop + flip) writes both a label store and an SRe2L dump of the same views and logits.  The
benchmark then times whole epochs of the SRe2L recipe (Pillow decode, replayed crop and flip, CutMix replay,
collation) in DataLoader workers with three label sources:

* ``none``: the same views without labels (``CompressedSoftLabelDataset(decode_labels=False)``);
* ``raw``: fp16 logits read the SRe2L way, one ``torch.load`` of ``epoch_e/batch_b.tar`` per batch;
* ``store``: our store through ``CompressedSoftLabelDataset`` and ``ReplayBatchSampler``.

Epochs of the three sources are interleaved (the order rotates every round) so that drifting load on the
machine hits them alike; each figure is the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader

from benchmarks.shared import add_store_arguments
from .images import make_image_folder
from .sources import SRe2LDumpDataset, TimedStoreDataset, epoch_order, identity_collate

__all__ = ["PRESETS", "MODES", "machine", "teacher", "build_labels", "check_same_inputs", "time_epochs", "measure",
           "render", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(ROOT, "benchmarks", "cache", "data_path")

#: Sizes per preset.  ``workers`` entries are ints or "all" (os.cpu_count()).
PRESETS: Dict[str, Dict[str, Any]] = {
    "default": dict(images=2000, classes=100, long_side=(300, 500), epochs=2, batch_size=128, rounds=3,
                    workers=(2, "all")),
    "quick": dict(images=40, classes=4, long_side=(120, 200), epochs=1, batch_size=8, rounds=1, workers=(0,)),
}
MODES = ("none", "raw", "store")
MODE_NAMES = {"none": "no labels (the same views)", "raw": "raw fp16, SRe2L dump (torch.load per batch)",
              "store": "our store (CompressedSoftLabelDataset)"}


def machine() -> Dict[str, Any]:
    """The CPU model, core counts, load and library versions of this machine."""
    from PIL import Image, features

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cpu_count=os.cpu_count(), usable_cpus=len(os.sched_getaffinity(0)),
                load_average=[round(v, 2) for v in os.getloadavg()], torch=torch.__version__,
                pillow=Image.__version__, libjpeg_turbo=bool(features.check_feature("libjpeg_turbo")),
                python=platform.python_version())


def teacher(num_classes: int = 1000, seed: int = 0) -> torch.nn.Module:
    """An untrained score ConvNet (width 16, depth 3, 256 features) with a ReLU and a ``num_classes`` head.

    Cheap at 224 px on a CPU; its logits depend on each view's content, so rows differ per image and per
    view.  The head is scaled so that logits spread over a few units, as a trained teacher's do.
    """
    from score_codec.training.models import ConvNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(256, num_classes)
        model = torch.nn.Sequential(ConvNet(3, 256, width=16, depth=3), torch.nn.ReLU(), head)
    with torch.no_grad():
        head.weight.mul_(20.0)
    return model.eval()


def build_labels(images: str, out: str, epochs: int, batch_size: int, *, method: str = "global", rank: int = 8,
                 quant: str = "fp16", seed: int = 42, input_size: int = 224) -> Dict[str, Any]:
    """Relabel ``images`` once into ``out/labels.store`` and the SRe2L dump ``out/sre2l`` (fp16 logits).

    Reuses ``out`` when its ``labels.json`` records the same parameters.  Returns that record: the
    parameters, the store's stats, the dump's bytes and the relabel time in seconds.
    """
    from score_codec.store.stats import disk_bytes
    from score_codec.training.relabel import relabel

    params = dict(images=os.path.abspath(images), epochs=int(epochs), batch_size=int(batch_size), method=method,
                  rank=int(rank), quant=quant, seed=int(seed), input_size=int(input_size))
    rec_path = os.path.join(out, "labels.json")
    if os.path.isfile(rec_path):
        with open(rec_path) as fh:
            rec = json.load(fh)
        if rec.get("params") == params:
            return rec
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    t0 = time.perf_counter()
    stats = relabel(images, teacher(), os.path.join(out, "labels.store"), epochs, mix="cutmix",
                    batch_size=batch_size, method=method, rank=rank, quant=quant, seed=seed, input_size=input_size,
                    raw_dump=os.path.join(out, "sre2l"), raw_fp16=True, progress=False, fast_teacher=False)
    rec = dict(params=params, relabel_s=time.perf_counter() - t0,
               store=dict(label_bytes=int(stats["label_bytes"]), disk_bytes=int(stats["disk_bytes"]),
                          ratio=float(stats["ratio"]), ratio_disk=float(stats["ratio_disk"])),
               dump_bytes=int(disk_bytes(os.path.join(out, "sre2l"))))
    with open(rec_path, "w") as fh:
        json.dump(rec, fh, indent=1)
    return rec


def _datasets(images: str, labels_dir: str, batch_size: int, seed: int, input_size: int) -> Dict[str, Any]:
    from score_codec.training.images import ImageFolder

    folder = ImageFolder(images)
    store = os.path.join(labels_dir, "labels.store")
    return dict(none=TimedStoreDataset(folder, store, decode_labels=False),
                raw=SRe2LDumpDataset(folder, os.path.join(labels_dir, "sre2l"), batch_size, input_size, seed),
                store=TimedStoreDataset(folder, store))


def _sampler(mode: str, ds, store: str, epoch: int):
    from score_codec.training.replay import ReplayBatchSampler

    if mode == "raw":
        ds.sampler.set_epoch(epoch)
        return ds.sampler
    return ReplayBatchSampler(store, epoch=epoch)


def check_same_inputs(sets: Dict[str, Any], store: str, epochs: int) -> Dict[str, Any]:
    """Do the three sources serve the same batches, views and (within codec error) labels?

    Compares every epoch's batch order and the first batch of each epoch.  Labels are compared after
    removing each row's mean (a store decodes row-centred logits unless it keeps the mean; softmax is
    unchanged).  Returns ``same_batches``, ``same_views`` and ``label_max_abs_diff`` (store vs raw fp16).
    """
    same_batches, same_views, diff = True, True, 0.0
    for e in range(epochs):
        orders = {}
        for m in MODES:
            sets[m].set_epoch(e)
            orders[m] = epoch_order(_sampler(m, sets[m], store, e))
        same_batches &= orders["raw"] == orders["store"] == orders["none"]
        first = orders["store"][0]
        got = {m: sets[m].__getitems__(first) for m in MODES}
        same_views &= all(torch.equal(got["store"][0], got[m][0]) for m in MODES)
        raw, ours = got["raw"][1].float(), got["store"][1].float()
        diff = max(diff, float(((raw - raw.mean(1, keepdim=True)) - (ours - ours.mean(1, keepdim=True))).abs().max()))
    return dict(same_batches=bool(same_batches), same_views=bool(same_views), label_max_abs_diff=diff)


def time_epochs(sets: Dict[str, Any], store: str, workers: int, epochs: int, rounds: int) -> Dict[str, List[Dict]]:
    """Time ``rounds`` epochs of each source with ``workers`` DataLoader workers (fresh workers every epoch).

    Round r serves label epoch ``r % epochs`` to every source, in an order rotated by r.  Returns, per
    source, one dict per round: wall seconds, images, the workers' summed CPU seconds (all, labels) and the
    label CPU milliseconds of each batch in arrival order.
    """
    out: Dict[str, List[Dict]] = {m: [] for m in MODES}
    for r in range(rounds):
        e = r % epochs
        for m in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
            ds = sets[m]
            ds.set_epoch(e)
            loader = DataLoader(ds, batch_sampler=_sampler(m, ds, store, e), num_workers=workers,
                                collate_fn=identity_collate)
            n, cpu, lab = 0, 0.0, []
            t0 = time.perf_counter()
            for views, labels, targets, ids, c_all, c_lab in loader:
                labels = labels.float()       # the training step's soft targets
                n += len(ids)
                cpu += c_all
                lab.append(c_lab)
            out[m].append(dict(epoch=e, wall_s=time.perf_counter() - t0, images=n, cpu_s=cpu, label_cpu_s=sum(lab),
                               label_ms_batches=[1e3 * v for v in lab]))
    return out


def _summary(runs: Dict[str, List[Dict]]) -> Dict[str, Any]:
    med = {m: statistics.median(r["wall_s"] for r in runs[m]) for m in MODES}
    res: Dict[str, Any] = {}
    for m in MODES:
        cpu = sum(r["cpu_s"] for r in runs[m])
        res[m] = dict(epoch_s=med[m], images_per_s=runs[m][0]["images"] / med[m],
                      epoch_s_all=[r["wall_s"] for r in runs[m]],
                      worker_cpu_s=cpu / len(runs[m]),
                      label_cpu_share=sum(r["label_cpu_s"] for r in runs[m]) / cpu if cpu else 0.0,
                      label_ms_median=statistics.median(v for r in runs[m] for v in r["label_ms_batches"]),
                      label_ms_max=max(v for r in runs[m] for v in r["label_ms_batches"]),
                      over_none=med[m] / med["none"] - 1.0)
    res["store_over_raw"] = med["store"] / med["raw"] - 1.0
    # paired per round: the spread says how much of the difference the noise of this machine allows
    res["store_over_raw_rounds"] = [s["wall_s"] / r["wall_s"] - 1.0 for s, r in zip(runs["store"], runs["raw"])]
    return res


def measure(preset: str = "default", cache: str = CACHE, workers: Optional[Sequence] = None,
            images: Optional[int] = None, rounds: Optional[int] = None, method: str = "global", rank: int = 8,
            quant: str = "fp16", input_size: int = 224, seed: int = 42) -> Dict[str, Any]:
    """Build (or reuse) the images, store and dump of ``preset`` under ``cache`` and time every worker count.

    Returns the JSON-ready result: config, machine, dataset sizes, the same-inputs check and per worker
    count the per-source epoch times, images/s, worker CPU and label overheads.
    """
    cfg = dict(PRESETS[preset])
    if images is not None:
        cfg["images"] = int(images)
    if rounds is not None:
        cfg["rounds"] = int(rounds)
    wanted = workers if workers is not None else cfg["workers"]
    counts = sorted({os.cpu_count() if w == "all" else int(w) for w in wanted})
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    tag = f"n{cfg['images']}-c{cfg['classes']}-s{cfg['long_side'][0]}-{cfg['long_side'][1]}"
    img_dir = os.path.join(cache, f"jpeg-{tag}")
    t0 = time.perf_counter()
    manifest = make_image_folder(img_dir, cfg["images"], cfg["classes"], long_side=cfg["long_side"])
    gen_s = time.perf_counter() - t0
    lab_dir = os.path.join(cache, f"labels-{tag}-e{cfg['epochs']}-b{cfg['batch_size']}-{method}-r{rank}-{quant}")
    labels = build_labels(img_dir, lab_dir, cfg["epochs"], cfg["batch_size"], method=method, rank=rank, quant=quant,
                          seed=seed, input_size=input_size)
    store = os.path.join(lab_dir, "labels.store")
    sets = _datasets(img_dir, lab_dir, cfg["batch_size"], seed, input_size)
    check = check_same_inputs(sets, store, cfg["epochs"])
    results = {}
    for w in counts:
        runs = time_epochs(sets, store, w, cfg["epochs"], cfg["rounds"])
        results[str(w)] = dict(workers=w, runs=runs, **_summary(runs))
    return dict(benchmark="data_path", preset=preset, machine=dict(machine(), load_at_start=load_at_start),
                config=dict(images=cfg["images"], classes=cfg["classes"], long_side=list(cfg["long_side"]),
                            input_size=input_size, label_epochs=cfg["epochs"], batch_size=cfg["batch_size"],
                            rounds=cfg["rounds"], workers=counts, num_classes=1000, mix="cutmix",
                            store=dict(method=method, rank=rank, quant=quant), seed=seed),
                data=dict(jpeg_bytes=manifest["jpeg_bytes"], mean_pixels=manifest["mean_pixels"],
                          dump_bytes=labels["dump_bytes"], store=labels["store"]),
                setup_s=dict(images=gen_s, relabel=labels["relabel_s"]),
                check=check, results=results)


def render(res: Dict[str, Any]) -> str:
    """The Markdown report of a :func:`measure` result."""
    m, c, d = res["machine"], res["config"], res["data"]
    lines = [f"# Data path at {c['input_size']} px: label overhead per epoch", "",
             f"`python -m benchmarks.data_path{'' if res['preset'] == 'default' else ' --preset ' + res['preset']}`", "",
             f"Machine: {m['cpu']}, {m['cpu_count']} CPUs ({m['usable_cpus']} usable), 1-minute load average "
             f"{m.get('load_at_start', m['load_average'])[0]:.1f} at the start and {m['load_average'][0]:.1f} at the "
             f"end; torch {m['torch']}, Pillow {m['pillow']}{' (libjpeg-turbo)' if m['libjpeg_turbo'] else ''}."
             + (" The machine was shared with other work: wall-clock figures are noisy, worker CPU figures less so."
                if m.get('load_at_start', m['load_average'])[0] > 0.5 * m['cpu_count'] else ""), "",
             f"{c['images']:,} JPEGs ({d['mean_pixels'] / 1e3:.0f} kpixels, {d['jpeg_bytes'] / c['images'] / 1e3:.0f} kB "
             f"on average) in {c['classes']} class folders; {c['num_classes']} logits per view; batch "
             f"{c['batch_size']}, CutMix; {c['label_epochs']} label epochs; median of {c['rounds']} epochs per "
             f"source.  Labels: SRe2L dump {d['dump_bytes'] / 1e6:.1f} MB; store ({c['store']['method']}, rank "
             f"{c['store']['rank']}, {c['store']['quant']}) {d['store']['disk_bytes'] / 1e6:.2f} MB on disk, "
             f"{d['store']['ratio']:.0f}x smaller labels than fp16.", "",
             f"Same inputs: batches {'identical' if res['check']['same_batches'] else 'DIFFER'}, views "
             f"{'bit-identical' if res['check']['same_views'] else 'DIFFER'}, labels within "
             f"{res['check']['label_max_abs_diff']:.3g} (max abs, row-centred logits).", ""]
    for w, r in res["results"].items():
        label = f"{w} DataLoader workers" if int(w) else "in the main process (0 workers)"
        if int(w) == m["cpu_count"]:
            label += " (all cores)"
        lines += [f"## {label}", "",
                  "| labels | epoch (s) | images/s | epoch vs no labels | worker CPU (s) | CPU vs no labels "
                  "| label share of worker CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        cpu0 = r["none"]["worker_cpu_s"]
        for mode in MODES:
            s = r[mode]
            lines.append(f"| {MODE_NAMES[mode]} | {s['epoch_s']:.2f} | {s['images_per_s']:.0f} | "
                         f"{100 * s['over_none']:+.1f} % | {s['worker_cpu_s']:.2f} | "
                         f"{100 * (s['worker_cpu_s'] / cpu0 - 1):+.1f} % | {100 * s['label_cpu_share']:.2f} % |")
        spread = r["store_over_raw_rounds"]
        raw_views = r["raw"]["worker_cpu_s"] * (1 - r["raw"]["label_cpu_share"])
        replay = 100 * (cpu0 / raw_views - 1)
        lines += ["", f"Our store against the raw dump: {100 * r['store_over_raw']:+.1f} % of the epoch "
                      f"(per round: {', '.join(f'{100 * v:+.1f} %' for v in spread)}); worker CPU "
                      f"{100 * (r['store']['worker_cpu_s'] / r['raw']['worker_cpu_s'] - 1):+.1f} %.  Label decoding "
                      f"itself is {100 * r['store']['label_cpu_share']:.2f} % of the store epoch's worker CPU: per "
                      f"batch a median of {r['store']['label_ms_median']:.2f} ms and at most "
                      f"{r['store']['label_ms_max']:.0f} ms (the decode tables are built once, with the dataset in the main process, and shared by the fork-started workers), "
                      f"against {r['raw']['label_ms_median']:.2f} ms (at most {r['raw']['label_ms_max']:.0f} ms) for "
                      f"torch.load of a batch file.  The "
                      f"views without labels (CompressedSoftLabelDataset's replay: each batch cropped into one tensor and mixed in place) take {abs(replay):.0f} % "
                      f"{'more' if replay >= 0 else 'less'} worker CPU than the SRe2L loader's views (one CutMix over "
                      f"the stored batch).", ""]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data_path", description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="default")
    p.add_argument("--workers", nargs="+", default=None, help="DataLoader worker counts (ints or 'all')")
    p.add_argument("--images", type=int, default=None, help="number of JPEGs (default: the preset's)")
    p.add_argument("--rounds", type=int, default=None, help="epochs timed per source and worker count")
    add_store_arguments(p)
    p.add_argument("--cache", default=CACHE, help="where the JPEGs, the store and the dump are kept")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/data_path/results for the "
                                               "default preset; the quick preset writes nothing unless given)")
    p.add_argument("--render", action="store_true", help="only re-render data_path.md from the results folder's JSON")
    a = p.parse_args(argv)
    if a.render:
        out = a.out or os.path.join(HERE, "results")
        with open(os.path.join(out, "data_path.json")) as fh:
            md = render(json.load(fh))
        with open(os.path.join(out, "data_path.md"), "w") as fh:
            fh.write(md)
        return 0
    workers = [w if w == "all" else int(w) for w in a.workers] if a.workers else None
    res = measure(a.preset, a.cache, workers, a.images, a.rounds, a.method, a.rank, a.quant)
    md = render(res)
    print(md)
    out = a.out or (os.path.join(HERE, "results") if a.preset == "default" else None)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "data_path.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        with open(os.path.join(out, "data_path.md"), "w") as fh:
            fh.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
