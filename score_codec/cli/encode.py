"""``score-codec encode`` and ``score-codec decode``: convert between soft-label dumps and label stores.

Only argparse is imported at module level; the library (torch, h5py) loads when a command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Dict, Optional

from ..errors import InputError
from .options import FORMAT_NAMES, HelpFormatter, add_codec_arguments, codec_kwargs, count

__all__ = ["register", "cmd_encode", "cmd_decode", "reader_options", "add_reader_arguments", "load_head"]

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


def reader_options(args: argparse.Namespace, attrs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Reader keyword options from parsed arguments (``attrs`` of a store fill in seed / draws)."""
    import numpy as np

    attrs = attrs or {}
    labels = None
    if getattr(args, "images", None):
        from ..training.images import load_images

        labels = np.asarray(load_images(args.images).targets, dtype=np.int64)
    opts: Dict[str, Any] = dict(num_classes=args.num_classes if args.num_classes is not None else attrs.get("num_classes"),
                                labels=labels, ipc=args.ipc, check_mapping=not getattr(args, "trust_order", False),
                                seed=attrs.get("seed", args.seed), sampler_draws=attrs.get("sampler_draws", args.sampler_draws))
    if args.num_images is not None or attrs.get("num_images") is not None:
        opts["num_images"] = args.num_images if args.num_images is not None else attrs.get("num_images")
    return opts


def load_head(spec: str):
    """(W (C, d), b (C,)) of the final linear layer of the teacher ``spec``."""
    from ..training.models import classifier_of, load_model

    return classifier_of(load_model(spec))


def _say(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr)


def _check_codec_args(args: argparse.Namespace) -> None:
    if args.method not in STORE_METHODS:
        for flag, v in (("--fit-temperature", args.fit_temperature), ("--class-rank", args.class_rank), ("--head", args.head),
                        ("--newton-steps", args.newton_steps)):
            if v is not None:
                raise InputError(f"{flag} applies to --method global or two-level, not {args.method}")
    if args.class_rank is not None and args.method != "two-level":
        raise InputError("--class-rank applies to --method two-level")


class _Matrices:
    """The dump's per-image matrices as an indexable (what store-wide codecs fit on)."""

    def __init__(self, contents: Any) -> None:
        self.c = contents

    def __len__(self) -> int:
        return self.c.num_images

    def __getitem__(self, i: int):
        return self.c.matrix(i)


def cmd_encode(args: argparse.Namespace) -> int:
    """Read a dump, encode every image's (K, C) matrix, attach the augmentation metadata."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..formats import open_reader, read_dump
    from ..store.reader import LabelStore
    from ..store.writer import StoreWriter

    if args.quiet:  # notes are INFO logs; warnings and errors still show
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    _check_codec_args(args)
    if os.path.exists(args.dst) and not args.overwrite and not args.resume:
        raise InputError(f"{args.dst}: destination exists (pass --overwrite to replace it)")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.dst))):
        raise InputError(f"{args.dst}: parent directory does not exist")
    if args.workers:
        torch.set_num_threads(args.workers)
    head = load_head(args.head) if args.head else None
    options = reader_options(args)
    reader = open_reader(args.src, args.src_format, **options)
    _say(args, f"format: {reader.name} ({reader.summary()})")
    scratch = os.path.dirname(os.path.abspath(args.dst))
    kw = codec_kwargs(args)
    if args.method == "global" and not args.residual and not args.resume:
        return _encode_streaming(args, reader, options, kw, head)
    with read_dump(args.src, reader=reader, scratch_dir=scratch, progress=not args.quiet) as c:
        _check_contents(args, c)
        labels = c.labels if (c.labels >= 0).all() else None
        if args.method in ("shared", "two-level") and labels is None:
            raise InputError(f"--method {args.method} needs image classes: pass --images or --ipc")
        with StoreWriter(args.dst, c.num_classes, device=args.device, overwrite=args.overwrite, resume=args.resume,
                         shard_bytes=int(args.shard_mb * 2**20), **kw) as w:
            from ..store.rowwise import encode_rows, supports_rowwise

            if supports_rowwise(w):
                # one basis for all rows: code them in dump order, no per-image regrouping of the logits
                encode_rows(w, c.row_logits, c.aug.rows["image"].astype(np.int64), c.aug.rows["aug"].astype(np.int64),
                            c.ks, labels, head=head, progress=not args.quiet)
            elif w.codec.scope == "store" and w._basis_set is None:
                _say(args, f"fitting the {args.method} bases on {c.num_images} images")
                w.fit(_Matrices(c), labels, ks=c.ks, head=head)
            step = c.num_images if args.method == "shared" else args.chunk_images
            done = w.num_images  # images already in complete shards when resuming (all of them after encode_rows)
            if done and done < c.num_images:
                _say(args, f"resuming: {done} of {c.num_images} images were already encoded")
            bar = tqdm(total=c.num_images, initial=done, desc=f"encode {args.method}", unit="img", disable=args.quiet)
            s = 0
            for mats in (c.matrices(step) if done < c.num_images else []):
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
    return _report(args, c.format)


def _check_contents(args: argparse.Namespace, c) -> None:
    import numpy as np

    empty = np.flatnonzero(c.ks == 0)
    if len(empty):
        raise InputError(f"{args.src}: images {empty[:5].tolist()}{'...' if len(empty) > 5 else ''} have no rows in "
                         f"the dump (pass --num-images to fix the dataset size)")


def _encode_streaming(args: argparse.Namespace, reader, options: Dict[str, Any], kw, head) -> int:
    """The store-wide codec without a residual: scan the dump (metadata and a spread sample for the basis),
    then code its files as they are read again; no scratch copy of the dump is written."""
    import numpy as np

    from ..formats import scan_dump
    from ..store.rowwise import encode_rows
    from ..store.writer import StoreWriter

    from ..codecs.storewide import GlobalBasisCodec

    # the basis is fitted on fit_rows rows (codec default): keep that many from files spread over the dump
    c = scan_dump(args.src, reader=reader, progress=not args.quiet, sample_rows=GlobalBasisCodec().fit_rows,
                  **options)
    _check_contents(args, c)
    labels = c.labels if (c.labels >= 0).all() else None
    rows = c.aug.rows
    with StoreWriter(args.dst, c.num_classes, device=args.device, overwrite=args.overwrite,
                     shard_bytes=int(args.shard_mb * 2**20), **kw) as w:
        _say(args, f"fitting the global basis on {sum(len(b) for b in c.sample):,} rows from files spread over the dump")
        encode_rows(w, c.logits(progress=not args.quiet), rows["image"].astype(np.int64), rows["aug"].astype(np.int64),
                    c.ks, labels, head=head, progress=False, fit_on=c.sample)
        w.set_meta(c.aug)
    return _report(args, c.format)


def _vs_source(stats: dict) -> str:
    """The ratio against the dump's own labels where they are not full fp16 rows (top-k dumps)."""
    if stats.get("source_label_bytes", stats["fp16_bytes"]) == stats["fp16_bytes"]:
        return ""
    r = stats["ratio_vs_source"]
    size = f"{r:.2f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"
    return f"; {size} the dump's top-k labels"


def _report(args: argparse.Namespace, fmt: str) -> int:
    from ..store.reader import LabelStore

    stats = LabelStore(args.dst).stats()
    stats["source_format"] = fmt
    if args.json:
        print(json.dumps(stats, default=str))
    else:
        r = stats["ratio"]
        size = f"{r:.1f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"
        print(f"{args.dst}: {stats['images']} images, {stats['rows']} rows, C={stats['num_classes']}, "
              f"{stats['label_bytes']:,} label bytes ({stats['bytes_per_row']:.1f} per row), {size} fp16 logits"
              + _vs_source(stats))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """Write a store back as a dump (non-logit fields exact; logits as decoded)."""
    from ..formats import WRITERS, write_dump
    from ..store.reader import LabelStore

    store = LabelStore(args.store)
    fmt = args.format or store.aug.attrs.get("format") or "sre2l"
    if fmt not in WRITERS:
        fmt = "sre2l" if len(store.aug.batches) else "npy"
    _say(args, f"writing {fmt} dump to {args.dst}")
    if not store.encoding.get("keep_mean"):
        _say(args, "note: the store holds row-centred logits (encoded without --keep-mean); softmax is unchanged")
    write_dump(_DeviceRows(store, args.device), args.dst, fmt, overwrite=args.overwrite, progress=not args.quiet,
               plain_ints=args.plain_ints)
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

    def rows(self, image_ids: Any, aug_ids: Any, device: str = "cpu"):
        return self.store.rows(image_ids, aug_ids, device=self.device).cpu()


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
    d.set_defaults(func=cmd_decode)
