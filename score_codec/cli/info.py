"""``score-codec info`` and ``score-codec verify``: describe a store; check it and its fidelity."""
from __future__ import annotations

import argparse
import json
import logging

from ..errors import CorruptRecordError
from .options import HelpFormatter, add_store_arguments, store_argument

__all__ = ["register", "cmd_info", "cmd_verify"]

log = logging.getLogger(__name__)

INFO_EPILOG = """examples:
  score-codec info labels.store
  score-codec info labels.store --json | python -c 'import json,sys; print(json.load(sys.stdin)["ratio"])'
"""
VERIFY_EPILOG = """examples:
  score-codec verify labels.store                                   # checksums of every record
  score-codec verify labels.store --against dumps/FKD_cutmix_fp16   # + KL (T=1, T=20), top-1 per epoch
exit status: 0 healthy, 1 a record is corrupt, 2 bad input, 3 a file could not be read.
"""


def _ratio(r: float) -> str:
    return f"{r:.1f}x smaller than" if r >= 1 else f"{1 / r:.2f}x larger than"


def cmd_info(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.store_info`, print images, K, C, bytes, ratios, ranks and methods."""
    from ..formats.report import store_info

    st = store_info(store_argument(args))
    if args.json:
        print(json.dumps(st, default=str))
        return 0
    lines = [
        f"store           {st['path']}",
        f"source format   {st['source_format']}",
        f"images          {st['images']}",
        f"rows (K)        {st['rows']} (K per image {st['k_min']}..{st['k_max']})",
        f"classes (C)     {st['num_classes']}",
        f"method          {st['method']} ({', '.join(f'{k}: {v}' for k, v in st['methods'].items())}), quant {st['quant']}",
        f"ranks           min {st['rank_min']}, mean {st['rank_mean']:.2f}, max {st['rank_max']}",
        f"label bytes     {st['label_bytes']} ({st['bytes_per_row']:.1f} per row)",
        f"disk bytes      {st['disk_bytes']} (augmentation metadata {st['meta_bytes']}, {st['meta_rows']} rows)",
        f"ratio           {_ratio(st['ratio'])} fp16 logits; {_ratio(st['ratio_vs_dump'])} the fp16 dump on disk"
        + (f"; {_ratio(st['ratio_vs_source'])} the dump's top-k labels"
           if st["source_label_bytes"] != st["fp16_bytes"] else ""),
        f"decodes to      {'exact logits (--keep-mean)' if st['keep_mean'] else 'row-centred logits (softmax unchanged)'}",
    ]
    if st.get("kept_epochs"):
        lines.insert(4, f"pooled          {st['keep_epochs']} of {st['source_epochs']} label epochs kept "
                        f"({_ratio(st['inner_ratio'])} fp16 logits of the kept rows)")
    print("\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.verify_store`, print the report; exit 1 if a record is corrupt."""
    from ..formats.report import verify_store
    from .encode import dump_options

    if args.quiet:
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    out = verify_store(store_argument(args), args.against, format=args.src_format,
                       dump_options=dump_options(args) if args.against else None, progress=not args.quiet,
                       device=args.device)
    out["store"] = args.store
    problems = out["problems"]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.store}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        for p in problems:
            print(f"  {p}")
        if "fidelity" in out:
            print(f"{'epoch':>7} {'rows':>8} {'KL T=1':>10} {'KL T=20':>10} {'top-1':>7}")
            for e, d in list(out["fidelity"]["per_epoch"].items()) + [("all", out["fidelity"]["overall"])]:
                print(f"{e:>7} {d['rows']:>8} {d['kl_t1']:>10.3g} {d['kl_t20']:>10.3g} {100 * d['top1_agreement']:>6.2f}%")
    if problems:
        if not args.json:
            log.error("%d corrupt record(s)", len(problems))
        return CorruptRecordError.exit_code
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``info`` and ``verify`` to the ``score-codec`` parser."""
    from .encode import add_reader_arguments

    fmt = HelpFormatter
    p = sub.add_parser("info", help="Describe a label store.", formatter_class=fmt, epilog=INFO_EPILOG,
                       description="Print the number of images, rows per image (K), classes (C), stored bytes, the "
                       "compression ratio against fp16 logits and against the fp16 dump, ranks and methods.")
    p.add_argument("store", help="The label store.")
    p.add_argument("--json", action="store_true", help="Print the statistics as JSON on stdout.")
    add_store_arguments(p)
    p.set_defaults(func=cmd_info)

    v = sub.add_parser("verify", help="Check a label store, optionally against its source dump.", formatter_class=fmt,
                       epilog=VERIFY_EPILOG, description="Check every record's checksum and sizes. With --against, "
                       "also decode every row and compare it with the source dump: KL divergence at T=1 and T=20 and "
                       "top-1 agreement, per epoch and overall. Exits 1 if a record is corrupt.")
    v.add_argument("store", help="The label store.")
    v.add_argument("--against", default=None, help="The dump the store was encoded from.")
    add_reader_arguments(v)
    v.add_argument("--json", action="store_true", help="Print the report as JSON on stdout.")
    v.add_argument("--quiet", action="store_true", help="No progress bars on stderr.")
    v.add_argument("--device", default="cpu", help="Device used to decode rows: cpu or cuda[:N].")
    add_store_arguments(v)
    v.set_defaults(func=cmd_verify)
