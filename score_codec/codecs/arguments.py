"""Checks of numeric arguments (ranks, energies, ratios, sizes, counts) shared by the codecs and the store.

Python's comparisons let NaN through (``nan <= 0`` is False) and accept ``True`` as 1 and ``2.5`` as a
rank; these checks refuse every value that has no meaning for the argument, with a message naming it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Type

from ..errors import InputError, ScoreError

__all__ = ["check_int", "check_real", "check_device"]


def check_int(name: str, value: Any, minimum: int, maximum: Optional[int] = None,
              error: Type[ScoreError] = InputError) -> int:
    """``value`` as an int if it is an integer (not a bool) in ``[minimum, maximum]``; else ``error``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value == int(value):
            value = int(value)   # 4.0 from a config file means 4
        else:
            raise error(f"{name} must be an integer >= {minimum}, found {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise error(f"{name} must be an integer {bound}, found {value}")
    return value


def check_real(name: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = True,
               high_open: bool = False, error: Type[ScoreError] = InputError) -> float:
    """``value`` as a float if it is a finite real in the interval from ``low`` to ``high`` (open or closed
    at each end as given); else ``error``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{name} must be a number, found {value!r}")
    v = float(value)
    above = v > low if low_open else v >= low
    below = v < high if high_open else v <= high
    if not (math.isfinite(v) and above and below):
        lo, hi = ("(" if low_open else "["), (")" if high_open or math.isinf(high) else "]")
        raise error(f"{name} must be a finite number in {lo}{low:g}, {high:g}{hi}, found {value!r}")
    return v


def check_device(name: str, value: Any, error: Type[ScoreError] = InputError) -> str:
    """``value`` as a device string torch accepts and this machine has (``"cpu"``, ``"cuda"``,
    ``"cuda:1"``, ...); else ``error`` naming it."""
    import torch

    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise error(f"{name} must be a torch device such as 'cpu' or 'cuda:0', found {value!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise error(f"{name}={value!r}: this torch build or machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise error(f"{name}={value!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return str(value)
