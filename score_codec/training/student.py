"""Train a student from a label store (KL at temperature T), or a quick teacher on hard labels.

``train_student`` replays the dump: views and labels come from
:class:`~score_codec.training.dataset.CompressedSoftLabelDataset` in the stored batch order, so every student
input is exactly the teacher's input for the label it is trained on; training epoch e uses label epoch
``e % K``.  Loss ``KL(softmax(teacher / T) || softmax(student / T))`` with ``batchmean`` (SRe2L / SCORE, no
T^2 factor), AdamW, cosine learning-rate schedule over all steps.  The command line is
``score-codec train-teacher`` and ``score-codec train-student``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from ..progress import progress_bar

from ..errors import InputError
from .augment import resized_crop
from .dataset import CompressedSoftLabelDataset, LabelDecoder
from .images import load_images
from .inference import channels_last_if_safe
from .normalize import Normalization, normalize_views
from .replay import ReplayBatchSampler

__all__ = ["train_student", "train_teacher", "evaluate", "kd_loss"]

log = logging.getLogger(__name__)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float, *,
            probs: bool = False) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the batch (B, C).

    ``probs=True``: ``teacher_logits`` is already the target distribution p (B, C), rows summing to 1, and
    the loss is KL(p || softmax(student/T)); for targets that have no logits (a top-k label, a mixture of
    hard labels)."""
    target = teacher_logits.float() if probs else F.softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(F.log_softmax(student_logits.float() / T, dim=1), target, reduction="batchmean")


def _device(device: Optional[str]) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def evaluate(model: torch.nn.Module, test_set, input_size: int, device, batch_size: int = 256,
             normalize: Optional[Normalization] = None) -> float:
    """Top-1 accuracy (fraction) on ``test_set``; each image is resized whole to ``input_size`` and then
    normalised with ``normalize`` ((mean, std) per channel, as the training views were; None: not at all)."""
    model.eval()
    correct = total = 0
    for s in range(0, len(test_set), batch_size):
        items = [test_set[i] for i in range(s, min(s + batch_size, len(test_set)))]
        x = torch.stack([resized_crop(torch.as_tensor(img), (0, 0, img.shape[-2], img.shape[-1]), input_size)
                         for img, _ in items])
        x = normalize_views(x, normalize).to(device)
        y = torch.tensor([c for _, c in items], device=device)
        correct += int((model(x).argmax(1) == y).sum())
        total += len(items)
    return correct / max(total, 1)


def train_student(dataset_or_store, images=None, test_set=None, model_fn: Callable[[], torch.nn.Module] = None,
                  epochs: int = 10, T: float = 20.0, lr: float = 1e-3, wd: float = 0.01,
                  batch_size: Optional[int] = None, seed: int = 0, device: Optional[str] = None,
                  bf16: bool = False, num_workers: int = 0, progress: bool = True,
                  channels_last: bool = True) -> Dict[str, Any]:
    """Train ``model_fn()`` on replayed views and decoded soft labels; evaluate top-1 on ``test_set``.

    Args:
        dataset_or_store: a :class:`CompressedSoftLabelDataset`, or a store path / LabelStore used
            with ``images`` (a spec or dataset).
        test_set: held-out (image, class) dataset or spec (e.g. ``"fashion-mnist:test"``).
        batch_size: None uses the dump's; another size is refused when the dump mixes images.
        bf16: autocast the student to bfloat16 (CPU or CUDA).
        num_workers: DataLoader workers (persistent; the epoch reaches them through shared memory).
        channels_last: keep the student's weights (and so its activations) channels-last: the same
            training up to float rounding, faster per step for small ConvNets (kept
            NCHW when a probe forward disagrees or fails, e.g. a ``view`` of an activation; see
            :func:`~score_codec.training.inference.channels_last_if_safe`).
    Returns ``{"top1", "final_loss", "epochs", "steps", "label_epochs", "device"}``.
    """
    dev = _device(device)
    on_gpu = dev.type == "cuda"
    ds = dataset_or_store
    if not isinstance(ds, CompressedSoftLabelDataset):
        # on the GPU, labels are decoded next to the student; workers only build the views
        ds = CompressedSoftLabelDataset(images, dataset_or_store, decode_labels=not on_gpu)
    store = ds.store
    decoder = LabelDecoder(store, device=dev) if not ds.decode_labels else None
    test = load_images(test_set) if isinstance(test_set, str) else test_set
    torch.manual_seed(seed)
    model = model_fn().to(dev)
    if channels_last:
        first = torch.as_tensor(ds.images[0][0])
        ch, side = int(first.shape[0]), ds.input_size or int(first.shape[-1])
        channels_last_if_safe(model, torch.rand(2, ch, side, side, generator=torch.Generator().manual_seed(0)).to(dev))
    sampler = ReplayBatchSampler(store, 0, batch_size=batch_size)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
                        pin_memory=on_gpu)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    if epochs > ds.epochs:
        log.info("training %d epochs on %d stored label epochs: replaying label epoch e %% %d", epochs, ds.epochs, ds.epochs)
    last = torch.tensor(float("nan"))
    bar = progress_bar(total=steps, desc="student", unit="step", enabled=progress)
    for e in range(epochs):
        label_epoch = e % max(ds.epochs, 1)
        ds.set_epoch(label_epoch)
        sampler.set_epoch(label_epoch)
        model.train()
        for x, y_soft, _, idx in loader:
            x = x.to(dev, non_blocking=True)
            target = decoder(idx, label_epoch) if decoder is not None else y_soft.to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = kd_loss(out, target, T)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = loss.detach()
            bar.update(1)
        bar.set_postfix(epoch=e, loss=f"{last.item():.4g}")
    bar.close()
    norm = ds.normalization if ds.normalize else None   # test images get the training views' normalisation
    top1 = evaluate(model, test, ds.input_size, dev, normalize=norm) if test is not None else float("nan")
    log.info("student top-1 %.4f after %d epochs (%d steps)", top1, epochs, steps)
    return dict(top1=top1, final_loss=float(last), epochs=epochs, steps=steps, label_epochs=ds.epochs, device=str(dev),
                model=model)


def _unit_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float in [0, 1]: uint8 scaled by 1/255, floats as they are (same shape)."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def train_teacher(images, model: torch.nn.Module, epochs: int = 2, lr: float = 2e-3, batch_size: int = 128,
                  scale: Tuple[float, float] = (0.4, 1.0), seed: int = 0, device: Optional[str] = None,
                  bf16: bool = True, progress: bool = True, channels_last: bool = True,
                  schedule: str = "cosine",
                  views: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None) -> torch.nn.Module:
    """Fit ``model`` on hard labels of RandomResizedCrop(``scale``) + flip views of ``images`` (the relabel
    augmentation, so the teacher is right on the views it labels): cross-entropy, AdamW (weight decay
    5e-4), cosine schedule, bf16 autocast, channels-last weights (``channels_last``, as
    in :func:`train_student`).  ``images``: a spec or a dataset of (float CHW in [0, 1], class) with equal
    image sizes.  Returns ``model`` itself, moved to the device (and to channels-last weights), trained in
    place, in eval mode.

    ``schedule``: ``"cosine"`` (cosine decay from ``lr`` over all steps) or ``"one-cycle"``
    (``torch.optim.lr_scheduler.OneCycleLR`` with peak ``lr`` after 15 % of the steps).  ``views``: the
    training augmentation, ``views(x, generator) -> x'`` on a float (B, C, H, W) batch in [0, 1] (the same
    shape out); None uses RandomResizedCrop(``scale``) + flip."""
    from .augment import random_resized_views

    dev = _device(device)
    ds = load_images(images) if isinstance(images, str) else images
    if hasattr(ds, "images"):      # in-memory sets: index the tensors directly
        xs, ys = ds.images, torch.as_tensor(np.asarray(ds.targets))
    else:
        items = [ds[i] for i in range(len(ds))]
        xs, ys = torch.stack([x for x, _ in items]), torch.tensor([c for _, c in items])
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    steps = epochs * math.ceil(len(xs) / batch_size)
    model = model.to(dev)
    if channels_last:
        channels_last_if_safe(model, _unit_float(xs[:2]).to(dev))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    if schedule == "one-cycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    else:
        raise InputError(f"train_teacher: schedule {schedule!r}: expected 'cosine' or 'one-cycle'")
    if views is None:
        views = lambda x, g: random_resized_views(x, g, scale=scale)   # noqa: E731
    bar = progress_bar(total=steps, desc="teacher", unit="step", enabled=progress)
    for _ in range(epochs):
        order = torch.randperm(len(xs), generator=g)
        for s in range(0, len(xs), batch_size):
            b = order[s:s + batch_size]
            x = _unit_float(xs[b])
            x = views(x, g).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), ys[b].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()
