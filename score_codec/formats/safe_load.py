"""Restricted loading of pickled ``torch.save`` dump files.

Soft-label dumps are pickles, and unpickling runs whatever code a file names.  We therefore only use
``torch.load(weights_only=True)`` (torch's own restricted unpickler) and widen its allow-list by the
few numpy globals these dumps legitimately contain: ``numpy.int64`` scalars in SRe2L's ``mix_bbox`` and
numpy arrays in original FKD files.  A file that asks for anything else is refused with
:class:`~score_codec.errors.UnsafePickleError` naming the file and the global; a truncated or
damaged archive raises :class:`~score_codec.errors.FormatError`.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, List

import numpy as np
import torch

from ..errors import FormatError, UnsafePickleError

__all__ = ["safe_torch_load", "numpy_allow_list"]

log = logging.getLogger(__name__)

_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)|got <class '([\w.]+)'>|Unsupported global: GLOBAL ([\w.]+)")


def numpy_allow_list() -> List[Any]:
    """The numpy globals a dump may reference: array / scalar reconstruction and plain dtypes.

    Only data constructors are listed (no callables with side effects); numpy 1.x and 2.x paths both.
    """
    try:  # numpy >= 2 moved the core module; the pickles name whichever wrote them
        from numpy._core import multiarray as ma
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    allow: List[Any] = [ma._reconstruct, ma.scalar, np.ndarray, np.dtype]
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:  # numpy >= 1.25 pickles dtypes through their DType classes
        for name in ("BoolDType", "UInt8DType", "Int8DType", "Int16DType", "UInt16DType", "Int32DType",
                     "UInt32DType", "Int64DType", "UInt64DType", "Float16DType", "Float32DType", "Float64DType"):
            cls = getattr(dtypes_mod, name, None)
            if cls is not None:
                allow.append(cls)
    return allow


def _wanted_global(msg: str) -> str:
    m = _GLOBAL_RE.search(msg)
    if not m:
        return "an unsupported object"
    return next(g for g in m.groups() if g)


def _is_zip(path: str) -> bool:
    """A torch zip archive starts with a local file header; ``zipfile.is_zipfile`` would also accept a
    legacy pickle that happens to hold an end-of-archive signature near its end."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def _on_cpu(storage: Any, location: str) -> Any:
    """map_location that keeps every storage where torch deserialised it, on the CPU (also those saved
    from a GPU).  Same result as ``map_location="cpu"`` without its per-storage move, which costs more
    than the rest of loading a small SRe2L batch file."""
    return storage


def safe_torch_load(path: str, mmap: bool = False) -> Any:
    """``torch.load`` a dump file on the CPU without executing pickled code.

    Args:
        path: a ``torch.save`` file (zip archive or legacy pickle).
        mmap: map a zip archive's tensors instead of reading them (their bytes are read when first
            touched; a legacy pickle is read as usual).
    Returns:
        the unpickled object (tensors, numpy arrays of plain dtypes, Python scalars, lists, dicts).
    Raises:
        UnsafePickleError: the file references a global outside torch's and our numpy allow-list.
        FormatError: the file is missing, empty, truncated or not a torch file.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read dump file ({exc.strerror or exc})") from exc
    if size == 0:
        raise FormatError(f"{path}: dump file is empty (expected a torch.save archive)")
    try:
        with torch.serialization.safe_globals(numpy_allow_list()):
            if mmap and _is_zip(path):
                return torch.load(path, map_location=_on_cpu, weights_only=True, mmap=True)
            return torch.load(path, map_location=_on_cpu, weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Weights only load failed" in msg or "GLOBAL" in msg:
            raise UnsafePickleError(
                f"{path}: refused to unpickle: the file needs {_wanted_global(msg)}, which is not in the allow-list "
                f"of tensors, Python containers and plain numpy arrays/scalars (no code is executed from dumps)"
            ) from None
        raise FormatError(f"{path}: not a readable torch.save file ({msg.splitlines()[0] if msg else 'unpickling failed'})") from None
    except (EOFError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{path}: truncated or damaged torch.save file ({type(exc).__name__}: {exc})") from None
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError,
            OverflowError, MemoryError, OSError) as exc:
        # torch.load has no single error for a damaged archive: anything it raises here means one
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise FormatError(f"{path}: truncated or damaged torch.save file ({type(exc).__name__}: {msg[:200]})") from None
