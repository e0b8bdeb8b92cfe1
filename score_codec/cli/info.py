"""``score-codec info`` and ``score-codec verify``: describe a store; check it and its fidelity."""
from __future__ import annotations

import argparse
import json
import logging
from typing import Any, Dict, List

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import CorruptRecordError, FormatError

__all__ = ["register", "cmd_info", "cmd_verify", "fidelity", "FidelityAccumulator"]

log = logging.getLogger(__name__)

#: bytes of non-logit fields per row in an SRe2L fp16 dump (coords 16 + flip 1 + mix_index 8)
DUMP_ROW_OVERHEAD = 25

INFO_EPILOG = """examples:
  score-codec info labels.store
  score-codec info labels.store --json | python -c 'import json,sys; print(json.load(sys.stdin)["ratio"])'
"""
VERIFY_EPILOG = """examples:
  score-codec verify labels.store                                   # checksums of every record
  score-codec verify labels.store --against dumps/FKD_cutmix_fp16   # + KL (T=1, T=20), top-1 per epoch
exit status: 0 healthy, 1 a record is corrupt, 2 bad input.
"""


def cmd_info(args: argparse.Namespace) -> int:
    """Print images, K, C, bytes, ratios, ranks and methods of a store."""
    from ..store.reader import LabelStore

    store = LabelStore(args.store)
    st = store.stats()
    attrs = store.aug.attrs
    st["source_format"] = attrs.get("format") or attrs.get("source") or "unknown"
    st["dump_fp16_bytes"] = int(st["rows"] * (2 * st["num_classes"] + DUMP_ROW_OVERHEAD))
    st["ratio_vs_dump"] = st["dump_fp16_bytes"] / st["disk_bytes"] if st["disk_bytes"] else float("inf")
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
        f"disk bytes      {st['disk_bytes']} (metadata {st['meta_bytes']} before compression)",
        f"ratio           {st['ratio']:.1f}x vs fp16 logits; {st['ratio_vs_dump']:.1f}x vs the fp16 dump on disk",
    ]
    print("\n".join(lines))
    return 0


class FidelityAccumulator:
    """Running KL(softmax(Y/T) || softmax(Yhat/T)) at T=1 and T=20 and top-1 agreement, per epoch."""

    TEMPS = (1.0, 20.0)

    def __init__(self) -> None:
        self.per: Dict[int, Dict[str, float]] = {}

    def add(self, epoch: int, y: torch.Tensor, yhat: torch.Tensor) -> None:
        """y, yhat: (B, C) logits of the same rows (any shift per row)."""
        y, yhat = y.double(), yhat.double()
        d = self.per.setdefault(int(epoch), {"rows": 0, "agree": 0, "kl_t1": 0.0, "kl_t20": 0.0})
        d["rows"] += y.shape[0]
        d["agree"] += int((y.argmax(1) == yhat.argmax(1)).sum())
        for t, key in zip(self.TEMPS, ("kl_t1", "kl_t20")):
            lp, lq = torch.log_softmax(y / t, 1), torch.log_softmax(yhat / t, 1)
            d[key] += float((lp.exp() * (lp - lq)).sum())

    @staticmethod
    def _final(d: Dict[str, float]) -> Dict[str, float]:
        n = max(d["rows"], 1)
        return {"rows": int(d["rows"]), "kl_t1": d["kl_t1"] / n, "kl_t20": d["kl_t20"] / n, "top1_agreement": d["agree"] / n}

    def result(self) -> Dict[str, Any]:
        tot = {"rows": 0, "agree": 0, "kl_t1": 0.0, "kl_t20": 0.0}
        for d in self.per.values():
            for k in tot:
                tot[k] += d[k]
        return {"per_epoch": {str(e): self._final(d) for e, d in sorted(self.per.items())}, "overall": self._final(tot)}


def fidelity(store: Any, src: str, reader_opts: Dict[str, Any], fmt: str = "auto", progress: bool = False,
             device: str = "cpu") -> Dict[str, Any]:
    """Compare a store with the dump it was encoded from, file by file (bounded memory)."""
    from ..formats import open_reader

    attrs = store.aug.attrs
    reader = open_reader(src, attrs.get("format", "auto") if fmt == "auto" else fmt, **reader_opts)
    rows = store.aug.rows
    acc = FidelityAccumulator()
    at = 0
    for rec in tqdm(reader.batches(), total=reader.num_files() or None, desc="verify", unit="file", disable=not progress):
        n = len(rec.rows)
        mine = rows[at:at + n]
        if len(mine) != n or not np.array_equal(mine["image"], rec.rows["image"]):
            raise FormatError(f"{rec.source}: rows do not match the store's metadata at dump row {at} "
                              f"(is this the dump the store was encoded from?)")
        yhat = store.rows(mine["image"].astype(np.int64), mine["aug"].astype(np.int64), device=device).cpu()
        acc.add(int(rec.rows["epoch"][0]) if n else 0, torch.from_numpy(rec.logits.astype(np.float32)), yhat)
        at += n
    if at != len(rows):
        raise FormatError(f"{src}: the dump has {at} rows, the store {len(rows)}")
    return acc.result()


def cmd_verify(args: argparse.Namespace) -> int:
    """Check every record; with --against, report fidelity per epoch and overall."""
    from ..store.reader import LabelStore
    from .encode import reader_options

    if args.quiet:
        logging.getLogger("score_codec").setLevel(logging.WARNING)
    store = LabelStore(args.store)
    problems: List[str] = store.verify()
    out: Dict[str, Any] = {"store": args.store, "ok": not problems, "problems": problems}
    if args.against and not problems:
        out["fidelity"] = fidelity(store, args.against, reader_options(args, {**store.aug.attrs, "num_classes": store.num_classes}), args.src_format,
                                   progress=not args.quiet, device=args.device)
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

    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("info", help="Describe a label store.", formatter_class=fmt, epilog=INFO_EPILOG,
                       description="Print the number of images, rows per image (K), classes (C), stored bytes, the "
                       "compression ratio against fp16 logits and against the fp16 dump, ranks and methods.")
    p.add_argument("store", help="The label store.")
    p.add_argument("--json", action="store_true", help="Print the statistics as JSON on stdout.")
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
    v.set_defaults(func=cmd_verify)
