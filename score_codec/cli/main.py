"""The ``score-codec`` command line.

Each subcommand lives in its own module, which exposes ``register(subparsers)``; this module only
assembles them and maps :class:`~score_codec.errors.ScoreError` to exit codes (2: bad input,
1: failed integrity check, 0: success).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import List, Optional

from ..errors import ScoreError, cli_message

__all__ = ["main", "build_parser"]

#: Modules that contribute subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = [
    "score_codec.cli.encode",
    "score_codec.cli.info",
    "score_codec.cli.relabel",
    "score_codec.cli.train",
]

EPILOG = """examples:
  score-codec encode dumps/FKD_cutmix_fp16 labels.store --method svd --rank 8
  score-codec info labels.store
  score-codec verify labels.store --against dumps/FKD_cutmix_fp16
  score-codec decode labels.store restored_dump --format sre2l
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="score-codec",
        description="Compress, inspect, verify and restore dataset-distillation soft-label dumps.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Log debug messages to stderr.")
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
    try:
        return int(args.func(args) or 0)
    except ScoreError as exc:
        print(f"score-codec {args.command}: error: {cli_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("score-codec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
