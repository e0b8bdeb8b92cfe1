"""Storage versus accuracy on real data: selection, relabelling, label codecs vs peers, students.

    python benchmarks/storage_vs_accuracy.py --preset quick      # CI-sized (minutes on 2 CPU cores)
    python benchmarks/storage_vs_accuracy.py --preset full       # the committed table (about an hour)
    python benchmarks/storage_vs_accuracy.py --preset full --data /path/to/imagefolder --test /path/to/val \
        --image-size 64                                           # any ImageFolder, any class count

Steps (each cached under ``benchmarks/cache/<preset>/`` and skipped when its output exists):
1. images (Fashion-MNIST from ``apt-get install dataset-fashion-mnist``, or an ImageFolder);
2. teacher: a small ResNet (test top-1 logged);
3. selection (SCORE, random, herding, RDED-style) at each IPC from a seeded candidate pool;
4. relabel (``score_codec.training.relabel``): K epochs of crop + flip + CutMix views, written as an SRe2L dump
   (the uncompressed reference) and a store holding the augmentation metadata;
5. label variants at matched budgets (ours via ``ratio=X`` rate control; peers from ``benchmarks.peers``);
6. students (ConvNet, KL at T, AdamW, cosine; identical seeds, views and batch order for every variant).
Output: ``benchmarks/results/<preset>.md`` / ``.csv`` / ``.png`` (see ``benchmarks.report``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.label_sources import BatchTable, LabelSource, LogitSource, kd_metrics, load_views, train_one  # noqa: E402

__all__ = ["Config", "PRESETS", "run", "main"]

log = logging.getLogger("storage_vs_accuracy")
HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Config:
    """One benchmark configuration (a preset).  Units: epochs, images, images per class (IPC)."""

    name: str
    data: str = "fashion-mnist:train"        # training images: Fashion-MNIST spec or ImageFolder path
    test: str = "fashion-mnist:test"
    image_size: Optional[int] = None         # resize whole images (None: keep; needed for mixed sizes)
    test_limit: Optional[int] = None         # first N test images only
    teacher_epochs: int = 2
    teacher_images: Optional[int] = None     # first N training images for the teacher (None: all)
    teacher_width: int = 16
    pool: int = 10000                        # seeded random candidate pool for selection
    select_views: int = 4                    # views per candidate for SCORE's R(Y) term
    select_methods: Tuple[str, ...] = ("score", "random", "herding", "rded")
    ipcs: Tuple[int, ...] = (10, 50)
    alpha: float = 1.0
    beta: float = 0.1
    sweep_method: str = "score"              # the storage sweep runs on this selection ...
    sweep_ipc: int = 50                      # ... at this IPC
    label_epochs: int = 40                   # K of the storage sweep: stored views per image
    select_label_epochs: Optional[int] = None  # K of the selection comparison (None: label_epochs)
    batch_size: int = 50                     # relabel (and training) batch; CutMix acts within it
    crop_scale: Tuple[float, float] = (0.4, 1.0)   # RandomResizedCrop area range (SCORE paper: (0.4|0.3|0.2, 1))
    ratios: Tuple[float, ...] = (1, 10, 20, 30, 100)
    codecs: Tuple[str, ...] = ("svd", "rsvd", "cur", "rpca", "shared")
    codecs_high: Optional[Tuple[str, ...]] = None  # codecs above 10x (None: all); saves students where the
                                             # budget leaves most images at rank 0 and the codecs coincide
    residual: int = 1                        # sparse residual entries per row for the "+res" variants
    residual_codecs: Optional[Tuple[str, ...]] = None  # codecs tried with a residual (None: all)
    pool_inner: Optional[float] = 4.0        # ours + LPLD pool: encode inner/X of the epochs at this ratio
    quant: str = "fp16"
    student_width: int = 32
    student_depth: int = 3
    T: float = 20.0
    lr: float = 2e-3
    wd: float = 0.01
    train_epochs: Optional[int] = None       # training epochs (label epoch e % K); None: see train_steps
    train_steps: Optional[int] = None        # None: one pass per stored label epoch (K); else epochs =
                                             # ceil(train_steps / batches per epoch), equal compute per IPC
    seeds: Tuple[int, ...] = (0, 1, 2)
    threads: int = 1


PRESETS: Dict[str, Config] = {
    "full": Config("full", quant="int8", teacher_epochs=3, sweep_ipc=10, label_epochs=60, select_label_epochs=30,
                   train_steps=400, lr=1e-2, test_limit=5000, codecs_high=("svd", "shared"),
                   residual_codecs=("svd", "rpca"), threads=1),
    "quick": Config("quick", quant="int8", teacher_epochs=1, teacher_images=10000, pool=3000, ipcs=(10,), sweep_ipc=10, label_epochs=40,
                    ratios=(1, 10, 20, 100), seeds=(0,), test_limit=2000, train_steps=300, lr=1e-2,
                    threads=2),
    "smoke": Config("smoke", teacher_epochs=4, teacher_images=2000, teacher_width=8, pool=400,
                    select_methods=("score", "random"), ipcs=(10,), sweep_ipc=10, label_epochs=4, batch_size=25,
                    ratios=(1, 10, 100), codecs=("svd", "shared"), seeds=(0,), test_limit=500, select_views=2,
                    train_epochs=24, lr=1e-2, T=4.0),
}


def _atomic_save(obj: Any, path: str) -> None:
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def _images(spec: str, size: Optional[int], limit: Optional[int] = None):
    """A TensorImages of ``spec`` (whole images resized to ``size`` when given); classes from the source."""
    from score_codec.training.augment import resized_crop
    from score_codec.training.images import TensorImages, load_images

    ds = load_images(spec)
    if isinstance(ds, TensorImages) and size in (None, ds.images.shape[-1]):
        if limit is not None and limit < len(ds):
            return TensorImages(ds.images[:limit], ds.targets[:limit], ds.classes)
        return ds
    n = len(ds) if limit is None else min(limit, len(ds))
    xs = []
    for i in range(n):
        img = ds[i][0]
        xs.append(resized_crop(img, (0, 0, img.shape[-2], img.shape[-1]), size) if size else img)
    return TensorImages(torch.stack(xs), ds.targets[:n], ds.classes)


def _train_teacher(images, model: torch.nn.Module, cfg: "Config") -> torch.nn.Module:
    """Cross-entropy on RandomResizedCrop(``cfg.crop_scale``) + flip views (the relabel augmentation, so
    the teacher is right on the views it labels), AdamW 2e-3, cosine, batch 128, bf16 autocast."""
    import math

    import torch.nn.functional as F
    from tqdm import tqdm

    from score_select.features import augment_views

    x_all = images.images
    y_all = torch.as_tensor(images.targets)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    bs = 128
    steps = cfg.teacher_epochs * math.ceil(len(x_all) / bs)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    bar = tqdm(total=steps, desc="teacher", unit="step")
    for _ in range(cfg.teacher_epochs):
        order = torch.randperm(len(x_all), generator=g)
        for s in range(0, len(x_all), bs):
            b = order[s:s + bs]
            xb = x_all[b].float() / 255.0 if x_all.dtype == torch.uint8 else x_all[b].float()
            xb = augment_views(xb, 1, g, scale=tuple(cfg.crop_scale))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(xb), y_all[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
    bar.close()
    return model.eval()


class Pipeline:
    """The benchmark's steps over one config; every step reads its cached output when present."""

    def __init__(self, cfg: Config, cache_dir: str) -> None:
        self.cfg, self.dir = cfg, cache_dir
        os.makedirs(cache_dir, exist_ok=True)
        self.train = _images(cfg.data, cfg.image_size)
        self.test = _images(cfg.test, cfg.image_size or int(self.train.images.shape[-1]), cfg.test_limit)
        self.C = len(self.train.classes)
        self.results_path = os.path.join(cache_dir, "students.jsonl")
        self.done: Dict[str, Dict[str, Any]] = {}
        if os.path.isfile(self.results_path):
            for line in open(self.results_path):
                r = json.loads(line)
                self.done[r["key"]] = r

    # -- 2. teacher -----------------------------------------------------------------------------------
    def teacher(self) -> torch.nn.Module:
        from score_codec.training.student import evaluate
        from score_codec.training.images import TensorImages
        from score_codec.training.models import ResNet, load_model, save_model

        path = os.path.join(self.dir, "teacher.safetensors")
        if os.path.isfile(path):
            model = load_model(path).eval()
        else:
            n = self.cfg.teacher_images or len(self.train)
            sub = TensorImages(self.train.images[:n], self.train.targets[:n], self.train.classes)
            net = ResNet(in_channels=int(sub.images.shape[1]), num_classes=self.C, width=self.cfg.teacher_width,
                         blocks=(1, 1, 1))
            model = _train_teacher(sub, net, self.cfg)
            save_model(model, path + ".tmp.safetensors")
            os.replace(path + ".tmp.safetensors", path)
        info = os.path.join(self.dir, "teacher.json")
        if not os.path.isfile(info):
            acc = evaluate(model, self.test, int(self.test.images.shape[-1]), "cpu")
            json.dump({"test_top1": acc}, open(info, "w"))
        self.teacher_top1 = json.load(open(info))["test_top1"]
        log.info("teacher test top-1 %.4f", self.teacher_top1)
        return model

    # -- 3. selection ---------------------------------------------------------------------------------
    def selections(self, teacher) -> Dict[Tuple[str, int], np.ndarray]:
        import score_select
        from score_select.features import extract

        path = os.path.join(self.dir, "features.pt")
        if not os.path.isfile(path):
            g = torch.Generator().manual_seed(0)
            pool = torch.randperm(len(self.train), generator=g)[:self.cfg.pool].sort().values
            from score_codec.training.images import TensorImages
            sub = TensorImages(self.train.images[pool], self.train.targets[pool.numpy()], self.train.classes)
            feats = extract(teacher, sub, batch_size=256, num_views=self.cfg.select_views, progress=True)
            feats["pool"] = pool
            _atomic_save(feats, path)
        f = torch.load(path)
        out = {}
        for method in self.cfg.select_methods:
            for ipc in self.cfg.ipcs:
                p = os.path.join(self.dir, f"select_{method}_ipc{ipc}.pt")
                if not os.path.isfile(p):
                    soft = f["soft_labels"].float() if method != "rded" else f["logits"]
                    idx, _ = score_select.select(f["features"], f["labels"], ipc, method=method,
                                                 soft_labels=soft, alpha=self.cfg.alpha, beta=self.cfg.beta, seed=0)
                    _atomic_save(f["pool"][idx].sort().values, p)
                out[(method, ipc)] = torch.load(p).numpy()
        return out

    # -- 4. relabel -----------------------------------------------------------------------------------
    def relabel(self, teacher, key: str, idx: np.ndarray, epochs: int) -> Tuple[str, torch.Tensor, BatchTable]:
        """(reference store path, Y (N, K, C) float32 from the SRe2L dump, batch table); K = ``epochs``."""
        from score_codec import LabelStore
        from score_codec.training.images import TensorImages
        from score_codec.training.relabel import relabel

        d = os.path.join(self.dir, "relabel", f"{key}_K{epochs}")
        ypath = os.path.join(d, "Y.pt")
        store = os.path.join(d, "meta.store")
        if not os.path.isfile(ypath):
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            ds = TensorImages(self.train.images[idx], self.train.targets[idx], self.train.classes)
            relabel(ds, teacher, store, epochs, batch_size=self.cfg.batch_size, method="svd", rank=1,
                    seed=0, scale=tuple(self.cfg.crop_scale), raw_dump=os.path.join(d, "sre2l"), progress=True)
            _atomic_save(read_sre2l(os.path.join(d, "sre2l"), LabelStore(store)), ypath)
        meta = LabelStore(store).aug
        return store, torch.load(ypath), BatchTable(meta.batches, meta.rows)

    # -- 6. students ----------------------------------------------------------------------------------
    def students(self, key: str, source: LabelSource, views, table: BatchTable, classes) -> List[float]:
        accs = []
        for seed in self.cfg.seeds:
            c = self.cfg
            k = (f"{key}|T{c.T:g}|lr{c.lr:g}|w{c.student_width}d{c.student_depth}|e{c.train_epochs}|s{c.train_steps}"
                 f"|seed{seed}")
            if k not in self.done:
                res = train_one(source, table, views, self.cfg, seed, self.test, self.C)
                res["key"] = k
                with open(self.results_path, "a") as fh:
                    fh.write(json.dumps(res) + "\n")
                self.done[k] = res
            accs.append(self.done[k]["top1"])
        return accs


def read_sre2l(raw_dir: str, store) -> torch.Tensor:
    """Logits (N, K, C) float32 from an SRe2L dump written by relabel (its fp16 values), placed by the
    store's row metadata (image ids of each stored batch position)."""
    meta = store.aug
    n, k = len(store), int(meta.rows["epoch"].max()) + 1
    Y = None
    for rec in meta.batches:
        e, b, s, m = int(rec["epoch"]), int(rec["batch"]), int(rec["row_start"]), int(rec["size"])
        logits = torch.load(os.path.join(raw_dir, f"epoch_{e}", f"batch_{b}.tar"), weights_only=False)[5]
        if Y is None:
            Y = torch.empty(n, k, logits.shape[1])
        Y[torch.as_tensor(meta.rows["image"][s:s + m].astype(np.int64)), e] = logits.float()
    return Y


def run(cfg: Config, cache_dir: Optional[str] = None, out_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run every step of ``cfg`` and write the report; returns the result rows (see benchmarks.report)."""
    from benchmarks.report import write_report
    from benchmarks.peers import storage_variants

    torch.set_num_threads(cfg.threads)
    cache_dir = cache_dir or os.path.join(HERE, "cache", cfg.name)
    out_dir = out_dir or os.path.join(HERE, "results")
    pipe = Pipeline(cfg, cache_dir)
    teacher = pipe.teacher()
    sels = pipe.selections(teacher)
    rows: List[Dict[str, Any]] = []
    for (method, ipc), idx in sels.items():
        ks = cfg.select_label_epochs or cfg.label_epochs
        store, Y, table = pipe.relabel(teacher, f"{method}_ipc{ipc}", idx, ks)
        views = load_views(store, pipe.train, idx)
        accs = pipe.students(f"select|{method}|ipc{ipc}|K{ks}", LogitSource(Y), views, table, pipe.C)
        rows.append(dict(experiment="selection", method=method, ipc=ipc, images=len(idx), K=ks, top1=accs))
    key = f"{cfg.sweep_method}_ipc{cfg.sweep_ipc}"
    store, Y, table = pipe.relabel(teacher, key, sels[(cfg.sweep_method, cfg.sweep_ipc)], cfg.label_epochs)
    sweep_idx = sels[(cfg.sweep_method, cfg.sweep_ipc)]
    views = load_views(store, pipe.train, sweep_idx)
    variants = storage_variants(cfg, Y, table, os.path.join(cache_dir, "variants", key), pipe.train.targets[sweep_idx])
    for var in variants:
        row = dict(experiment="storage", vid=var.vid, family=var.family, name=var.name, target=var.ratio,
                   note=var.note, rows=int(Y.shape[0] * Y.shape[1]), C=pipe.C)
        if var.source is not None:
            src = var.source
            row.update(label_bytes=src.label_bytes, rows_kept=src.rows_kept, **kd_metrics(src, Y, table, cfg.T))
            same = var.same_as or var.vid
            k = (f"select|{cfg.sweep_method}|ipc{cfg.sweep_ipc}|K{cfg.label_epochs}" if same == "raw"
                 else f"storage|{key}|K{cfg.label_epochs}|{same}")
            row["top1"] = pipe.students(k, src, views, table, pipe.C)
        rows.append(row)
    info = dict(config=dataclasses.asdict(cfg), teacher_top1=pipe.teacher_top1, classes=pipe.C,
                label_epochs=int(Y.shape[1]), sweep_images=int(Y.shape[0]), batches_per_epoch=table.per_epoch)
    write_report(rows, info, out_dir, cfg.name)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    p.add_argument("--data", help="training images: 'fashion-mnist' or an ImageFolder path")
    p.add_argument("--test", help="test images: 'fashion-mnist:test' or an ImageFolder path")
    p.add_argument("--image-size", type=int, help="resize whole images to this square side")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--quant", choices=["fp16", "bf16", "int8"], help="factor quantisation of our codecs")
    p.add_argument("--steps", type=int, help="optimiser steps per student (the preset's train_steps)")
    p.add_argument("--seeds", type=int, help="number of student seeds")
    p.add_argument("--name", help="output name (default: the preset's; set it when changing data)")
    p.add_argument("--cache-dir", help="step cache (default benchmarks/cache/<name>)")
    p.add_argument("--out-dir", help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    over = {k: v for k, v in dict(data=a.data, test=a.test, image_size=a.image_size, threads=a.threads,
                                  name=a.name, quant=a.quant, train_steps=a.steps).items() if v is not None}
    if a.seeds:
        over["seeds"] = tuple(range(a.seeds))
    cfg = dataclasses.replace(PRESETS[a.preset], **over)
    run(cfg, a.cache_dir, a.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
