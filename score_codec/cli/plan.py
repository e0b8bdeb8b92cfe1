"""``score-codec plan``: how an encode would spend each of several ratios, around :func:`score_codec.plan_dump`.

Only argparse is imported at module level; the library (torch, h5py) loads when the command runs.
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict, List

from .encode import add_reader_arguments, dump_options, load_head
from .options import QUANTS, HelpFormatter, _positive_float, codec_config, count

__all__ = ["register", "cmd_plan", "plan_table"]

PLAN_EPILOG = """examples:
  score-codec plan dumps/sre2l_ipc50 --ratio 30 100 300 1000
  score-codec plan logits.npy --ratio 100 --max-kl 0.02 --json
  score-codec plan dumps/lpld_ipc10 --ratio 100 300 --format lpld --scratch-dir /scratch

Each line says what 'score-codec encode SRC DST --ratio X' with the same options would do: the label epochs
it keeps, the rank it codes them at, the probe KL(T=1) of the decoded rows and the store's label bytes; a
ratio that cannot hold a useful label says why and the largest ratio that can.
"""


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def plan_table(entries: List[Dict[str, Any]]) -> str:
    """The plan's entries (:func:`score_codec.plan_dump`) as an aligned text table, one line per ratio.

    A ratio that cannot be held reads "n/a" with the largest ratio that can and the number of a note under
    the table that gives the reason.  Ratios refused for the same largest ratio share one note: the reason
    at the smallest of them, which names the others (they leave fewer bytes and fail the same way)."""
    head = ("ratio", "kept epochs", "inner ratio", "rank", "probe KL(T=1)", "label bytes", "store")

    def group(e: Dict[str, Any]) -> Any:
        return e["max_ratio"] if e["max_ratio"] is not None else e["error"]

    refused: Dict[Any, List[Dict[str, Any]]] = {}
    for e in entries:
        if e["error"] is not None:
            refused.setdefault(group(e), []).append(e)
    number = {key: i for i, key in enumerate(refused, 1)}
    rows = []
    for e in entries:
        if e["error"] is not None:
            most = "" if e["max_ratio"] is None else f", at most {e['max_ratio']:.1f}x fits"
            rows.append((f"{e['ratio']:g}x", f"n/a{most} [{number[group(e)]}]"))
            continue
        rows.append((f"{e['ratio']:g}x", f"{e['keep_epochs']} of {e['source_epochs']}", f"{e['inner_ratio']:.1f}x",
                     str(e["rank"]), f"{e['kl_t1']:.3g}", _size(e["label_bytes"]), f"{e['predicted_ratio']:.1f}x"))
    widths = [max(len(r[i]) for r in [head] + [r for r in rows if len(r) == len(head)]) for i in range(len(head))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    for r in rows:
        if len(r) == len(head):
            lines.append("  ".join(v.rjust(w) for v, w in zip(r, widths)))
        else:
            lines.append(r[0].rjust(widths[0]) + "  " + r[1])
    for key, group_entries in refused.items():
        ratios = sorted({float(e["ratio"]) for e in group_entries})
        first = min(group_entries, key=lambda e: float(e["ratio"]))
        also = "" if len(ratios) == 1 else f" (and {', '.join(f'{x:g}x' for x in ratios[1:])}, with fewer bytes)"
        lines.append(f"[{number[key]}] {first['error']}{also}")
    return "\n".join(lines)


def cmd_plan(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.plan_dump`, print its table (or JSON)."""
    from ..formats.convert import plan_dump
    from ..store.options import CodecOptions

    if args.quiet:
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    if args.workers:
        import torch

        torch.set_num_threads(args.workers)
    opts = CodecOptions(method="global", quant=args.quant, residual=args.residual, keep_mean=args.keep_mean,
                        codec_config=codec_config(args), device=args.device, pool=not args.no_pool,
                        keep_epochs=args.keep_epochs, max_kl=args.max_kl)
    entries = plan_dump(args.src, args.ratio, opts, format=args.src_format, dump_options=dump_options(args),
                        progress=not args.quiet, scratch_dir=args.scratch_dir,
                        head=load_head(args.head) if args.head else None)
    if args.json:
        print(json.dumps(entries))
    else:
        fmt = entries[0]["source_format"] if entries else "?"
        print(f"{args.src} ({fmt}): what 'score-codec encode --ratio X' would store, global codec, "
              f"max_kl={args.max_kl:g}")
        print(plan_table(entries))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plan`` to the ``score-codec`` parser."""
    p = sub.add_parser("plan", help="Show how each of several ratios would be spent, before an encode.",
                       formatter_class=HelpFormatter, epilog=PLAN_EPILOG,
                       description="Read a soft-label dump once, fit the global basis once, and for each --ratio "
                       "report the split 'score-codec encode --ratio' would make: label epochs kept, the rank "
                       "they are coded at, the probe KL(T=1) and the predicted store size. Writes no store.")
    p.add_argument("src", help="The dump: a directory (epoch_0/batch_0.tar ... or per-image files) or a .npy file.")
    p.add_argument("--ratio", type=_positive_float, nargs="+", required=True, metavar="X",
                   help="Target ratios against fp16 logits.")
    add_reader_arguments(p)
    pool = p.add_mutually_exclusive_group()
    pool.add_argument("--no-pool", action="store_true", help="Code every label epoch (as encode --no-pool).")
    pool.add_argument("--keep-epochs", type=count(1), default=None, metavar="N",
                      help="Keep exactly N label epochs (as encode --keep-epochs).")
    p.add_argument("--max-kl", type=_positive_float, default=0.01, help="Largest probe KL(T=1) the split accepts "
                   "(as encode --max-kl).")
    p.add_argument("--quant", default="int8", choices=QUANTS, help="Quantisation of the coefficients.")
    p.add_argument("--residual", type=count(0), default=0, help="Sparse residual entries kept per row.")
    p.add_argument("--keep-mean", action="store_true", help="Count each row's stored mean (as encode --keep-mean).")
    p.add_argument("--fit-temperature", type=float, default=None, help="Fit coefficients for softmax at this "
                   "temperature (default 1).")
    p.add_argument("--newton-steps", type=int, default=None, help="KL-fit Newton steps per row (default 1; 0: "
                   "least-squares projection).")
    p.add_argument("--head", default=None, help="The teacher whose final linear layer becomes the basis (as "
                   "encode --head).")
    p.add_argument("--scratch-dir", default=None, help="Where the scratch copy of the dump's rows goes (it needs "
                   "the dump's size; default: the working directory).")
    p.add_argument("--workers", type=count(0), default=0, help="CPU threads (0: torch's setting).")
    p.add_argument("--quiet", action="store_true", help="No progress bars or notes on stderr.")
    p.add_argument("--json", action="store_true", help="Print the plan as JSON on stdout (one object per ratio).")
    p.add_argument("--device", default="cpu", help="Device for the fit: cpu or cuda[:N].")
    p.set_defaults(func=cmd_plan)
