"""``score-codec encode`` and ``score-codec decode``: convert between soft-label dumps and label stores."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import InputError
from ..formats import FORMATS, WRITERS, open_reader, read_dump, write_dump

__all__ = ["register", "cmd_encode", "cmd_decode", "reader_options", "add_reader_arguments"]

log = logging.getLogger(__name__)

ENCODE_EPILOG = """examples:
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --rank 8
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --energy 0.99 --quant int8 --residual 2
  score-codec encode dumps/lpld_ipc50 labels.h5 --format lpld --ratio 40 --json
  score-codec encode old_dump labels.store --sampler-draws 1   # dump made by an old torch release
"""

DECODE_EPILOG = """examples:
  score-codec decode labels.store restored_dump                 # the source family (e.g. SRe2L layout)
  score-codec decode labels.store restored_dump --format sre2l
  score-codec decode labels.store logits.npy --format npy       # dense (N, K, C) float32
"""


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """Options that tell a dump reader how to interpret the source (shared with ``verify --against``)."""
    p.add_argument("--format", dest="src_format", default="auto", choices=["auto"] + sorted(FORMATS),
                   help="Dump family of SRC; 'auto' detects it and says which it found.")
    p.add_argument("--num-classes", type=int, default=None, help="Expected number of classes C; a dump with "
                   "another C is refused.")
    p.add_argument("--images", default=None, help="The images the dump was made from (an ImageFolder, or 'fashion-mnist:train[:N]'); their classes give "
                   "each image's class (used to check the row-to-image mapping).")
    p.add_argument("--ipc", type=int, default=None, help="Images per class of an SRe2L synthetic set (class = "
                   "index // IPC); inferred as N / C when neither this nor --images is given.")
    p.add_argument("--seed", type=int, default=42, help="Sampler seed of an SRe2L dump (SRe2L's loader uses 42).")
    p.add_argument("--sampler-draws", type=int, default=2, choices=[1, 2], help="Random permutations the dump's "
                   "torch drew per epoch: 2 for current torch releases, 1 for old ones (see the error that suggests it).")
    p.add_argument("--num-images", type=int, default=None, help="Dataset size for dumps with stored indices when "
                   "the last images never appear in the dump.")


def reader_options(args: argparse.Namespace, attrs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Reader keyword options from parsed arguments (``attrs`` of a store fill in seed / draws)."""
    attrs = attrs or {}
    labels = None
    if getattr(args, "images", None):
        from ..training.images import load_images

        labels = np.asarray(load_images(args.images).targets, dtype=np.int64)
    opts: Dict[str, Any] = dict(num_classes=args.num_classes if args.num_classes is not None else attrs.get("num_classes"),
                                labels=labels, ipc=args.ipc,
                                seed=attrs.get("seed", args.seed), sampler_draws=attrs.get("sampler_draws", args.sampler_draws))
    if args.num_images is not None or attrs.get("num_images") is not None:
        opts["num_images"] = args.num_images if args.num_images is not None else attrs.get("num_images")
    return opts


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def cmd_encode(args: argparse.Namespace) -> int:
    """Read a dump, encode every image's (K, C) matrix, attach the augmentation metadata."""
    from ..store.reader import LabelStore
    from ..store.writer import StoreWriter

    if args.quiet:  # notes are INFO logs; warnings and errors still show
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    if os.path.exists(args.dst) and not args.overwrite and not args.resume:
        raise InputError(f"{args.dst}: destination exists (pass --overwrite to replace it)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.dst))):
        raise InputError(f"{args.dst}: parent directory does not exist")
    if args.workers:
        torch.set_num_threads(args.workers)
    reader = open_reader(args.src, args.src_format, **reader_options(args))
    _say(args, f"format: {reader.name} ({reader.summary()})")
    scratch = os.path.dirname(os.path.abspath(args.dst))
    with read_dump(args.src, reader=reader, scratch_dir=scratch, progress=not args.quiet) as c:
        empty = np.flatnonzero(c.ks == 0)
        if len(empty):
            raise InputError(f"{args.src}: images {empty[:5].tolist()}{'...' if len(empty) > 5 else ''} have no rows in "
                             f"the dump (pass --num-images to fix the dataset size)")
        labels = c.labels if (c.labels >= 0).all() else None
        if args.method == "shared" and labels is None:
            raise InputError("--method shared needs image classes: pass --images or --ipc")
        with StoreWriter(args.dst, c.num_classes, method=args.method, rank=args.rank, energy=args.energy,
                         ratio=args.ratio, quant=args.quant, residual=args.residual, device=args.device,
                         overwrite=args.overwrite, resume=args.resume,
                         shard_bytes=int(args.shard_mb * 2**20)) as w:
            step = c.num_images if args.method == "shared" else args.chunk_images
            done = w.num_images  # images already in complete shards when resuming
            if done:
                _say(args, f"resuming: {done} of {c.num_images} images were already encoded")
            bar = tqdm(total=c.num_images, initial=done, desc=f"encode {args.method}", unit="img", disable=args.quiet)
            s = 0
            for mats in c.matrices(step):
                if s + len(mats) <= done:
                    s += len(mats)
                    continue
                skip = max(done - s, 0)
                mats, s = mats[skip:], s + skip
                w.add(mats, labels=None if labels is None else labels[s:s + len(mats)].tolist())
                s += len(mats)
                bar.update(len(mats))
            bar.close()
            w.set_meta(c.aug)
    stats = LabelStore(args.dst).stats()
    stats["source_format"] = c.format
    if args.json:
        print(json.dumps(stats, default=str))
    else:
        print(f"{args.dst}: {stats['images']} images, {stats['rows']} rows, C={stats['num_classes']}, "
              f"{stats['label_bytes']} label bytes, ratio {stats['ratio']:.1f}x vs fp16 logits")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """Write a store back as a dump (non-logit fields exact; logits as decoded)."""
    from ..store.reader import LabelStore

    store = LabelStore(args.store)
    fmt = args.format or store.aug.attrs.get("format") or "sre2l"
    if fmt not in WRITERS:
        fmt = "sre2l" if len(store.aug.batches) else "npy"
    _say(args, f"writing {fmt} dump to {args.dst}")
    write_dump(_DeviceRows(store, args.device), args.dst, fmt, overwrite=args.overwrite, progress=not args.quiet)
    if args.json:
        print(json.dumps({"store": args.store, "dst": args.dst, "format": fmt, "images": len(store),
                          "rows": int(store.ks.sum())}))
    else:
        print(f"{args.dst}: {fmt} dump of {len(store)} images, {int(store.ks.sum())} rows")
    return 0


class _DeviceRows:
    """A LabelStore whose ``rows`` decode on a chosen device and return CPU tensors."""

    def __init__(self, store: Any, device: str) -> None:
        self.store, self.device = store, device
        self.aug, self.ks, self.num_classes, self.labels = store.aug, store.ks, store.num_classes, store.labels

    def rows(self, image_ids: Any, aug_ids: Any, device: str = "cpu") -> torch.Tensor:
        return self.store.rows(image_ids, aug_ids, device=self.device).cpu()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="Replace DST if it exists.")
    p.add_argument("--quiet", action="store_true", help="No progress bars or notes on stderr.")
    p.add_argument("--json", action="store_true", help="Print a machine-readable JSON summary on stdout.")
    p.add_argument("--device", default="cpu", help="Device for the codec: cpu or cuda[:N].")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``encode`` and ``decode`` to the ``score-codec`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("encode", help="Compress a soft-label dump into a label store.", formatter_class=fmt,
                       description="Read an existing soft-label dump (SRe2L, LPLD, G-VBSM, EDC, LPQLD, FKD or a "
                       ".npy array), compress every image's K x C logit matrix and keep all augmentation metadata "
                       "losslessly. Nothing is left behind if it fails.", epilog=ENCODE_EPILOG)
    p.add_argument("src", help="The dump: a directory (epoch_0/batch_0.tar ... or per-image files) or a .npy file.")
    p.add_argument("--shard-mb", type=float, default=256.0, help="Shard size in MiB; a resumed run restarts "
                   "after the last complete shard.")
    p.add_argument("--resume", action="store_true", help="Continue an interrupted encode from its last complete "
                   "shard (kept in DST.partial); the other options must match the interrupted run.")
    p.add_argument("dst", help="The label store to create (a directory, or a single file if it ends in .h5).")
    add_reader_arguments(p)
    p.add_argument("--method", default="svd", choices=["svd", "rsvd", "cur", "rpca", "shared"],
                   help="Low-rank codec.")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rank", type=int, default=None, help="Rank per image (default 8).")
    rate.add_argument("--energy", type=float, default=None, help="Share of squared singular values kept per image.")
    rate.add_argument("--ratio", type=float, default=None, help="Target compression ratio vs fp16 logits.")
    p.add_argument("--quant", default="fp16", choices=["fp16", "bf16", "int8"], help="Factor quantisation.")
    p.add_argument("--residual", type=int, default=0, help="Sparse residual entries kept per row.")
    p.add_argument("--workers", type=int, default=0, help="CPU threads for the codec (default: torch's setting).")
    p.add_argument("--chunk-images", type=int, default=256, help="Images encoded per batched call.")
    _common(p)
    p.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="Write a label store back as a dump.", formatter_class=fmt,
                       description="Decode a label store into a dump that the original training code loads "
                       "unchanged: crop boxes, flips and mix parameters come back bit-exact, logits as decoded.",
                       epilog=DECODE_EPILOG)
    d.add_argument("store", help="The label store.")
    d.add_argument("dst", help="Output dump directory (or .npy file for --format npy).")
    d.add_argument("--format", default=None, choices=sorted(WRITERS), help="Output layout (default: the family the "
                   "store was encoded from).")
    _common(d)
    d.set_defaults(func=cmd_decode)
