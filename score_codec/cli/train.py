"""``score-codec train-teacher`` and ``score-codec train-student``: small models for trying the pipeline out."""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from ..errors import InputError
from .options import HelpFormatter, add_store_arguments, count, store_argument

__all__ = ["register"]

log = logging.getLogger(__name__)

TEACHER_EPILOG = """examples:
  score-codec train-teacher fashion-mnist:train:5000 teacher.safetensors --test fashion-mnist:test --epochs 5
  score-codec train-teacher "cjk-glyphs:train?classes=100" glyph_teacher.safetensors \\
      --test "cjk-glyphs:test?classes=100" --arch convnet --width 128 --depth 4 --norm batch --epochs 12
"""
STUDENT_EPILOG = """examples:
  score-codec train-student fashion-mnist:train:500 labels.store --test fashion-mnist:test --epochs 40
"""


def _arch(text: str) -> str:
    """An argparse ``type``: ``convnet``, ``resnet``, ``torchvision:NAME`` or ``timm:NAME``."""
    prefix, sep, name = text.partition(":")
    if text in ("convnet", "resnet") or (sep and name and prefix in ("torchvision", "timm")):
        return text
    raise argparse.ArgumentTypeError(f"expected convnet, resnet, torchvision:NAME or timm:NAME, found {text!r}")


_arch.__name__ = "architecture"


def _model_fn(args, num_classes: int, in_channels: int):
    from ..training.models import build_model

    if ":" in args.arch:   # a torchvision / timm architecture by name, randomly initialised
        from ..training.teachers import named_model

        return lambda: named_model(args.arch, num_classes)
    if args.arch == "convnet":
        extra = {"depth": args.depth, "norm": args.norm}
    else:
        extra = {"blocks": [int(b) for b in args.blocks.split(",")]}
    return lambda: build_model(args.arch, in_channels=in_channels, num_classes=num_classes, width=args.width, **extra)


def _arch_arguments(p: argparse.ArgumentParser, width: int) -> None:
    p.add_argument("--arch", type=_arch, default="convnet",
                   help="Architecture: convnet, resnet (score's), or torchvision:NAME / timm:NAME (e.g. "
                        "torchvision:resnet18; --width, --depth, --norm and --blocks apply to score's only).")
    p.add_argument("--width", type=int, default=width, help="Channels (ConvNet: every layer; ResNet: first stage).")
    p.add_argument("--depth", type=int, default=3, help="ConvNet blocks.")
    p.add_argument("--norm", choices=("instance", "batch"), default="instance", help="ConvNet normalisation.")
    p.add_argument("--blocks", default="1,1,1", help="ResNet blocks per stage, comma-separated.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the initialisation and the batch order.")
    p.add_argument("--device", default=None, help="Torch device (default: cuda if available, else cpu).")
    p.add_argument("--quiet", action="store_true", help="No progress bars.")


def _teacher(args: argparse.Namespace) -> int:
    from ..training.images import load_images
    from ..training.models import save_model
    from ..training.student import evaluate, train_teacher

    if os.path.exists(args.out) and not args.overwrite:
        raise InputError(f"{args.out}: exists (pass --overwrite to replace it)")
    images = load_images(args.images)
    x0, _ = images[0]
    t0 = time.time()
    model = train_teacher(images, _model_fn(args, len(images.classes), x0.shape[0])(), epochs=args.epochs, lr=args.lr,
                          scale=(args.min_scale, 1.0), seed=args.seed, device=args.device, progress=not args.quiet)
    if ":" in args.arch:   # a named architecture: its state dict, for relabel's --weights
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, args.out)
    else:
        save_model(model, args.out)
    res = {"teacher": args.out, "train_images": len(images), "classes": len(images.classes), "epochs": args.epochs,
           "seconds": round(time.time() - t0, 1)}
    if args.test:
        res["test_top1"] = evaluate(model, load_images(args.test), int(x0.shape[-1]), next(model.parameters()).device)
    print(json.dumps(res))
    return 0


def _student(args: argparse.Namespace) -> int:
    from ..training.images import load_images
    from ..training.student import train_student

    images = load_images(args.images)
    x0, _ = images[0]
    res = train_student(store_argument(args), images, args.test, _model_fn(args, len(images.classes), x0.shape[0]),
                        epochs=args.epochs, T=args.temperature, lr=args.lr, wd=args.wd, batch_size=args.batch_size,
                        seed=args.seed, device=args.device, bf16=args.bf16, num_workers=args.workers,
                        progress=not args.quiet)
    res.pop("model")
    print(json.dumps(res))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``train-teacher`` and ``train-student`` to the ``score-codec`` parser."""
    t = sub.add_parser("train-teacher", help="Train a small teacher on hard labels and save it as safetensors.",
                       description="Fit a ConvNet or ResNet on hard labels of RandomResizedCrop + flip views "
                       "(cosine AdamW, bf16 autocast) and save it for relabel; prints its test top-1 as JSON.",
                       epilog=TEACHER_EPILOG, formatter_class=HelpFormatter)
    t.add_argument("images", help="Training images: an image folder, 'fashion-mnist[:train[:N]]' or 'cjk-glyphs:train'.")
    t.add_argument("out", help="Where to save the teacher (.safetensors; for a torchvision:/timm: architecture its "
                   "state dict, to pass to relabel as --weights).")
    t.add_argument("--test", default=None, help="Held-out images for the printed top-1.")
    t.add_argument("--epochs", type=int, default=5, help="Training epochs.")
    t.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate.")
    t.add_argument("--min-scale", type=float, default=0.4, help="Smallest crop area share of the training views.")
    t.add_argument("--overwrite", action="store_true", help="Replace OUT if it exists.")
    _arch_arguments(t, width=32)
    t.set_defaults(func=_teacher)

    s = sub.add_parser("train-student", help="Train a student from a label store and print its test top-1.",
                       description="Replay the store's views (crops, flips, mixes) and train a student with "
                       "KL(softmax(teacher / T) || softmax(student / T)); prints top-1 on --test as JSON.",
                       epilog=STUDENT_EPILOG, formatter_class=HelpFormatter)
    s.add_argument("images", help="The images the store was written for, in the same order.")
    s.add_argument("store", help="Label store written by 'score-codec relabel' (or encode).")
    s.add_argument("--test", default=None, help="Held-out images for top-1.")
    s.add_argument("--epochs", type=int, default=10, help="Training epochs (label epoch e mod K).")
    s.add_argument("--batch-size", type=int, default=None, help="Batch size (default: the dump's).")
    s.add_argument("-T", "--temperature", type=float, default=20.0, help="KD temperature.")
    s.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate.")
    s.add_argument("--wd", type=float, default=0.01, help="AdamW weight decay.")
    s.add_argument("--bf16", action="store_true", help="Autocast the student to bfloat16.")
    s.add_argument("--workers", type=count(0), default=0, help="DataLoader workers.")
    _arch_arguments(s, width=32)
    add_store_arguments(s)
    s.set_defaults(func=_student)
