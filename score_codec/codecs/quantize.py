"""Quantisation of factor matrices: fp16, bf16, or int8 with one scale per row or per matrix.

Every scheme maps a float32 matrix (m, n) to bytes and back; int8 stores an fp32 scale per row
(``max|row| / 127``) followed by the int8 values.  Callers quantise ``A^T`` (r, K) and ``B`` (r, C), so
"per row" means per rank component for both factors.  With ``one_scale`` an int8 matrix stores a single
scale (``max|matrix| / 127``): the coefficients of a store-wide basis whose rows carry each component's
spread (:class:`~score_codec.codecs.global_basis.GlobalCodec`) share one range, so one 4-byte scale per
record serves them all, where one per component costs 4 r bytes of a record that may hold only a few
hundred.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import CodecError

__all__ = ["QUANT_CODES", "QUANT_NAMES", "quantize", "quantize_batch", "dequantize", "dequantize_raw", "quantized_nbytes", "bytes_per_value",
           "roundtrip", "STORED_DTYPES"]

#: the torch dtype a quantised matrix is held in before dequantisation (int8 values carry a scale per row)
STORED_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8}

QUANT_CODES: Dict[str, int] = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3}
QUANT_NAMES = {v: k for k, v in QUANT_CODES.items()}
#: largest int8 row scale quantize() can write: max|x| / 127 of finite float32 values, in float32 as it does
MAX_INT8_SCALE = float(np.float32(np.finfo(np.float32).max) / np.float32(127))


def _scales(buf: memoryview, rows: int) -> np.ndarray:
    """The (rows,) float32 scales at the start of an int8 block; CodecError unless each is one quantize()
    can have written (finite, >= 0 and small enough that scale * 127 stays finite)."""
    scale = np.frombuffer(buf, dtype="<f4", count=rows)
    ok = (scale >= 0) & (scale <= MAX_INT8_SCALE)   # NaN fails both comparisons
    if not bool(ok.all()):
        bad = scale[~ok][0]
        raise CodecError(f"int8 block has a row scale of {bad!r}, expected a finite value in [0, {MAX_INT8_SCALE:.3g}]")
    return scale


def _check(quant: str) -> None:
    if quant not in QUANT_CODES:
        raise CodecError(f"unknown quantisation {quant!r}; choose one of {', '.join(QUANT_CODES)}")


def bytes_per_value(quant: str) -> int:
    """Bytes one stored value takes (scales not included)."""
    _check(quant)
    return {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}[quant]


def quantized_nbytes(quant: str, rows: int, cols: int, one_scale: bool = False) -> int:
    """Size in bytes of a quantised (rows, cols) matrix, scales included (``one_scale``: int8 with a single
    scale for the matrix)."""
    n = rows * cols * bytes_per_value(quant)
    return n + ((4 if one_scale else 4 * rows) if quant == "int8" and n else 0)


def roundtrip(x: torch.Tensor, quant: str, one_scale: bool = False) -> torch.Tensor:
    """``dequantize(quantize(x))`` computed in torch on ``x``'s device; ``x`` (..., m, n) float32
    (``one_scale``: int8 with one scale per (m, n) matrix instead of one per row)."""
    _check(quant)
    if quant == "fp32":
        return x
    if quant == "fp16":
        return x.to(torch.float16).to(x.dtype)
    if quant == "bf16":
        return x.to(torch.bfloat16).to(x.dtype)
    dims = (-2, -1) if one_scale else -1
    scale = (x.abs().amax(dim=dims, keepdim=True) / 127.0).to(torch.float32)
    q = torch.where(scale > 0, torch.round(x / torch.where(scale > 0, scale, 1.0)), 0.0).clamp(-127, 127)
    return q * scale


def quantize(x: torch.Tensor, quant: str, one_scale: bool = False) -> bytes:
    """Serialise a 2-D float32 tensor (m, n) under ``quant``; little-endian, row-major (``one_scale``: int8
    with one scale for the whole matrix)."""
    return quantize_batch(x[None], quant, one_scale)[0]


def quantize_batch(x: torch.Tensor, quant: str, one_scale: bool = False) -> List[bytes]:
    """:func:`quantize` of each (m, n) matrix of a float32 batch ``x`` (b, m, n), in one pass over the batch:
    the same bytes as ``[quantize(x[i], quant, one_scale) for i in range(b)]``."""
    _check(quant)
    x = x.detach().to("cpu", torch.float32).contiguous()
    b = x.shape[0]
    if quant in ("fp32", "fp16", "bf16"):
        arr = (x.numpy().astype("<f4") if quant == "fp32" else x.numpy().astype("<f2") if quant == "fp16"
               else x.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2"))
        return [arr[i].tobytes() for i in range(b)]
    if x[0].numel() == 0:
        return [b""] * b
    scale = x.abs().amax(dim=(-2, -1) if one_scale else -1, keepdim=True) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(x / safe).clamp(-127, 127).to(torch.int8).numpy()
    scale = scale.reshape(b, -1)
    sc = scale.numpy().astype("<f4")
    return [sc[i].tobytes() + q[i].tobytes() for i in range(b)]


def dequantize(buf: memoryview, quant: str, rows: int, cols: int, one_scale: bool = False) -> Tuple[torch.Tensor, int]:
    """Inverse of :func:`quantize`: returns ((rows, cols) float32 tensor, bytes consumed)."""
    _check(quant)
    n = quantized_nbytes(quant, rows, cols, one_scale)
    if len(buf) < n:
        raise CodecError(f"quantised block needs {n} bytes, found {len(buf)}")
    if quant in ("fp32", "fp16"):
        arr = np.frombuffer(buf, dtype="<f4" if quant == "fp32" else "<f2", count=rows * cols)
        return torch.from_numpy(arr.astype(np.float32).reshape(rows, cols)), n
    if quant == "bf16":
        arr = np.frombuffer(buf, dtype="<i2", count=rows * cols).copy()
        t = torch.from_numpy(arr).view(torch.bfloat16).to(torch.float32)
        return t.reshape(rows, cols), n
    if rows * cols == 0:
        return torch.zeros(rows, cols), n
    ns = 1 if one_scale else rows
    scale = np.broadcast_to(_scales(buf, ns), (rows,))
    q = np.frombuffer(buf, dtype=np.int8, count=rows * cols, offset=4 * ns)
    vals = q.reshape(rows, cols).astype(np.float32) * scale[:, None]
    return torch.from_numpy(vals), n


def dequantize_raw(buf: memoryview, quant: str, rows: int, cols: int,
                   one_scale: bool = False) -> Tuple[torch.Tensor, Optional[torch.Tensor], int]:
    """Like :func:`dequantize` but without widening: ((rows, cols) tensor in ``STORED_DTYPES[quant]``,
    (rows,) float32 scales for int8 or None, bytes consumed).  Value = stored * scale[row] (``one_scale``:
    the one stored scale, repeated for every row)."""
    _check(quant)
    n = quantized_nbytes(quant, rows, cols, one_scale)
    if len(buf) < n:
        raise CodecError(f"quantised block needs {n} bytes, found {len(buf)}")
    if quant == "int8":
        if rows * cols == 0:
            return torch.zeros(rows, cols, dtype=torch.int8), torch.ones(rows), n
        ns = 1 if one_scale else rows
        scale = torch.from_numpy(np.broadcast_to(_scales(buf, ns), (rows,)).copy())
        q = np.frombuffer(buf, dtype=np.int8, count=rows * cols, offset=4 * ns)
        return torch.from_numpy(q.reshape(rows, cols).copy()), scale, n
    if quant == "bf16":
        arr = np.frombuffer(buf, dtype="<i2", count=rows * cols).copy()
        return torch.from_numpy(arr).view(torch.bfloat16).reshape(rows, cols), None, n
    arr = np.frombuffer(buf, dtype="<f4" if quant == "fp32" else "<f2", count=rows * cols).copy()
    return torch.from_numpy(arr.reshape(rows, cols)), None, n
