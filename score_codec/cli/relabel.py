"""``score-codec relabel``: run a teacher over augmented epochs and write a compressed label store."""
from __future__ import annotations

import argparse
import logging
import sys

from .options import HelpFormatter, add_codec_arguments, add_teacher_arguments, codec_options

__all__ = ["register"]

MIX_CHOICES = ("cutmix", "mixup", "none")

EPILOG = """examples:
  score-codec relabel fashion-mnist:train:500 teacher.safetensors labels.store --epochs 20 --batch-size 50 --rank 4
  score-codec relabel "cjk-glyphs:train:2000?classes=100" glyph_teacher.safetensors glyphs.store --epochs 30 \\
      --method global --ratio 30 --quant int8 --raw-dump glyphs_fp16_dump
  score-codec relabel data/syn_ipc50 teacher.safetensors labels.store --epochs 300 --batch-size 1024 \\
      --method global --head teacher.safetensors --quant int8
  score-codec relabel data/imagenet_ipc10 torchvision:resnet18 labels.store --weights resnet18.pth \\
      --normalize imagenet --input-size 224 --epochs 300 --batch-size 100 --method global --quant int8
  score-codec relabel data/imagenet_ipc10 timm:resnet50 labels.store --weights ckpt.pth.tar --num-classes 1000 \\
      --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --input-size 224 --epochs 300
"""


def _head(args: argparse.Namespace):
    """The --head basis; naming the teacher itself reuses its --weights and --num-classes."""
    from .encode import load_head

    if not args.head:
        return None
    if args.head == args.teacher:
        return load_head(args.head, args.weights, args.num_classes)
    return load_head(args.head)


def _run(args: argparse.Namespace) -> int:
    if args.quiet:
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    from .encode import check_codec_args, pool_summary
    from ..training.relabel import relabel

    check_codec_args(args)
    stats = relabel(args.images, args.teacher, args.dst, args.epochs, codec_options(args), mix=args.mix,
                    batch_size=args.batch_size, seed=args.seed, scale=(args.min_scale, 1.0),
                    input_size=args.input_size, raw_dump=args.raw_dump, overwrite=args.overwrite,
                    progress=not args.quiet, head=_head(args),
                    fast_teacher=not args.plain_teacher, weights=args.weights, num_classes=args.num_classes,
                    normalize=args.normalize, mean=args.mean, std=args.std)
    r = stats["ratio"]
    size = f"{r:.1f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"
    print(f"{args.dst}: {stats['images']} images x {args.epochs} epochs, {stats['label_bytes']:,} label bytes "
          f"({stats['bytes_per_row']:.1f} per row), {size} fp16 logits"
          + (f"; SRe2L dump in {args.raw_dump}" if args.raw_dump else ""), file=sys.stdout)
    if pool_summary(stats):
        print(pool_summary(stats), file=sys.stdout)
    return 0


def register(subparsers) -> None:
    """Add the ``relabel`` subcommand to the ``score-codec`` parser."""
    p = subparsers.add_parser(
        "relabel", help="Run a teacher over augmented epochs of images and write a compressed label store.",
        description="Run a teacher over K augmented epochs of an image set (random resized crop, flip and "
                    "one CutMix or Mixup per batch, all seeded) and write its logits as a compressed label "
                    "store with the augmentation parameters needed to replay every view exactly.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("images", help="Image folder (class sub-folders), 'fashion-mnist[:train|test[:N]]' or "
                   "'cjk-glyphs[:train|test[:N]][?classes=C]'.")
    p.add_argument("teacher", help="Teacher: 'torchvision:NAME' or 'timm:NAME' (an architecture those libraries "
                   "build by name; weights from --weights), a .safetensors file written by save_model, or "
                   "'package.module:factory'.")
    p.add_argument("dst", help="Destination label store (a directory, or a single file ending in .h5).")
    p.add_argument("--epochs", type=int, required=True, help="Number of augmented epochs (label rows per image).")
    p.add_argument("--mix", choices=MIX_CHOICES, default="cutmix", help="Batch mixing.")
    p.add_argument("--batch-size", type=int, default=64, help="Batch size; mixing happens within a batch.")
    p.add_argument("--min-scale", type=float, default=0.08, help="Smallest crop area share of RandomResizedCrop.")
    add_teacher_arguments(p)
    add_codec_arguments(p)
    p.add_argument("--seed", type=int, default=42, help="Seed of the sampler and all augmentation draws.")
    p.add_argument("--input-size", type=int, default=None, help="Side of the square views (default: image height).")
    p.add_argument("--raw-dump", default=None, help="Also write an SRe2L-format dump (epoch_e/batch_b.tar) here.")
    p.add_argument("--device", default="cpu", help="Torch device of the teacher and the encoder.")
    p.add_argument("--plain-teacher", action="store_true",
                   help="Run the teacher module as it is. By default a copy with batch norm folded into its "
                        "convolutions and channels-last weights runs (faster, the same logits up to float32 "
                        "rounding).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing destination store.")
    p.add_argument("--quiet", action="store_true", help="No progress bar and no info messages.")
    p.set_defaults(func=_run)
