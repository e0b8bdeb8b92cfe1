"""Paper hyperparameters (SCORE, Table 5) as presets.  The first table row is read as alpha and the second
as beta (our reading: the table does not label its rows).  They are starting points, not truths: sweep
alpha/beta on your own data.  IPCs other than 10 and 50 use the nearer of the two (ours)."""
from __future__ import annotations

from typing import Dict, Tuple

from score_codec.errors import InputError

__all__ = ["PRESETS", "preset"]

#: dataset -> {ipc: (alpha, beta)} plus the training temperature used for R(Y).
PRESETS: Dict[str, Dict[str, object]] = {
    "imagenet1k": {"ipc": {10: (5.0, 1.0), 50: (5.0, 1.0)}, "temperature": 20.0},
    "tiny": {"ipc": {10: (5.0, 0.001), 50: (10.0, 0.001)}, "temperature": 20.0},
    "imagewoof": {"ipc": {10: (5.0, 0.1), 50: (5.0, 0.1)}, "temperature": 20.0},
    "imagenette": {"ipc": {10: (0.1, 0.1), 50: (0.1, 0.1)}, "temperature": 10.0},
}


def preset(name: str, ipc: int) -> Tuple[float, float, float]:
    """``(alpha, beta, temperature)`` of dataset preset ``name`` at the IPC nearest ``ipc``."""
    try:
        p = PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
    table = p["ipc"]
    key = min(table, key=lambda k: (abs(k - ipc), k))
    alpha, beta = table[key]
    return alpha, beta, float(p["temperature"])
