"""Shared benchmark helpers: a cached Fashion-MNIST teacher and its logits on SRe2L-style augmented views.

Used by ``benchmarks/codec_bench.py`` and meant for the end-to-end benchmark too::

    from benchmarks.common import train_teacher, teacher_logits, load_subset
    model = train_teacher()                        # trained once, then read from benchmarks/cache/
    images, labels = load_subset("train", 500)
    y = teacher_logits(model, images, k=50, seed=0)            # (500, 50, 10) float32

Views follow SRe2L relabelling (``score_codec.training.relabel``): per view a RandomResizedCrop (scale (0.08, 1))
resized back to 28x28 and a flip with p = 0.5; per batch of ``mix_batch`` views one CutMix with
lam ~ Beta(1, 1) and a random partner permutation.  Each of the K epochs draws a fresh batch order.
The teacher runs in fp32 for labels (as ``relabel`` does); training uses bf16 autocast for speed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from score_codec.training.augment import apply_mix, crop_coords, cutmix_box, hflip, resized_crop, sample_crop
from score_codec.training.images import load_fashion_mnist
from score_codec.training.models import ResNet, load_model, save_model

__all__ = ["CACHE_DIR", "cpu_name", "load_subset", "train_teacher", "evaluate_teacher",
           "teacher_logits", "cached_teacher_logits", "logit_quality"]

log = logging.getLogger("benchmarks.common")

#: git-ignored folder for teachers and logit dumps
CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")


def cpu_name() -> str:
    """The CPU model string from /proc/cpuinfo (or the platform's processor name)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def load_subset(split: str = "train", n: Optional[int] = None, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` Fashion-MNIST images of ``split`` drawn without replacement by ``seed`` (all if None), in
    increasing index order: (uint8 (n, 1, 28, 28), int64 (n,))."""
    x, y = load_fashion_mnist(split)
    if n is not None and n < len(x):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        x, y = x[idx], y[idx]
    return x, y


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def evaluate_teacher(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` on whole images (uint8 or float (N, C, H, W))."""
    model.eval()
    correct = 0
    for s in range(0, len(images), batch):
        correct += int((model(_float(images[s:s + batch])).argmax(1) == labels[s:s + batch]).sum())
    return correct / max(len(images), 1)


def train_teacher(epochs: int = 3, width: int = 16, blocks: Sequence[int] = (1, 1, 1), lr: float = 2e-3,
                  batch_size: int = 256, seed: int = 0, bf16: bool = True, cache_dir: str = CACHE_DIR,
                  progress: bool = True) -> torch.nn.Module:
    """A small ResNet trained on all 60k Fashion-MNIST training images, cached as a safetensors file.

    Cross-entropy, AdamW, one-cycle-ish cosine schedule, random flips and +-2 pixel shifts, bf16 autocast
    (CPU or CUDA).  The test accuracy is logged and written next to the weights as JSON.  A second call
    with the same arguments loads ``cache_dir/teacher_resnet_w{width}_b{blocks}_e{epochs}_s{seed}.safetensors``.
    """
    tag = f"teacher_resnet_w{width}_b{''.join(map(str, blocks))}_e{epochs}_s{seed}"
    path = os.path.join(cache_dir, tag + ".safetensors")
    info_path = os.path.join(cache_dir, tag + ".json")
    if os.path.isfile(path):
        model = load_model(path)
        if os.path.isfile(info_path):
            with open(info_path) as f:
                model.bench_info = json.load(f)
            log.info("teacher %s (test top-1 %.4f) from cache", tag, model.bench_info.get("test_top1", float("nan")))
        return model
    os.makedirs(cache_dir, exist_ok=True)
    x, y = load_fashion_mnist("train")
    torch.manual_seed(seed)
    model = ResNet(in_channels=1, num_classes=10, width=width, blocks=blocks).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    bar = tqdm(total=steps, desc="teacher", unit="step", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch_size):
            idx = order[s:s + batch_size]
            xb = _float(x[idx])
            xb = hflip(xb, torch.rand(len(idx), generator=g) < 0.5)
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            xb = torch.roll(F.pad(xb, (2, 2, 2, 2)), (dy, dx), (2, 3))[:, :, 2:-2, 2:-2]
            with torch.autocast("cuda" if xb.is_cuda else "cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    xt, yt = load_fashion_mnist("test")
    acc = evaluate_teacher(model, xt, yt)
    info = dict(test_top1=acc, epochs=epochs, width=width, blocks=list(blocks), train_seconds=time.time() - t0,
                threads=torch.get_num_threads(), bf16=bf16, torch=torch.__version__)
    log.info("teacher %s: test top-1 %.4f after %d epochs (%.0f s)", tag, acc, epochs, info["train_seconds"])
    save_model(model, path)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    model.bench_info = info
    return model


@torch.no_grad()
def teacher_logits(model: torch.nn.Module, images: torch.Tensor, k: int, seed: int = 0, mix_batch: int = 64,
                   forward_batch: int = 1024, scale: Tuple[float, float] = (0.08, 1.0), features: bool = False,
                   progress: bool = True, mix: str = "cutmix") -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Teacher logits of ``k`` augmented views per image: (N, K, classes) float32.

    ``images``: uint8 or float (N, C, H, W).  View e of image i is drawn in epoch e (see module docstring);
    mix batches are grouped into forward passes of about ``forward_batch`` views (eval mode, so grouping
    does not change the outputs).  ``features=True`` also returns the penultimate features (N, K, d) of
    the same views (the input of the teacher's linear classifier).  ``mix="none"`` skips CutMix (crop + flip only).
    """
    model.eval()
    n = len(images)
    size = int(images.shape[-1])
    imgs = _float(images)
    gen = torch.Generator().manual_seed(seed)
    lam_rng = np.random.default_rng(seed)
    out = feats = None
    group = max(1, forward_batch // mix_batch)
    bar = tqdm(total=n * k, desc="teacher views", unit="view", unit_scale=True, disable=not progress)
    for e in range(k):
        order = torch.randperm(n, generator=gen)
        batches = [order[s:s + mix_batch] for s in range(0, n, mix_batch)]
        for g0 in range(0, len(batches), group):
            xs, ids = [], []
            for idx in batches[g0:g0 + group]:
                views = []
                for i in idx.tolist():
                    box = sample_crop(size, size, scale=scale, generator=gen)
                    v = resized_crop(imgs[i], crop_coords(box, size, size), size)
                    views.append(hflip(v) if torch.rand(1, generator=gen).item() < 0.5 else v)
                x = torch.stack(views)
                lam = float(lam_rng.beta(1.0, 1.0))
                perm = torch.randperm(len(idx), generator=gen)
                xs.append(apply_mix(x, "cutmix", perm, bbox=cutmix_box(size, lam, gen)) if mix == "cutmix" else x)
                ids.append(idx)
            x, idx = torch.cat(xs), torch.cat(ids)
            f = model.features(x)
            z = model.classifier(f)
            if out is None:
                out = torch.empty(n, k, z.shape[1])
                feats = torch.empty(n, k, f.shape[1]) if features else None
            out[idx, e] = z.float()
            if features:
                feats[idx, e] = f.float()
            bar.update(len(idx))
    bar.close()
    return (out, feats) if features else out


def cached_teacher_logits(model: torch.nn.Module, images: torch.Tensor, k: int, seed: int = 0,
                          features: bool = False, cache_dir: str = CACHE_DIR, **kw):
    """:func:`teacher_logits` memoised in ``cache_dir`` by a hash of the weights, images, ``k`` and ``seed``."""
    h = hashlib.sha1()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(images.contiguous().numpy().tobytes())
    h.update(repr((k, seed, features, sorted(kw.items()))).encode())
    path = os.path.join(cache_dir, f"logits_{h.hexdigest()[:16]}.pt")
    if os.path.isfile(path):
        log.info("teacher logits from cache %s", path)
        return torch.load(path)
    res = teacher_logits(model, images, k, seed=seed, features=features, **kw)
    os.makedirs(cache_dir, exist_ok=True)
    torch.save(res, path + ".tmp")
    os.replace(path + ".tmp", path)
    return res


def logit_quality(y: torch.Tensor, y_hat: torch.Tensor, temps: Sequence[float] = (1.0, 20.0),
                  chunk_rows: int = 1 << 18) -> dict:
    """Fidelity of decoded logits: ``{"kl_T{T}": KL(softmax(y/T) || softmax(y_hat/T)), "top1": agreement}``.

    ``y`` and ``y_hat`` (..., C) are logits (the reference is row-centred first; softmax is shift
    invariant).  KL is summed over classes and averaged over rows (batchmean), computed in float64.
    """
    y = y.reshape(-1, y.shape[-1])
    y_hat = y_hat.reshape(-1, y.shape[-1])
    rows = y.shape[0]
    kl = {t: 0.0 for t in temps}
    agree = 0
    for s in range(0, rows, chunk_rows):
        a = y[s:s + chunk_rows].double()
        a = a - a.mean(-1, keepdim=True)
        b = y_hat[s:s + chunk_rows].double()
        for t in temps:
            logp, logq = torch.log_softmax(a / t, -1), torch.log_softmax(b / t, -1)
            kl[t] += float((logp.exp() * (logp - logq)).sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
    out = {f"kl_T{t:g}": kl[t] / rows for t in temps}
    out["top1"] = agree / rows
    return out


def replay_epochs(dataset, store_path: str, epochs: int, workers: int) -> int:
    """Views served by ``dataset`` (a CompressedSoftLabelDataset) over ``epochs`` epochs in the store's batch
    order (ReplayBatchSampler), through a DataLoader with ``workers`` workers: the training data path."""
    from torch.utils.data import DataLoader
    from score_codec import ReplayBatchSampler

    sampler = ReplayBatchSampler(store_path)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    n = 0
    for e in range(epochs):
        dataset.set_epoch(e)
        sampler.set_epoch(e)
        for x, _, _, _ in loader:
            n += len(x)
    return n
