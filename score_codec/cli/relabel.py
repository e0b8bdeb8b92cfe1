"""``score-codec relabel``: run a teacher over augmented epochs and write a compressed label store."""
from __future__ import annotations

import argparse
import logging

__all__ = ["register"]

MIX_CHOICES = ("cutmix", "mixup", "none")


def _run(args: argparse.Namespace) -> int:
    if args.quiet:
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    from ..training.relabel import relabel

    relabel(args.images, args.teacher, args.dst, args.epochs, mix=args.mix, batch_size=args.batch_size,
            method=args.method, rank=None if args.energy is not None else args.rank, quant=args.quant, seed=args.seed,
            input_size=args.input_size, raw_dump=args.raw_dump, device=args.device, overwrite=args.overwrite,
            progress=not args.quiet,
            writer_options={k: v for k, v in (("energy", args.energy), ("residual", args.residual)) if v})
    return 0


def register(subparsers) -> None:
    """Add the ``relabel`` subcommand to the ``score-codec`` parser."""
    p = subparsers.add_parser(
        "relabel", help="Run a teacher over augmented epochs of images and write a compressed label store.",
        description="Run a teacher over K augmented epochs of an image set (random resized crop, flip and "
                    "one CutMix or Mixup per batch, all seeded) and write its logits as a compressed label "
                    "store with the augmentation parameters needed to replay every view exactly.",
        epilog="examples:\n  score-codec relabel fashion-mnist:train teacher.safetensors labels.store "
               "--epochs 10 --mix cutmix --batch-size 64 --rank 8\n"
               "  score-codec relabel data/syn_ipc50 teacher.safetensors labels.store --epochs 300 --batch-size 1024 "
               "--energy 0.999 --quant int8 --residual 1 --raw-dump FKD_cutmix_fp16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", help="Image folder (class sub-folders) or 'fashion-mnist[:train|test]'.")
    p.add_argument("teacher", help="Teacher: a .safetensors file written by save_model, or 'package.module:factory'.")
    p.add_argument("dst", help="Destination label store (a directory, or a single file ending in .h5).")
    p.add_argument("--epochs", type=int, required=True, help="Number of augmented epochs (label rows per image).")
    p.add_argument("--mix", choices=MIX_CHOICES, default="cutmix", help="Batch mixing (default: cutmix).")
    p.add_argument("--batch-size", type=int, default=64, help="Batch size; mixing happens within a batch (default: 64).")
    p.add_argument("--method", default="svd", help="Codec method, e.g. svd, rpca, cur, shared (default: svd).")
    p.add_argument("--rank", type=int, default=8, help="Rank of the low-rank factors (default: 8).")
    p.add_argument("--energy", type=float, default=None, help="Instead of --rank: keep this share of each image's "
                   "squared singular values (e.g. 0.999).")
    p.add_argument("--residual", type=int, default=0, help="Sparse residual entries kept per row (default: 0).")
    p.add_argument("--quant", default="fp16", help="Factor quantisation, e.g. fp16 or int8 (default: fp16).")
    p.add_argument("--seed", type=int, default=42, help="Seed of the sampler and all augmentation draws (default: 42).")
    p.add_argument("--input-size", type=int, default=None, help="Side of the square views (default: image height).")
    p.add_argument("--raw-dump", default=None, help="Also write an SRe2L-format dump (epoch_e/batch_b.tar) here.")
    p.add_argument("--device", default="cpu", help="Torch device of the teacher and the encoder (default: cpu).")
    p.add_argument("--overwrite", action="store_true", help="Replace an existing destination store.")
    p.add_argument("--quiet", action="store_true", help="No progress bar and no info messages.")
    p.set_defaults(func=_run)
