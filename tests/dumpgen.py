"""Build small but structurally real soft-label dumps for the format tests.

A tiny MLP teacher is trained briefly on Fashion-MNIST; a synthetic set of ``ipc`` images
per class is taken in SRe2L's ImageFolder order (dataset index = class * IPC + k).  Dumps are produced the
way the original relabel scripts do it: a seeded RandomSampler/BatchSampler, real RandomResizedCrop
draws and horizontal flips per row, one CutMix box / Mixup lambda and partner permutation per batch,
and the teacher's (fp16) logits of the mixed batch.  File layouts and item types follow the original
tools' loaders (the readers in score_codec/formats/ document each family).
"""
from __future__ import annotations

import functools
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from score_codec.training.augment import apply_mix, crop_coords, cutmix_box, hflip, resized_crop, sample_crop
from score_codec.training.images import load_fashion_mnist

__all__ = ["synthetic_set", "teacher", "make_epoch_dump", "make_lpqld_dump", "make_fkd_dump", "old_torch_batches",
           "S", "NUM_CLASSES"]

S = 28            # crop output size (Fashion-MNIST resolution)
NUM_CLASSES = 10
SCALE = (0.35, 1.0)
_MEAN, _STD = 0.286, 0.353


@functools.lru_cache(maxsize=None)
def _fmnist() -> Tuple[torch.Tensor, torch.Tensor]:
    return load_fashion_mnist("train")


def synthetic_set(ipc: int) -> Tuple[torch.Tensor, np.ndarray]:
    """``ipc`` images per class in class-major order: float (N, 1, 28, 28) in [0, 1], labels (N,)."""
    x, y = _fmnist()
    idx = torch.cat([torch.nonzero(y == c)[5000:5000 + ipc, 0] for c in range(NUM_CLASSES)])
    return x[idx].float() / 255.0, y[idx].numpy()


@functools.lru_cache(maxsize=None)
def teacher() -> torch.nn.Module:
    """A small MLP trained for 500 steps on random crops of 4000 Fashion-MNIST images: far above chance on
    held-out crops, which is what the sampler check needs."""
    x, y = _fmnist()
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, NUM_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xs, ys = x[:4000].float() / 255.0, y[:4000]
    with torch.enable_grad():  # callers may be inside no_grad
        _train(model, opt, xs, ys, g)
    return model.eval()


def _train(model, opt, xs, ys, g) -> None:
    for _ in range(500):
        sel = torch.randint(0, len(xs), (64,), generator=g)
        batch = torch.stack([resized_crop(xs[i], torch.tensor(sample_crop(28, 28, SCALE, generator=g)), S) for i in sel])
        loss = F.cross_entropy(model((batch - _MEAN) / _STD), ys[sel])
        opt.zero_grad()
        loss.backward()
        opt.step()


def old_torch_batches(n: int, batch_size: int, epochs: int, seed: int) -> List[List[List[int]]]:
    """Batches of an old-torch RandomSampler (one randperm per epoch), written independently of the reader."""
    g = torch.Generator()
    g.manual_seed(seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).tolist()
        out.append([perm[s:s + batch_size] for s in range(0, n, batch_size)])
    return out


def _torch_batches(n: int, batch_size: int, epochs: int, seed: int, drop_last: bool) -> List[List[List[int]]]:
    g = torch.Generator()
    g.manual_seed(seed)
    bs = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(range(n), generator=g), batch_size, drop_last)
    return [[list(b) for b in bs] for _ in range(epochs)]


def _augment_batch(images: torch.Tensor, idx: List[int], mix: str, g: torch.Generator, rng: np.random.Generator,
                   model: Optional[torch.nn.Module] = None):
    """Crop/flip every row, mix the batch; returns (coords, flip, mix_index, lam, bbox, logits fp32)."""
    coords, flips, views = [], [], []
    for n in idx:
        box = sample_crop(28, 28, SCALE, generator=g)
        coords.append(crop_coords(box, 28, 28))
        flip = bool(torch.rand(1, generator=g) < 0.5)
        flips.append(flip)
        v = resized_crop(images[n], torch.tensor(box), S)
        views.append(hflip(v) if flip else v)
    x = (torch.stack(views) - _MEAN) / _STD
    mix_index = lam = bbox = None
    if mix != "none":
        lam = float(rng.beta(1.0, 1.0) if mix == "cutmix" else rng.beta(0.8, 0.8))   # a Python float
        mix_index = torch.randperm(len(idx), generator=g)
        if mix == "cutmix":
            bbox = [np.int64(v) for v in cutmix_box(S, lam, generator=g)]               # np.clip -> numpy.int64
        x = apply_mix(x, mix, mix_index, lam, bbox)
    with torch.no_grad():
        logits = (model or teacher())(x)
    return torch.stack(coords), torch.tensor(flips, dtype=torch.bool), mix_index, lam, bbox, logits


def make_epoch_dump(root: str, family: str = "sre2l", ipc: int = 4, epochs: int = 3, batch_size: int = 8,
                    mix: str = "cutmix", seed: int = 42, draws: int = 2, fp16: bool = True,
                    prune_ratio: Optional[float] = None, model: Optional[torch.nn.Module] = None) -> Dict[str, object]:
    """Write an ``epoch_{e}/batch_{b}.tar`` dump of ``family`` (sre2l | lpld | gvbsm | edc) under ``root``.

    ``draws=1`` emulates a dump made by an old torch (one randperm per epoch).  ``prune_ratio`` (LPLD)
    keeps the first int((1 - r) * E * nb) global batches with drop_last=True.  ``model`` replaces the trained
    MLP teacher (e.g. an untrained one).  Returns the ground truth:
    ``{"images", "labels", "batches": [[indices per batch] per epoch]}``.
    """
    images, labels = synthetic_set(ipc)
    n = len(images)
    drop_last = prune_ratio is not None
    batches = (old_torch_batches(n, batch_size, epochs, seed) if draws == 1
               else _torch_batches(n, batch_size, epochs, seed, drop_last))
    keep = None
    if prune_ratio is not None:
        nb = len(batches[0])
        keep = int((1 - prune_ratio) * epochs * nb)
    g = torch.Generator().manual_seed(1234)
    rng = np.random.default_rng(99)
    written: List[List[List[int]]] = []
    gcount = 0
    for e, ep in enumerate(batches):
        if keep is not None and gcount >= keep:
            break
        written.append([])
        for b, idx in enumerate(ep):
            if keep is not None and gcount >= keep:
                break
            coords, flip, mi, lam, bbox, logits = _augment_batch(images, idx, mix, g, rng, model)
            items = [coords, flip, mi, lam, bbox, logits.half() if fp16 else logits]
            if family in ("gvbsm", "edc"):
                items.append(torch.tensor(idx, dtype=torch.int64))
            if family == "edc":
                items.append(torch.zeros(len(idx), 2, 2, dtype=torch.int64))
            d = os.path.join(root, f"epoch_{e}")
            os.makedirs(d, exist_ok=True)
            torch.save(items, os.path.join(d, f"batch_{b}.tar"))
            written[-1].append(list(idx))
            gcount += 1
    if family == "lpld":
        with open(os.path.join(root, "sampler_indices_epoch.json"), "w") as fh:
            json.dump({str(e): [i for b in ep for i in b] for e, ep in enumerate(written)}, fh)
    return {"images": images, "labels": labels, "batches": written}


def make_lpqld_dump(root: str, ipc: int = 4, epochs: int = 2, batch_size: int = 8, topk: Optional[int] = None,
                    seed: int = 42, drop_last: bool = True, keep: Optional[int] = None,
                    randaugment: bool = False) -> Dict[str, object]:
    """LPQLD flat dump: ``batch_{g}.tar`` + ``sampler_indices_batch.json``; fp16 coords, uint8 mix_index,
    uint8 0-d tensor box, and (``topk``) MR-k top-k fp16 logits + int16 indices instead of full logits.
    ``keep``: only the first ``keep`` global batches (a pruned dump whose last epoch is short);
    ``randaugment``: RandAugment parameters inserted at item 2."""
    images, labels = synthetic_set(ipc)
    n = len(images)
    batches = _torch_batches(n, batch_size, epochs, seed, drop_last=drop_last)
    if keep is not None:
        flat = [(e, b) for e, ep in enumerate(batches) for b in ep][:keep]
        batches = [[b for e2, b in flat if e2 == e] for e in range(len(batches))]
        batches = [ep for ep in batches if ep]
    g = torch.Generator().manual_seed(4321)
    rng = np.random.default_rng(7)
    index: Dict[str, List[int]] = {}
    os.makedirs(root, exist_ok=True)
    gb = 0
    for ep in batches:
        for idx in ep:
            coords, flip, mi, lam, bbox, logits = _augment_batch(images, idx, "cutmix", g, rng)
            items = [coords.half(), flip, mi.to(torch.uint8), lam, [torch.tensor(int(v), dtype=torch.uint8) for v in bbox]]
            if randaugment:
                items.insert(2, [(int(v), 9) for v in torch.randint(0, 14, (2,), generator=g)])
            if topk is None:
                items.append(logits.half())
            else:
                val, ind = logits.topk(topk, dim=1)
                items += [val.half(), ind.to(torch.int16)]
            torch.save(items, os.path.join(root, f"batch_{gb}.tar"))
            index[str(gb)] = list(idx)
            gb += 1
    with open(os.path.join(root, "sampler_indices_batch.json"), "w") as fh:
        json.dump(index, fh)
    return {"images": images, "labels": labels, "index": index}


def make_fkd_dump(root: str, ipc: int = 3, crops: int = 5, topk: int = 3, fp16: bool = False) -> Dict[str, object]:
    """Original FKD dump: one ``train/class{c:03d}/img{n:05d}.tar`` per image holding numpy
    ``[coords [n,4], flip bool [n], label [n,2,k]]`` (top-k class ids as floats, then probabilities)."""
    images, labels = synthetic_set(ipc)
    g = torch.Generator().manual_seed(55)
    files = []
    for n in range(len(images)):
        boxes = [sample_crop(28, 28, SCALE, generator=g) for _ in range(crops)]
        coords = torch.stack([crop_coords(b, 28, 28) for b in boxes])
        flip = torch.rand(crops, generator=g) < 0.5
        views = torch.stack([hflip(v) if f else v for v, f in
                             zip((resized_crop(images[n], torch.tensor(b), S) for b in boxes), flip.tolist())])
        with torch.no_grad():
            prob = teacher()((views - _MEAN) / _STD).softmax(1)
        val, ind = prob.topk(topk, dim=1)
        label = torch.stack([ind.float(), val], dim=1)     # int ids promoted to float, as FKD's torch.stack does
        dt = np.float16 if fp16 else np.float32
        rel = os.path.join("train", f"class{labels[n]:03d}", f"img{n:05d}.tar")
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        torch.save([coords.numpy().astype(dt), flip.numpy(), label.numpy().astype(dt)], os.path.join(root, rel))
        files.append(rel)
    return {"images": images, "labels": labels, "files": files}
