"""The training step with soft labels on a device: raw fp16 labels against our store, decoded two ways.

    python -m benchmarks.gpu_step --device cuda                     # ResNet-18 at 224 px, batch 256, AMP
    python -m benchmarks.gpu_step --device cpu --steps 3 --image-size 32 --batch-size 16   # toy size, seconds

A student trains for a fixed number of steps on views held on the device (the same views in every mode,
so only the label path differs), with a knowledge-distillation loss against 1000-class teacher-like logits
(``relu(h) W + b``: per-image features plus per-view jitter through a fixed random head):

* ``raw``: fp16 logits (N, K, C) held on the device, rows gathered per batch;
* ``device``: our store decoded on the device by ``LabelDecoder`` (one batched decode per step);
* ``workers``: our store decoded in DataLoader workers, the rows copied to the device (pinned, non-blocking).

Each step is timed from the label fetch to the optimizer step with a device synchronisation at the end.  The
modes run in rounds (the order rotates), each from the same initial weights; the figure per mode is the
median step over all its timed steps.  A separate loop times the label fetch alone.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.shared import add_store_arguments, teacher_like

__all__ = ["MODES", "device_name", "student", "StepLabels", "measure", "render", "main"]

HERE = os.path.dirname(os.path.abspath(__file__))
MODES = ("raw", "device", "workers")
MODE_NAMES = {"raw": "raw fp16 labels on the device (gather)", "device": "our store, LabelDecoder on the device",
              "workers": "our store, decoded in DataLoader workers"}


def device_name(device: torch.device) -> str:
    """The GPU's name and CUDA version, or the CPU model and core count."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"


def student(arch: str, num_classes: int = 1000) -> nn.Module:
    """``"resnet18"``: score's ResNet with blocks (2, 2, 2, 2) and the ImageNet stem (7x7 stride-2 conv,
    batch norm, ReLU, 3x3 stride-2 max-pool), layer for layer torchvision's resnet18; ``"convnet"``: score's
    ConvNet (width 128, depth 3)."""
    from score_codec.training.models import ConvNet, ResNet

    if arch == "convnet":
        return ConvNet(3, num_classes, width=128, depth=3)
    if arch != "resnet18":
        raise ValueError(f"arch must be 'resnet18' or 'convnet', found {arch!r}")
    model = ResNet(3, num_classes, width=64, blocks=(2, 2, 2, 2))
    # score's ResNet has the CIFAR stem (3x3, no pooling): at 224 px its stages would see 16x the positions
    model.stem = nn.Sequential(nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    return model


class StepLabels(torch.utils.data.Dataset):
    """Item ``s`` is the (B, C) float32 label batch of step ``s``, decoded from the store in this process.

    Args:
        store: the store's path (opened lazily in each worker).
        ids, epochs: (steps, B) int64 image ids and label epochs of every step.
    """

    def __init__(self, store: str, ids: torch.Tensor, epochs: torch.Tensor) -> None:
        self.path, self.ids, self.epochs = store, ids.numpy(), epochs.numpy()
        self._store, self._pid = None, None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, s: int) -> torch.Tensor:
        from score_codec import LabelStore

        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = LabelStore(self.path), os.getpid()
        return torch.as_tensor(self._store.rows(self.ids[s], self.epochs[s]))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _centred(y: torch.Tensor) -> torch.Tensor:
    y = y.float().cpu()
    return y - y.mean(1, keepdim=True)


def _schedule(n: int, k: int, batch: int, steps: int, seed: int):
    """(steps, B) image ids (epoch-wise permutations) and (steps, B) label epochs."""
    g = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch)
    ids, eps = [], []
    for s in range(steps):
        e = s // per_epoch
        if s % per_epoch == 0:
            perm = torch.randperm(n, generator=g)
        ids.append(perm[(s % per_epoch) * batch:(s % per_epoch + 1) * batch])
        eps.append(torch.full((batch,), e % k, dtype=torch.int64))
    return torch.stack(ids), torch.stack(eps)


def measure(device: str = "cuda", arch: str = "resnet18", steps: int = 50, warmup: int = 10, rounds: int = 2,
            batch_size: int = 256, image_size: int = 224, images: Optional[int] = None, label_epochs: int = 4,
            num_classes: int = 1000, workers: Optional[int] = None, amp: Optional[bool] = None,
            method: str = "global", rank: int = 8, quant: str = "fp16", temperature: float = 1.0, seed: int = 0,
            tmp: Optional[str] = None) -> Dict[str, Any]:
    """Train ``arch`` for ``warmup + steps`` steps per mode and round; return the JSON-ready result.

    ``images`` (default 16 batches' worth) and ``label_epochs`` size the label set; the views are a pool of
    ``min(images, 2 * batch_size)`` random images on the device, indexed by image id.  ``amp`` defaults to
    on for CUDA (float16 autocast with a gradient scaler), off elsewhere.  ``workers`` defaults to
    min(4, CPUs).  Result: config, device, per-mode step times (median, p10, p90, all), label-fetch
    times, overheads of ``device`` and ``workers`` over ``raw``, and ``label_check``: max abs differences of
    row-centred step-0 labels: each decoding mode against ``raw``, ``codec_error`` (the reader's CPU decode
    against ``raw``), the two decodes against each other, and ``raw`` against other images' rows (the size of
    a wrong-row error).
    """
    import score_codec as sc
    from score_codec.training.dataset import LabelDecoder

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    amp = (dev.type == "cuda") if amp is None else bool(amp)
    workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
    n = int(images) if images else 16 * batch_size
    total = warmup + steps
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    own_tmp = tempfile.TemporaryDirectory(prefix="gpu_step_") if tmp is None else None
    tmp = tmp or own_tmp.name
    try:
        y = teacher_like(n, label_epochs, num_classes, seed=seed)
        store = os.path.join(tmp, "labels.store")
        t0 = time.perf_counter()
        stats = sc.encode(y, store, method=method, rank=rank, quant=quant, device=device, overwrite=True)
        encode_s = time.perf_counter() - t0
        raw = y.to(torch.float16).to(dev)                        # (N, K, C) fp16 on the device
        del y
        ids, eps = _schedule(n, label_epochs, batch_size, total, seed)
        ids_dev, eps_dev = ids.to(dev), eps.to(dev)
        pool_n = min(n, 2 * batch_size)
        g = torch.Generator().manual_seed(seed + 1)
        pool = torch.rand(pool_n, 3, image_size, image_size, generator=g).to(dev)
        fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
        pool = pool.contiguous(memory_format=fmt)
        torch.manual_seed(seed)
        init = {k: v.clone() for k, v in student(arch, num_classes).state_dict().items()}
        decoder = LabelDecoder(store, dev)

        def loader():
            return iter(torch.utils.data.DataLoader(
                StepLabels(store, ids, eps), batch_size=None, num_workers=workers, pin_memory=dev.type == "cuda",
                persistent_workers=False, prefetch_factor=4 if workers else None))

        def fetch(mode: str, s: int, it) -> torch.Tensor:
            if mode == "raw":
                return raw[ids_dev[s], eps_dev[s]].float()
            if mode == "device":
                return decoder(ids[s], eps[s])
            return next(it).to(dev, non_blocking=True)

        step_ms: Dict[str, List[float]] = {m: [] for m in MODES}
        label_ms: Dict[str, List[float]] = {m: [] for m in MODES}
        first: Dict[str, torch.Tensor] = {}
        for r in range(rounds):
            for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
                model = student(arch, num_classes).to(dev).to(memory_format=fmt)
                model.load_state_dict(init)
                model.train()
                opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
                scaler = torch.amp.GradScaler(dev.type, enabled=amp)
                it = loader() if mode == "workers" else None
                for s in range(total):
                    _sync(dev)
                    t = time.perf_counter()
                    target = fetch(mode, s, it)
                    x = pool[ids_dev[s] % pool_n]
                    with torch.autocast(dev.type, dtype=torch.float16, enabled=amp):
                        out = model(x)
                    loss = F.kl_div(F.log_softmax(out.float() / temperature, 1),
                                    F.softmax(target / temperature, 1), reduction="batchmean")
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                    _sync(dev)
                    if s >= warmup:
                        step_ms[mode].append(1e3 * (time.perf_counter() - t))
                    if s == 0 and mode not in first:
                        first[mode] = _centred(target)
                del it
                # the label fetch alone, over the same steps
                it = loader() if mode == "workers" else None
                for s in range(total):
                    _sync(dev)
                    t = time.perf_counter()
                    fetch(mode, s, it)
                    _sync(dev)
                    if s >= warmup:
                        label_ms[mode].append(1e3 * (time.perf_counter() - t))
                del it, model, opt
        # the codec's own error on these rows, decoded on the CPU by the reader, is what the modes may differ by
        reference = _centred(sc.LabelStore(store).rows(ids[0], eps[0]))
        other = _centred(raw[ids_dev[0].roll(1), eps_dev[0]])
        check = {f"{m}_vs_raw": float((first[m] - first["raw"]).abs().max()) for m in ("device", "workers")}
        check["codec_error"] = float((reference - first["raw"]).abs().max())
        check["device_vs_workers"] = float((first["device"] - first["workers"]).abs().max())
        check["other_rows_vs_raw"] = float((other - first["raw"]).abs().max())
    finally:
        if own_tmp is not None:
            own_tmp.cleanup()

    def summary(v: List[float]) -> Dict[str, Any]:
        q = np.percentile(v, [10, 90])
        return dict(median_ms=statistics.median(v), p10_ms=float(q[0]), p90_ms=float(q[1]), all_ms=v)

    res: Dict[str, Any] = {m: dict(step=summary(step_ms[m]), label=summary(label_ms[m])) for m in MODES}
    base = res["raw"]["step"]["median_ms"]
    for m in MODES:
        res[m]["overhead_vs_raw"] = res[m]["step"]["median_ms"] / base - 1.0
        res[m]["images_per_s"] = 1e3 * batch_size / res[m]["step"]["median_ms"]
    return dict(benchmark="gpu_step", device=device_name(dev), torch=torch.__version__,
                config=dict(device=device, arch=arch, steps=steps, warmup=warmup, rounds=rounds, batch_size=batch_size,
                            image_size=image_size, images=n, label_epochs=label_epochs, num_classes=num_classes,
                            workers=workers, amp=amp, temperature=temperature,
                            store=dict(method=method, rank=rank, quant=quant), seed=seed),
                store=dict(ratio=float(stats["ratio"]), label_bytes=int(stats["label_bytes"]), encode_s=encode_s),
                results=res, label_check=check)


def render(res: Dict[str, Any]) -> str:
    """The Markdown report of a :func:`measure` result."""
    c = res["config"]
    lines = [f"# Training step with soft labels: {res['device']}", "",
             f"{c['arch']} at {c['image_size']} px, batch {c['batch_size']}, {'AMP float16' if c['amp'] else 'float32'}, "
             f"{c['num_classes']} classes; {c['steps']} timed steps after {c['warmup']} warm-up steps, {c['rounds']} "
             f"rounds per mode; store {c['store']['method']} rank {c['store']['rank']} {c['store']['quant']} "
             f"({res['store']['ratio']:.0f}x smaller than fp16); {c['workers']} DataLoader workers; torch {res['torch']}.",
             "", "| labels | median step (ms) | p10-p90 (ms) | images/s | step vs raw | label fetch alone (ms) |",
             "|---|---:|---:|---:|---:|---:|"]
    for m in MODES:
        r = res["results"][m]
        lines.append(f"| {MODE_NAMES[m]} | {r['step']['median_ms']:.2f} | {r['step']['p10_ms']:.2f}-{r['step']['p90_ms']:.2f} "
                     f"| {r['images_per_s']:.0f} | {100 * r['overhead_vs_raw']:+.1f} % | {r['label']['median_ms']:.3f} |")
    k = res["label_check"]
    lines += ["", f"Same labels: step 0's row-centred logits differ from the raw fp16 rows by at most "
                  f"{k['device_vs_raw']:.3g} (device decode) and {k['workers_vs_raw']:.3g} (workers), the codec's own "
                  f"error on those rows being {k['codec_error']:.3g}; the two decodes differ by "
                  f"{k['device_vs_workers']:.2g}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_step", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", choices=("resnet18", "convnet"), default="resnet18")
    p.add_argument("--steps", type=int, default=50, help="timed steps per mode and round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: min(10, steps))")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--images", type=int, default=None, help="images in the label set (default 16 batches)")
    p.add_argument("--label-epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers of the workers mode (default min(4, CPUs))")
    p.add_argument("--no-amp", action="store_true", help="float32 on CUDA too")
    add_store_arguments(p)
    p.add_argument("--out", default=None, help="folder for gpu_step.json and gpu_step.md (default: print only)")
    a = p.parse_args(argv)
    res = measure(a.device, a.arch, a.steps, min(10, a.steps) if a.warmup is None else a.warmup, a.rounds, a.batch_size,
                  a.image_size, a.images, a.label_epochs, workers=a.workers, amp=False if a.no_amp else None,
                  method=a.method, rank=a.rank, quant=a.quant)
    md = render(res)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "gpu_step.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        with open(os.path.join(a.out, "gpu_step.md"), "w") as fh:
            fh.write(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
