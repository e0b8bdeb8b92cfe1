"""The ``score-codec`` command line: ``main`` plus one module per subcommand group.

Subcommand modules import argparse only at module level; the library (and torch) is imported when a
command runs, so ``--help`` and argument errors answer immediately.
"""
from .main import build_parser, main

__all__ = ["main", "build_parser"]
