"""The ``score-codec`` command line.

Each subcommand lives in its own module, which exposes ``register(subparsers)``; this module only
assembles them and maps errors to exit codes (:data:`~score_codec.cli.exits.EXIT_STATUS_HELP`: 0 success,
1 failed integrity check, 2 bad input, 3 I/O failure).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from .._version import __version__
from .exits import EXIT_STATUS_HELP, run_reporting_errors

__all__ = ["main", "build_parser"]

#: Modules that contribute subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = [
    "score_codec.cli.encode",
    "score_codec.cli.plan",
    "score_codec.cli.info",
    "score_codec.cli.relabel",
    "score_codec.cli.train",
    "score_codec.cli.upgrade",
]

EPILOG = """examples:
  score-codec plan dumps/sre2l_ipc50 --ratio 30 100 300 1000   # what each ratio would keep, before encoding
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --method svd --rank 8
  score-codec info labels.store
  score-codec verify labels.store --against dumps/FKD_cutmix_fp16
  score-codec decode labels.store restored_dump --format sre2l
  score-codec upgrade old.store                  # a store of an older format version, rewritten in place

""" + EXIT_STATUS_HELP


class _Version(argparse.Action):
    """``--version``: the store format is read only when asked for (importing the store imports torch)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from ..store.layout import FORMAT_VERSION

        print(f"{parser.prog} {__version__} (writes store format version {FORMAT_VERSION})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="score-codec",
        description="Compress, inspect, verify and restore dataset-distillation soft-label dumps.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages to stderr.")
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="Print the package version and the store format version it writes, and exit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``score-codec``; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s: %(message)s")
    return run_reporting_errors(f"score-codec {args.command}", lambda: args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
