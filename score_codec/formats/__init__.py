"""Readers and writers of existing soft-label dump formats (SRe2L, LPLD, G-VBSM, EDC, LPQLD, FKD, npy).

:func:`encode_dump` / :func:`decode_dump` convert between a dump and a label store (``score-codec encode`` /
``decode``); ``read_dump(path, "auto")`` -> :class:`DumpContents` (per-image matrices + AugMeta + labels);
``write_dump(source, dst, fmt)`` writes a store or contents back; ``FORMATS`` / ``WRITERS`` are the
registries (one class / function per format, looked up by name).
"""
from __future__ import annotations

import importlib

from .base import FORMATS, BatchRecord, DumpReader, register_format
from .contents import DumpContents, DumpScan, read_dump, scan_dump
from .convert import decode_dump, encode_dump, plan_dump
from .detect import detect_format, format_names, open_reader
from .options import DumpOptions
from .report import store_info, verify_store
from .safe_load import safe_torch_load
from .writers import WRITERS, write_dump

# importing a reader's module registers it in FORMATS
for _module in ("sre2l", "gvbsm_edc", "fkd", "lpqld", "npy"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["FORMATS", "WRITERS", "BatchRecord", "DumpReader", "DumpContents", "DumpScan", "register_format", "read_dump", "scan_dump",
           "write_dump", "detect_format", "format_names", "open_reader", "safe_torch_load", "encode_dump", "plan_dump", "decode_dump",
           "DumpOptions", "store_info", "verify_store"]
