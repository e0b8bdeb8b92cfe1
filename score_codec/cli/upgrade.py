"""``score-codec upgrade``: rewrite a store written by an older format version in the current one."""
from __future__ import annotations

import argparse
import json

from .options import HelpFormatter

__all__ = ["register", "cmd_upgrade"]

EPILOG = """examples:
  score-codec upgrade old.store                 # in place, once the new store is complete
  score-codec upgrade old.h5 labels.store       # to a new path (either kind)
"""


def cmd_upgrade(args: argparse.Namespace) -> int:
    """Parse, call :func:`score_codec.store.upgrade.upgrade_store`, print what was done."""
    from ..store.upgrade import upgrade_store

    out = upgrade_store(args.src, args.dst)
    if args.json:
        print(json.dumps(out))
    elif not out["changed"]:
        print(f"{out['src']}: already format version {out['to_version']}; nothing to do")
    else:
        print(f"{out['src']} (format version {out['from_version']}) -> {out['dst']} (format version "
              f"{out['to_version']}): {out['images']} images, records copied unchanged")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``upgrade`` to the ``score-codec`` parser."""
    p = sub.add_parser("upgrade", help="Rewrite a store in the current format version.", formatter_class=HelpFormatter,
                       epilog=EPILOG, description="Read a store written by an older format version (through libhdf5: "
                       "run this only on files you trust), check every record, and write the same records, bases, "
                       "index and metadata in the current format, whose reader never hands a file to libhdf5. "
                       "Nothing is re-encoded: the upgraded store decodes to the same logits.")
    p.add_argument("src", help="The store to upgrade.")
    p.add_argument("dst", nargs="?", default=None, help="Where to write the upgraded store (default: replace SRC "
                   "once the new store is complete).")
    p.add_argument("--json", action="store_true", help="Print the result as JSON on stdout.")
    p.set_defaults(func=cmd_upgrade)
