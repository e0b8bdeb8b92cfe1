"""``--format auto``: find the dump family of a path by asking each registered reader in turn."""
from __future__ import annotations

import logging
import os
from typing import Any, List

from ..errors import FormatError, InputError
from .base import FORMATS, DumpReader

__all__ = ["detect_format", "open_reader", "format_names"]

log = logging.getLogger(__name__)


def format_names() -> List[str]:
    """Registered format names, in detection order."""
    return [c.name for c in sorted(FORMATS.values(), key=lambda c: (c.priority, c.name))]


def detect_format(path: str) -> str:
    """Name of the family ``path`` belongs to; InputError if the path is missing, FormatError if none fits."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such dump file or directory")
    for name in format_names():
        if FORMATS[name].detect(path):
            return name
    raise FormatError(f"{path}: not a known soft-label dump (tried {', '.join(format_names())}); "
                      f"pass --format to name it")


def open_reader(path: str, fmt: str = "auto", **options: Any) -> DumpReader:
    """Instantiate the reader for ``fmt`` (or the detected one) with reader ``options``."""
    if fmt in (None, "auto"):
        fmt = detect_format(path)
        log.info("detected format: %s", fmt)
    if fmt not in FORMATS:
        raise InputError(f"unknown dump format {fmt!r}; known: {', '.join(format_names())}")
    return FORMATS[fmt](path, **options)
