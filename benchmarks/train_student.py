"""Train a student from a compressed label store and report its test top-1.

Importable (``train_student``, ``train_teacher``) and a script::

    python benchmarks/train_student.py --images fashion-mnist:train --store labels.store \
        --test fashion-mnist:test --arch convnet --epochs 10

Loss: ``KL(softmax(teacher / T) || softmax(student / T))`` with ``batchmean`` (SRe2L / SCORE, no T^2
factor), AdamW, cosine learning-rate schedule over all steps.  Views and labels come from
:class:`score_codec.training.dataset.CompressedSoftLabelDataset` in the dump's stored batch order, so every
student input is exactly the teacher's input for the label it is trained on.  When training runs for
more epochs than the dump holds, label epoch ``e % K`` is replayed (logged).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any, Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from score_codec.training.augment import resized_crop
from score_codec.training.images import load_images
from score_codec.errors import ScoreError
from score_codec.training.dataset import CompressedSoftLabelDataset, LabelDecoder, ReplayBatchSampler
from score_codec.training.models import ARCHITECTURES, build_model, save_model

__all__ = ["train_student", "train_teacher", "evaluate", "kd_loss", "main"]

log = logging.getLogger("train_student")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)), summed over classes, averaged over the batch (B, C)."""
    return F.kl_div(F.log_softmax(student_logits.float() / T, dim=1), F.softmax(teacher_logits.float() / T, dim=1),
                    reduction="batchmean")


def _device(device: Optional[str]) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@torch.no_grad()
def evaluate(model: torch.nn.Module, test_set, input_size: int, device, batch_size: int = 256) -> float:
    """Top-1 accuracy (fraction) on ``test_set``; each image is resized whole to ``input_size``."""
    model.eval()
    correct = total = 0
    for s in range(0, len(test_set), batch_size):
        items = [test_set[i] for i in range(s, min(s + batch_size, len(test_set)))]
        x = torch.stack([resized_crop(torch.as_tensor(img), (0, 0, img.shape[-2], img.shape[-1]), input_size)
                         for img, _ in items]).to(device)
        y = torch.tensor([c for _, c in items], device=device)
        correct += int((model(x).argmax(1) == y).sum())
        total += len(items)
    return correct / max(total, 1)


def train_student(dataset_or_store, images=None, test_set=None, model_fn: Callable[[], torch.nn.Module] = None,
                  epochs: int = 10, T: float = 20.0, lr: float = 1e-3, wd: float = 0.01,
                  batch_size: Optional[int] = None, seed: int = 0, device: Optional[str] = None,
                  bf16: bool = False, num_workers: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Train ``model_fn()`` on replayed views and decoded soft labels; evaluate top-1 on ``test_set``.

    Args:
        dataset_or_store: a :class:`CompressedSoftLabelDataset`, or a store path / LabelStore used
            with ``images`` (a spec or dataset).
        test_set: held-out (image, class) dataset or spec (e.g. ``"fashion-mnist:test"``).
        batch_size: None uses the dump's; another size is refused when the dump mixes images.
        bf16: autocast the student to bfloat16 (CPU or CUDA).
        num_workers: DataLoader workers (persistent; the epoch reaches them through shared memory).
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
    sampler = ReplayBatchSampler(store, 0, batch_size=batch_size)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, persistent_workers=num_workers > 0,
                        pin_memory=on_gpu)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    steps = epochs * len(sampler)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    if epochs > ds.epochs:
        log.info("training %d epochs on %d stored label epochs: replaying label epoch e %% %d", epochs, ds.epochs, ds.epochs)
    last = torch.tensor(float("nan"))
    bar = tqdm(total=steps, desc="student", unit="step", disable=not progress)
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
    top1 = evaluate(model, test, ds.input_size, dev) if test is not None else float("nan")
    log.info("student top-1 %.4f after %d epochs (%d steps)", top1, epochs, steps)
    return dict(top1=top1, final_loss=float(last), epochs=epochs, steps=steps, label_epochs=ds.epochs, device=str(dev),
                model=model)


def train_teacher(images, model: torch.nn.Module, epochs: int = 2, lr: float = 1e-3, batch_size: int = 128,
                  seed: int = 0, device: Optional[str] = None, progress: bool = True) -> torch.nn.Module:
    """Fit ``model`` on hard labels (cross-entropy, AdamW, no augmentation): a quick benchmark teacher."""
    dev = _device(device)
    ds = load_images(images) if isinstance(images, str) else images
    model = model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, generator=g)
    for _ in tqdm(range(epochs), desc="teacher", unit="epoch", disable=not progress):
        for x, y in loader:
            loss = F.cross_entropy(model(x.to(dev)), y.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def _model_fn(args, num_classes: int, in_channels: int) -> Callable[[], torch.nn.Module]:
    extra = {"depth": args.depth} if args.arch == "convnet" else {"blocks": [int(b) for b in args.blocks.split(",")]}
    return lambda: build_model(args.arch, in_channels=in_channels, num_classes=num_classes, width=args.width, **extra)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Train a student from a compressed label store (KL at temperature T) "
                                            "and print its test top-1 as JSON; or, with --train-teacher, fit a "
                                            "quick hard-label teacher and save it.")
    p.add_argument("--images", required=True, help="Training images: image folder or 'fashion-mnist[:train|test]'.")
    p.add_argument("--store", help="Label store written by 'score-codec relabel' (or encode) for these images.")
    p.add_argument("--test", help="Held-out images for top-1, e.g. 'fashion-mnist:test'.")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default="convnet", help="Model architecture.")
    p.add_argument("--width", type=int, default=32, help="Model width (default: 32).")
    p.add_argument("--depth", type=int, default=3, help="ConvNet depth (default: 3).")
    p.add_argument("--blocks", default="1,1,1", help="ResNet blocks per stage, comma-separated (default: 1,1,1).")
    p.add_argument("--epochs", type=int, default=10, help="Training epochs (default: 10).")
    p.add_argument("--batch-size", type=int, default=None, help="Batch size (default: the dump's).")
    p.add_argument("-T", "--temperature", type=float, default=20.0, help="KD temperature (default: 20).")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3).")
    p.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay (default: 0.01).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the student initialisation (default: 0).")
    p.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    p.add_argument("--bf16", action="store_true", help="Autocast the student to bfloat16.")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0).")
    p.add_argument("--train-teacher", metavar="OUT", help="Instead: train a teacher on --images, save to OUT.")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        return _run(p, args)
    except ScoreError as exc:
        print(f"train_student: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(p: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    images = load_images(args.images)
    x0, _ = images[0]
    fn = _model_fn(args, len(images.classes), x0.shape[0])
    if args.train_teacher:
        save_model(train_teacher(images, fn(), epochs=args.epochs, seed=args.seed, device=args.device,
                                 progress=not args.quiet), args.train_teacher)
        return 0
    if not args.store:
        p.error("--store is required unless --train-teacher is given")
    res = train_student(args.store, images, args.test, fn, epochs=args.epochs, T=args.temperature, lr=args.lr,
                        wd=args.wd, batch_size=args.batch_size, seed=args.seed, device=args.device, bf16=args.bf16,
                        num_workers=args.workers, progress=not args.quiet)
    res.pop("model")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
