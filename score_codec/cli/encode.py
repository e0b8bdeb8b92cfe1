"""``score-codec encode`` and ``score-codec decode``: argument parsing around :func:`score_codec.encode_dump`
and :func:`score_codec.decode_dump`.

Only argparse is imported at module level; the library (torch, h5py) loads when a command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict, Optional

from ..errors import InputError
from .options import (FORMAT_NAMES, HelpFormatter, add_codec_arguments, add_store_arguments, codec_options, count,
                      store_argument)

__all__ = ["register", "cmd_encode", "cmd_decode", "dump_options", "add_reader_arguments", "load_head",
           "check_codec_args"]

log = logging.getLogger(__name__)

ENCODE_EPILOG = """examples:
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --method global --ratio 30 --quant int8
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --rank 8
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --energy 0.99 --quant int8 --residual 2
  score-codec encode dumps/lpld_ipc50 labels.h5 --format lpld --ratio 40 --json
  score-codec encode old_dump labels.store --sampler-draws 1   # dump made by an old torch release
"""

DECODE_EPILOG = """examples:
  score-codec decode labels.store restored_dump                 # the source family (e.g. SRe2L layout)
  score-codec decode labels.store restored_dump --format sre2l --plain-ints   # loads with torch>=2.6 defaults
  score-codec decode labels.store logits.npy --format npy       # dense (N, K, C) float32
"""

STORE_METHODS = ("global", "two-level")


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """Options that tell a dump reader how to interpret the source (shared with ``verify --against``)."""
    p.add_argument("--format", dest="src_format", default="auto", choices=("auto",) + FORMAT_NAMES,
                   help="Dump family of SRC; 'auto' detects it and says which it found.")
    p.add_argument("--num-classes", type=int, default=None, help="Expected number of classes C; a dump with "
                   "another C is refused.")
    p.add_argument("--images", default=None, help="The images the dump was made from (an ImageFolder, "
                   "'fashion-mnist:train[:N]' or 'cjk-glyphs:train'); they give each image's class.")
    p.add_argument("--ipc", type=int, default=None, help="Images per class of an SRe2L synthetic set (class = "
                   "index // IPC); inferred as N / C when neither this nor --images is given.")
    p.add_argument("--seed", type=int, default=42, help="Sampler seed of an SRe2L dump (SRe2L's loader uses 42).")
    p.add_argument("--sampler-draws", type=int, default=2, choices=[1, 2], help="Random permutations the dump's "
                   "torch drew per epoch: 2 for current torch releases, 1 for old ones (see the error that suggests it).")
    p.add_argument("--trust-order", action="store_true", help="Skip the check that SRe2L rows map to the right "
                   "images (a warning is printed); for dumps the check cannot confirm.")
    p.add_argument("--num-images", type=int, default=None, help="Dataset size for dumps with stored indices when "
                   "the last images never appear in the dump.")


def dump_options(args: argparse.Namespace, attrs: Optional[Dict[str, Any]] = None) -> Any:
    """A :class:`~score_codec.formats.options.DumpOptions` from parsed :func:`add_reader_arguments` options
    (``attrs`` of a store fill in the seed, sampler draws, class count and dataset size it was encoded with)."""
    import numpy as np

    from ..formats.options import DumpOptions

    attrs = attrs or {}
    labels = None
    if getattr(args, "images", None):
        from ..training.images import load_images

        labels = np.asarray(load_images(args.images).targets, dtype=np.int64)
    return DumpOptions(num_classes=args.num_classes if args.num_classes is not None else attrs.get("num_classes"),
                       labels=labels, ipc=args.ipc, check_mapping=not getattr(args, "trust_order", False),
                       seed=attrs.get("seed", args.seed), sampler_draws=attrs.get("sampler_draws", args.sampler_draws),
                       num_images=args.num_images if args.num_images is not None else attrs.get("num_images"))


def load_head(spec: str, weights: Optional[str] = None, num_classes: Optional[int] = None):
    """(W (C, d), b (C,)) of the final linear layer of the teacher ``spec`` (with ``weights`` loaded)."""
    from ..training.models import classifier_of
    from ..training.teachers import load_teacher

    return classifier_of(load_teacher(spec, weights=weights, num_classes=num_classes))


def check_codec_args(args: argparse.Namespace) -> None:
    """Refuse store-scope codec flags given with a codec that has no use for them."""
    if args.method not in STORE_METHODS:
        for flag, v in (("--fit-temperature", args.fit_temperature), ("--class-rank", args.class_rank), ("--head", args.head),
                        ("--newton-steps", args.newton_steps)):
            if v is not None:
                raise InputError(f"{flag} applies to --method global or two-level, not {args.method}")
    if args.class_rank is not None and args.method != "two-level":
        raise InputError("--class-rank applies to --method two-level")


def cmd_encode(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.encode_dump`, print its summary."""
    from ..formats.convert import encode_dump

    if args.quiet:  # notes are INFO logs; warnings and errors still show
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    check_codec_args(args)
    if args.workers:
        import torch

        torch.set_num_threads(args.workers)
    stats = encode_dump(args.src, args.dst, codec_options(args), format=args.src_format,
                        dump_options=dump_options(args), overwrite=args.overwrite, resume=args.resume,
                        progress=not args.quiet, shard_bytes=int(args.shard_mb * 2**20),
                        chunk_images=args.chunk_images, head=load_head(args.head) if args.head else None)
    if args.json:
        print(json.dumps(stats, default=str))
    else:
        r = stats["ratio"]
        size = f"{r:.1f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"
        print(f"{args.dst}: {stats['images']} images, {stats['rows']} rows, C={stats['num_classes']}, "
              f"{stats['label_bytes']:,} label bytes ({stats['bytes_per_row']:.1f} per row), {size} fp16 logits"
              + _vs_source(stats))
        if pool_summary(stats):
            print(pool_summary(stats))
    return 0


def _vs_source(stats: dict) -> str:
    """The ratio against the dump's own labels where they are not full fp16 rows (top-k dumps)."""
    if stats.get("source_label_bytes", stats["fp16_bytes"]) == stats["fp16_bytes"]:
        return ""
    r = stats["ratio_vs_source"]
    size = f"{r:.2f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"
    return f"; {size} the dump's top-k labels"


def pool_summary(stats: Dict[str, Any]) -> str:
    """One line on the epochs kept and the coding of the kept rows (or '' when every epoch was kept and no
    KL was measured)."""
    kl = stats.get("kl_t1")
    kl_text = "" if kl is None else f", KL(T=1) {kl:.3g} on a probe sample"
    if stats.get("kept_epochs"):
        return (f"pooled: kept {stats['keep_epochs']} of {stats['source_epochs']} label epochs, coded at "
                f"{stats['inner_ratio']:.1f}x{kl_text}")
    return f"every label epoch kept{kl_text}" if kl is not None else ""


def cmd_decode(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.decode_dump`, print its summary."""
    from ..formats.convert import decode_dump

    out = decode_dump(store_argument(args), args.dst, format=args.format, overwrite=args.overwrite,
                      progress=not args.quiet, plain_ints=args.plain_ints, device=args.device)
    out["store"] = args.store
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.dst}: {out['format']} dump of {out['images']} images, {out['rows']} rows")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="Replace DST if it exists.")
    p.add_argument("--quiet", action="store_true", help="No progress bars or notes on stderr.")
    p.add_argument("--json", action="store_true", help="Print a machine-readable JSON summary on stdout.")
    p.add_argument("--device", default="cpu", help="Device for the codec: cpu or cuda[:N].")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``encode`` and ``decode`` to the ``score-codec`` parser."""
    p = sub.add_parser("encode", help="Compress a soft-label dump into a label store.", formatter_class=HelpFormatter,
                       description="Read an existing soft-label dump (SRe2L, LPLD, G-VBSM, EDC, LPQLD, FKD or a "
                       ".npy array), compress every image's K x C logit matrix and keep all augmentation metadata "
                       "losslessly. Nothing is left behind if it fails.", epilog=ENCODE_EPILOG)
    p.add_argument("src", help="The dump: a directory (epoch_0/batch_0.tar ... or per-image files) or a .npy file.")
    p.add_argument("dst", help="The label store to create (a directory, or a single file if it ends in .h5).")
    add_reader_arguments(p)
    add_codec_arguments(p)
    p.add_argument("--shard-mb", type=float, default=256.0, help="Shard size in MiB; a resumed run restarts "
                   "after the last complete shard.")
    p.add_argument("--resume", action="store_true", help="Continue an interrupted encode from its last complete "
                   "shard (kept in DST.partial); the other options must match the interrupted run.")
    p.add_argument("--workers", type=count(0), default=0, help="CPU threads for the codec (0: torch's setting).")
    p.add_argument("--chunk-images", type=count(1), default=256, help="Images encoded per batched call.")
    _common(p)
    p.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="Write a label store back as a dump.", formatter_class=HelpFormatter,
                       description="Decode a label store into a dump that the original training code loads "
                       "unchanged: crop boxes, flips and mix parameters come back bit-exact, logits as decoded "
                       "(row-centred unless the store was encoded with --keep-mean; softmax is the same).",
                       epilog=DECODE_EPILOG)
    d.add_argument("store", help="The label store.")
    d.add_argument("dst", help="Output dump directory (or .npy file for --format npy).")
    d.add_argument("--format", default=None, choices=FORMAT_NAMES, help="Output layout (default: the family the "
                   "store was encoded from).")
    d.add_argument("--plain-ints", action="store_true", help="Write CutMix boxes as Python ints instead of the "
                   "source's numpy.int64, so torch.load's default weights_only=True (torch >= 2.6) accepts the files; "
                   "SRe2L's own loader refuses numpy scalars under that default.")
    _common(d)
    add_store_arguments(d)
    d.set_defaults(func=cmd_decode)
