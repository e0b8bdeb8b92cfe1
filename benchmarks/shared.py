"""Helpers the benchmarks share: the cache folders, a cached Fashion-MNIST teacher and its logits on
SRe2L-style augmented views, logit fidelity, synthetic teacher-like logits and augmentation metadata.

    from benchmarks.shared import train_teacher, teacher_logits, load_subset
    model = train_teacher()                        # trained once, then read from benchmarks/cache/
    images, labels = load_subset("train", 500)
    y = teacher_logits(model, images, k=50, seed=0)            # (500, 50, 10) float32

The teacher is trained by :func:`score_codec.training.student.train_teacher`; this module only chooses its
architecture and augmentation and caches the weights.  Views follow SRe2L relabelling
(``score_codec.training.relabel``): per view a RandomResizedCrop (scale (0.08, 1)) resized back to 28x28 and a
flip with p = 0.5; per batch of ``mix_batch`` views one CutMix with lam ~ Beta(1, 1) and a random partner
permutation.  Each of the K epochs draws a fresh batch order.  The teacher runs in fp32 for labels (as
``relabel`` does); training uses bf16 autocast for speed.
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
from score_codec.progress import progress_bar

from score_codec.training import student as _training
from score_codec.training.augment import apply_mix, crop_coords, cutmix_box, hflip, resized_crop, sample_crop
from score_codec.training.images import TensorImages, load_fashion_mnist
from score_codec.training.models import ResNet, load_model, save_model

__all__ = ["BENCH_DIR", "CACHE_DIR", "RUNS_DIR", "add_store_arguments", "cpu_name", "load_subset", "train_teacher", "evaluate_teacher",
           "teacher_logits", "cached_teacher_logits", "logit_quality", "replay_epochs", "teacher_like",
           "teacher_like_logits", "make_meta", "reseal", "feature_pool"]

log = logging.getLogger(__name__)

#: the benchmarks package folder
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
#: git-ignored folder for teachers, logit dumps and each benchmark's step cache
CACHE_DIR = os.path.join(BENCH_DIR, "cache")
#: git-ignored folder for the results of runs that are not committed
RUNS_DIR = os.path.join(BENCH_DIR, "runs")


def add_store_arguments(p) -> None:
    """The codec options of a benchmark's label store: ``--method``, ``--rank``, ``--quant``."""
    p.add_argument("--method", default="global", help="codec of the store")
    p.add_argument("--rank", type=int, default=8, help="rank of the codec's basis")
    p.add_argument("--quant", default="fp16", help="quantisation of the stored factors (fp16, as in the "
                   "committed results; the library's default is int8)")


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
    """Images as float in [0, 1]: uint8 scaled by 1/255, floats as they are (same shape)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def evaluate_teacher(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy (fraction) of ``model`` on whole images (uint8 or float (N, C, H, W))."""
    model.eval()
    correct = 0
    for s in range(0, len(images), batch):
        correct += int((model(_float(images[s:s + batch])).argmax(1) == labels[s:s + batch]).sum())
    return correct / max(len(images), 1)


def _shift_flip_views(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The Fashion-MNIST teacher's augmentation: a random flip per image and one +-2 pixel shift per batch
    (float (B, C, H, W) in, same shape out)."""
    x = hflip(x, torch.rand(len(x), generator=g) < 0.5)
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
    return torch.roll(F.pad(x, (2, 2, 2, 2)), (dy, dx), (2, 3))[:, :, 2:-2, 2:-2]


def train_teacher(epochs: int = 3, width: int = 16, blocks: Sequence[int] = (1, 1, 1), lr: float = 2e-3,
                  batch_size: int = 256, seed: int = 0, bf16: bool = True, cache_dir: str = CACHE_DIR,
                  progress: bool = True) -> torch.nn.Module:
    """A small ResNet trained on all 60k Fashion-MNIST training images, cached as a safetensors file.

    :func:`score_codec.training.student.train_teacher` with cross-entropy, AdamW, a one-cycle schedule,
    random flips and +-2 pixel shifts, bf16 autocast (CPU or CUDA).  The test accuracy is logged and written
    next to the weights as JSON.  A second call with the same arguments loads
    ``cache_dir/teacher_resnet_w{width}_b{blocks}_e{epochs}_s{seed}.safetensors``.
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
    model = ResNet(in_channels=1, num_classes=10, width=width, blocks=blocks)
    t0 = time.time()
    _training.train_teacher(TensorImages(x, y, [str(c) for c in range(10)]), model, epochs=epochs, lr=lr,
                            batch_size=batch_size, seed=seed, device="cpu", bf16=bf16, progress=progress,
                            channels_last=False, schedule="one-cycle", views=_shift_flip_views)
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
    bar = progress_bar(total=n * k, desc="teacher views", unit="view", unit_scale=True, enabled=progress)
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


def teacher_like(n: int, k: int, c: int = 1000, d: int = 128, seed: int = 0) -> torch.Tensor:
    """(n, k, c) logits ``relu(h) W + b``: per-image features plus per-view jitter, a fixed random head."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 1, d, generator=g) * 1.5 + 0.7 * torch.randn(n, k, d, generator=g)
    w = torch.randn(d, c, generator=g) * (2.5 / d ** 0.5)
    return torch.relu(h) @ w + torch.randn(c, generator=g)


def teacher_like_logits(n: int, k: int, c: int, rank: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, k, c) logits shaped like a teacher's: a dominant class per image, a few shared
    directions varying across augmentations, and small noise (synthetic; no teacher is trained)."""
    g = torch.Generator().manual_seed(seed)
    cls = torch.randint(0, c, (n,), generator=g)
    base = torch.randn(n, 1, c, generator=g) * 2
    base[torch.arange(n), 0, cls] += 8
    coef = torch.randn(n, k, rank, generator=g) * 2
    dirs = torch.randn(n, rank, c, generator=g)
    return base + coef @ dirs + 0.05 * torch.randn(n, k, c, generator=g)


def make_meta(n: int, k: int, batch: int = 4, seed: int = 0):
    """An AugMeta for n images x k epochs, shuffled per epoch into batches with cutmix parameters."""
    from score_codec.store.meta import AugMeta, BATCH_DTYPE, IMAGE_DTYPE, MIX_CUTMIX, ROW_DTYPE

    rng = np.random.default_rng(seed)
    rows, batches = [], []
    for e in range(k):
        order = rng.permutation(n)
        for b, s in enumerate(range(0, n, batch)):
            ids = order[s : s + batch]
            start = len(rows)
            perm = rng.permutation(len(ids))
            for p, i in enumerate(ids):
                coords = rng.random(4).astype(np.float32)
                rows.append((i, e, e, b, p, coords, rng.integers(0, 2), perm[p]))
            box = rng.integers(0, 28, 4)
            batches.append((e, b, start, len(ids), MIX_CUTMIX, rng.beta(1, 1), box))
    images = np.array([(28, 28, i % 3) for i in range(n)], IMAGE_DTYPE)
    return AugMeta(rows=np.array(rows, ROW_DTYPE), batches=np.array(batches, BATCH_DTYPE), images=images,
                   attrs={"input_size": 28, "source_format": "test"})


def feature_pool(n: int, d: int, c: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A synthetic selection pool: ``n`` feature rows (n, d) float32 around ``c`` random class means, and
    their classes (n,) int64."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = mu[y] + 2.0 * torch.randn(n, d, generator=g)
    return x, y

def _retoc(path: str, rebuild: bool) -> None:
    """Recompute a file's table of contents (docs/FORMAT.md section 2.2): ``rebuild`` describes its datasets
    afresh with h5py (after a test edited them on purpose); otherwise only the checksums and the file size
    are recomputed from the bytes, without libhdf5, whatever the (possibly damaged) fields say."""
    import json
    import struct
    import zlib

    from score_codec.store import header

    if rebuild:
        import h5py

        with h5py.File(path, "r+") as f:
            old = f[header.TOC_DATASET][()].tobytes()
            names = json.loads(old)["datasets"]
            del f[header.TOC_DATASET]
            sections = {}
            for name, e in names.items():
                arr = f[name][()]
                sections[name] = (e["dtype"], None if e["crc32"] is None else header.table_crc32(arr))
            toc = header.write_toc(f, sections)
        header.write_toc_prefix(path, toc)
        return
    data = bytearray(open(path, "rb").read())
    if len(data) < header.PREFIX_BYTES or data[:8] != b"SCORELS\x00":
        return
    fields = list(struct.unpack_from("<8sIIQQQI", data))
    off, n = fields[4], fields[5]
    blob = bytes(data[off:off + n]) if off + n <= len(data) else b""
    try:
        toc = json.loads(blob)
        for e in toc["datasets"].values():
            if e.get("crc32") is not None and e["offset"] + e["bytes"] <= len(data):
                e["crc32"] = zlib.crc32(bytes(data[e["offset"]:e["offset"] + e["bytes"]]))
        fresh = json.dumps(toc, separators=(",", ":")).encode()
        if len(fresh) <= n:
            blob = fresh + b" " * (n - len(fresh))
            data[off:off + n] = blob
    except Exception:       # the damage made the table unparsable: only its checksum is recomputed
        pass
    fields[3], fields[6] = len(data), zlib.crc32(blob)
    head = struct.pack("<8sIIQQQI", *fields)
    data[:header.PREFIX_BYTES] = head + struct.pack("<I", zlib.crc32(head))
    open(path, "wb").write(bytes(data))

def reseal(path, rebuild: bool = True) -> None:
    """Recompute a store's integrity data (docs/FORMAT.md sections 2.1 and 2.2) after a test edited its
    files on purpose, so that the deeper check the test targets is the one that fires.  ``rebuild=False``
    recomputes checksums and sizes from the raw bytes only (no libhdf5: for damaged files)."""
    import json

    from score_codec.store.integrity import _meta_crc, index_entry

    from score_codec.store.header import TOC_PREFIX_VERSION, probe_prefix

    path = str(path)
    index = path if os.path.isfile(path) else os.path.join(path, "index.h5")
    try:
        toc = probe_prefix(index) == TOC_PREFIX_VERSION
    except Exception:   # a damaged prefix: nothing to recompute in it
        toc = False
    if toc:
        _retoc(index, rebuild)
    elif os.path.isfile(path):   # a store without a table of contents (format version 2)
        from score_codec.store.integrity import write_prefix

        if open(path, "rb").read(8) == b"SCORELS\x00":
            write_prefix(path)
        return
    if os.path.isfile(path):
        return
    mf = os.path.join(path, "manifest.json")
    m = json.load(open(mf))
    for e in m["shards"]:
        fn = os.path.join(path, "shards", e["name"])
        if os.path.isfile(fn) and isinstance(e.get("data_offset"), int) and isinstance(e.get("bytes"), int):
            e["file_bytes"] = os.path.getsize(fn)
            e["meta_crc32"] = _meta_crc(fn, e["data_offset"], e["bytes"])
    m["index"] = index_entry(os.path.join(path, "index.h5"))
    with open(mf, "w") as fh:
        json.dump(m, fh)
