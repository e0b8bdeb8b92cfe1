"""The student loop of the storage-versus-accuracy benchmark: replayed views in, test top-1 (and its curve) out.

A training step is one stored batch ``(label_epoch, batch)`` of the relabel dump; the views are the
teacher's exact inputs (replayed once and shared by every variant and seed), the targets come from a
:class:`benchmarks.storage_vs_accuracy.label_sources.LabelSource`.  Every source but LPLD's pool visits the stored batches of
label epoch ``e % K`` in stored order in training epoch ``e`` (the paper's protocol when there are as many
training epochs as label epochs).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
from score_codec.progress import progress_bar

from benchmarks.storage_vs_accuracy.label_sources import BatchTable, LabelSource
from score_codec.training.student import kd_loss

__all__ = ["load_views", "train_one", "evaluate_fast"]

log = logging.getLogger(__name__)


def load_views(store: str, images, idx: np.ndarray, dtype: torch.dtype = torch.float16) -> List[torch.Tensor]:
    """Every stored view, replayed once: list over label epochs of (N, C, S, S) tensors (image-id order).

    ``store`` is the relabel store (its augmentation metadata); ``images[idx]`` are its N images.  Views are
    kept in ``dtype`` (fp16 halves the memory of 10,000 images x 100 epochs to 2 GB)."""
    from score_codec.training.dataset import CompressedSoftLabelDataset
    from score_codec.training.images import TensorImages

    sub = TensorImages(images.images[idx], np.asarray(images.targets)[idx], images.classes)
    ds = CompressedSoftLabelDataset(sub, store, decode_labels=False)
    out = []
    for e in progress_bar(range(ds.epochs), desc="replay views", unit="epoch", leave=False, enabled=True):
        ds.set_epoch(e)
        out.append(ds.views(np.arange(len(sub))).to(dtype))
    return out


@torch.no_grad()
def evaluate_fast(model: torch.nn.Module, test, size: int, batch_size: int = 1000) -> float:
    """Top-1 (fraction) on ``test``; in-memory sets at the model's input size are batched directly."""
    from score_codec.training.student import evaluate

    imgs = getattr(test, "images", None)
    if imgs is None or int(imgs.shape[-1]) != size:
        return evaluate(model, test, size, torch.device("cpu"))
    model.eval()
    y = torch.as_tensor(np.asarray(test.targets))
    correct = 0
    for s in range(0, len(imgs), batch_size):
        x = imgs[s:s + batch_size]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        correct += int((model(x).argmax(1) == y[s:s + batch_size]).sum())
    return correct / max(len(imgs), 1)


def train_one(source: LabelSource, table: BatchTable, views: List[torch.Tensor], cfg: Any, seed: int, test,
              num_classes: int, eval_fractions: Sequence[float] = (), progress: bool = True) -> Dict[str, Any]:
    """Train a ConvNet student on ``source``'s targets over the replayed ``views``; test top-1.

    ``cfg`` needs student_width, student_depth, T, lr, wd, bf16 and train_epochs / train_steps (both None:
    one pass per label epoch).  AdamW and a cosine schedule over all steps; ``torch.manual_seed(seed)`` before
    the model is built, so every variant starts from the same weights and (except LPLD) runs the same steps.
    ``eval_fractions`` adds test top-1 after those shares of the steps (the convergence curve).
    Returns ``{"top1", "curve": [[fraction, top1], ...], "final_loss", "steps"}``.
    """
    from score_codec.training.models import ConvNet

    torch.manual_seed(seed)
    model = ConvNet(in_channels=int(views[0].shape[1]), num_classes=num_classes, width=cfg.student_width,
                    depth=cfg.student_depth, norm=getattr(cfg, "student_norm", "instance"))
    # channels-last: the same computation up to float rounding and faster per step on CPU; the cache key
    # leaves the memory layout out, as it leaves out the machine
    model = model.to(memory_format=torch.channels_last)
    epochs = cfg.train_epochs or (math.ceil(cfg.train_steps / table.per_epoch) if getattr(cfg, "train_steps", None)
                                  else table.epochs)
    plan = source.schedule(table, epochs, seed)
    steps = sum(len(p) for p in plan)
    checkpoints = {max(1, int(round(f * steps))): f for f in eval_fractions}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    T = float(getattr(source, "temperature", None) or cfg.T)
    bf16 = bool(getattr(cfg, "bf16", False))
    size = int(views[0].shape[-1])
    curve: List[List[float]] = []
    last = float("nan")
    done = 0
    model.train()
    bar = progress_bar(total=steps, desc=f"student {source.name} s{seed}", unit="step", leave=False, enabled=progress)
    for epoch_plan in plan:
        for le, b in epoch_plan:
            ids = table.images(le, b)
            x = views[le][torch.as_tensor(ids)].float()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x)
            loss = kd_loss(out, source.targets(le, ids, T), T, probs=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last = loss.item()
            done += 1
            bar.update(1)
            if done in checkpoints and done < steps:
                curve.append([checkpoints[done], evaluate_fast(model, test, size)])
                model.train()
    bar.close()
    top1 = evaluate_fast(model, test, size)
    if eval_fractions:
        curve.append([1.0, top1])
    log.info("%s seed %d: student top-1 %.4f (%d steps)", source.name, seed, top1, steps)
    return dict(top1=top1, curve=curve, final_loss=last, steps=steps)
