"""The ``score-select`` command line: teacher features -> SCORE selection -> JSON (+ condensed ImageFolder).

Exit codes: 0 success, 1 failed integrity check, 2 bad input (one-line message on stderr), 3 I/O failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional


from score_codec._version import __version__
from score_codec.cli.exits import EXIT_STATUS_HELP, run_reporting_errors
from score_codec.cli.options import add_teacher_arguments

__all__ = ["main", "build_parser", "run"]

EPILOG = """examples:
  score-select data/imagenette/train teacher.safetensors sel_ipc10 --ipc 10 --preset imagenette --copy
  score-select data/train teacher.safetensors sel_b0 --ipc 50 --beta 0 --features sel/features.safetensors
  score-select fashion-mnist mypkg.models:teacher sel_rand --ipc 10 --method random --json
  score-codec relabel sel_ipc10/images ...      # the condensed folder is ready for relabelling

OUT is a directory: OUT/selection.json holds the picks in order (indices, paths, labels, gains in nats),
OUT/features.safetensors caches the teacher outputs (reused on the next run; pass --features to share one
cache between runs with other alpha/beta), and with --copy OUT/images/<class>/ is the condensed ImageFolder.
eps_sq is eps squared (MCR^2's convention, default 0.5).

""" + EXIT_STATUS_HELP


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="score-select",
        description="Select IPC real images per class by the SCORE coding-rate criterion "
                    "R(Z_S) - alpha Rc(Z_S) - beta R(Y_x), or by a baseline method.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", metavar="IMAGES",
                   help="The candidate pool: an ImageFolder root (root/<class>/<file>) or 'fashion-mnist[:train]'.")
    p.add_argument("teacher", metavar="TEACHER",
                   help="The teacher: 'torchvision:NAME' or 'timm:NAME' (weights from --weights), a safetensors "
                        "file written by score_codec.training.models.save_model or 'package.module:factory'; '-' "
                        "when --features points to an existing cache.")
    p.add_argument("out", metavar="OUT", help="The output directory (created if missing).")
    p.add_argument("--ipc", type=int, required=True, help="The number of images to select per class.")
    p.add_argument("--method", default="score",
                   help="The selection method: score, coding-rate, random, herding, kcenter or rded (default score).")
    p.add_argument("--preset", default=None, help="Take alpha, beta and the temperature from the paper's values "
                   "for imagenet1k, tiny, imagewoof or imagenette; explicit --alpha/--beta/--temperature win.")
    p.add_argument("--alpha", type=float, default=None, help="The weight of the class-conditional rate Rc (default 1.0).")
    p.add_argument("--beta", type=float, default=None, help="The weight of the soft-label rate R(Y) (default 0.1).")
    p.add_argument("--label-rate", choices=("residual", "image"), default=None,
                   help="What R(Y) measures: the coding rate of what a store-wide basis of --label-rank directions "
                        "leaves of each image's soft labels (what the default global codec cannot represent; the "
                        "default), or of the image's own soft labels (the paper's term; the default with --preset).")
    p.add_argument("--label-rank", type=int, default=16, help="Directions of the store-wide basis of --label-rate "
                   "residual (default 16).")
    p.add_argument("--eps-sq", type=float, default=0.5, help="The squared distortion eps^2 of the rates (default 0.5).")
    p.add_argument("--temperature", type=float, default=None,
                   help="The softmax temperature used for R(Y) (default 1, or the preset's).")
    p.add_argument("--order", choices=["greedy", "round_robin"], default="greedy",
                   help="Global greedy (default) or blocked round-robin over classes (faster on huge pools).")
    p.add_argument("--views", type=int, default=8,
                   help="The number of augmented views per image whose teacher logits give R(Y) (default 8; 0 disables).")
    p.add_argument("--features", default=None,
                   help="The feature cache to read if it exists, else to write (default OUT/features.safetensors).")
    p.add_argument("--image-size", type=int, default=None, help="Resize images to this square size before the teacher.")
    p.add_argument("--batch-size", type=int, default=128, help="The number of images per teacher batch (default 128).")
    p.add_argument("--device", default="cpu", help="The torch device for the teacher and the selection (default cpu).")
    p.add_argument("--seed", type=int, default=0, help="The seed of augmented views and of --method random.")
    p.add_argument("--copy", action="store_true", help="Also write the selected images to OUT/images in ImageFolder layout.")
    add_teacher_arguments(p)
    p.add_argument("--json", action="store_true", help="Print a machine-readable summary on stdout.")
    p.add_argument("--quiet", action="store_true", help="Show no progress bars and log only warnings.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _normalization(args: argparse.Namespace):
    """--normalize / --mean / --std as one value for select_images."""
    from score_codec.training.normalize import resolve_normalization

    return resolve_normalization(args.normalize, args.mean, args.std)


def run(args: argparse.Namespace) -> dict:
    """:func:`score_select.select_images` with the parsed arguments."""
    from .pipeline import select_images

    return select_images(args.images, args.teacher, args.out, args.ipc, method=args.method, preset=args.preset,
                         alpha=args.alpha, beta=args.beta, eps_sq=args.eps_sq, temperature=args.temperature,
                         order=args.order, views=args.views, features=args.features, image_size=args.image_size,
                         batch_size=args.batch_size, device=args.device, seed=args.seed, copy=args.copy,
                         progress=not args.quiet, weights=args.weights, num_classes=args.num_classes,
                         normalize=_normalization(args), label_rate=args.label_rate, label_rank=args.label_rank)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``score-select``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    result = {}

    def call() -> int:
        result["summary"] = run(args)
        return 0

    rc = run_reporting_errors("score-select", call)
    if rc:
        return rc
    summary = result["summary"]
    if args.json:
        short = {k: v for k, v in summary.items() if k not in ("indices", "labels", "paths", "gains")}
        short["selection"] = os.path.join(args.out, "selection.json")
        print(json.dumps(short))
    elif not args.quiet:
        print(f"selected {summary['selected']} of {summary['candidates']} images ({args.method}, "
              f"objective {summary['objective_nats']:.4f} nats) -> {os.path.join(args.out, 'selection.json')}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
