"""Coding rates of SCORE (paper Eq. 4), computed exactly with batched log-determinants.

Conventions (marked *ours* where the paper is silent):

* Features are rows: ``Z`` is ``(m, d)``, one L2-normalised teacher feature per row (MCR^2 convention).
* ``eps_sq`` is the squared distortion eps^2, exactly like the ``eps`` argument of MCR^2's reference
  code (ryanchankh/mcr2, ``loss.py``), default 0.5.  We name it ``eps_sq`` so nobody squares it twice.
* ``R(Z) = 1/2 logdet(I_d + d / (n eps^2) Z^T Z)`` uses the *final* budget ``n`` (not ``|S|``) in the scale,
  which makes the set function fixed during greedy and monotone submodular.
* ``Rc(Z) = sum_c n_c / (2 n) logdet(I_d + d / (n_c eps^2) Z_c^T Z_c)`` with ``n_c`` the per-class budget.
* ``R(Y_i) = 1/2 logdet(I + C / (K eps_y^2) Yt_i^T Yt_i)`` where ``Yt_i`` is the row-centred log-softmax of
  the image's ``K x C`` augmented teacher logits at temperature ``T`` (*ours*: the paper does not say
  which representation of the soft labels it codes; centred log-probabilities are what the codec stores).

Every log-determinant is taken on the smaller Gram side (``m x m`` or ``d x d`` give the same value) via a
Cholesky factorisation, batched over leading dimensions.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from score_codec.codecs.base import all_finite
from score_codec.errors import InputError

__all__ = [
    "DEFAULT_EPS_SQ",
    "logdet_gram",
    "coding_rate",
    "class_coding_rate",
    "label_coding_rate",
    "residual_label_coding_rate",
    "objective",
]

#: MCR^2's default distortion, already squared.
DEFAULT_EPS_SQ = 0.5


def logdet_gram(Z: torch.Tensor, scale: Union[float, torch.Tensor]) -> torch.Tensor:
    """``logdet(I + scale * Z^T Z)`` for a batch of matrices, on the smaller Gram side.

    Args:
        Z: ``(..., m, d)`` matrices (any float dtype; computed in that dtype).
        scale: positive scalar, or a tensor broadcastable to the batch shape ``(...)``.

    Returns:
        ``(...)`` log-determinants in nats.  An empty matrix (``m == 0``) gives 0.
    """
    m, d = Z.shape[-2], Z.shape[-1]
    if m == 0 or d == 0:
        return Z.new_zeros(Z.shape[:-2])
    # Sylvester: det(I_d + a Z^T Z) == det(I_m + a Z Z^T); the smaller side is cheaper and better conditioned.
    G = Z @ Z.transpose(-1, -2) if m <= d else Z.transpose(-1, -2) @ Z
    k = G.shape[-1]
    scale = torch.as_tensor(scale, dtype=Z.dtype, device=Z.device)
    A = torch.eye(k, dtype=Z.dtype, device=Z.device) + scale[..., None, None] * G
    L, info = torch.linalg.cholesky_ex(A)
    if bool((info != 0).any()):  # rounding only; I + aG is SPD in exact arithmetic
        return torch.linalg.slogdet(A)[1]
    return 2.0 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)


def coding_rate(Z: torch.Tensor, eps_sq: float = DEFAULT_EPS_SQ, n: Optional[int] = None) -> torch.Tensor:
    """Coding rate ``R(Z) = 1/2 logdet(I_d + d/(n eps^2) Z^T Z)`` in nats.

    Args:
        Z: ``(..., m, d)`` features, one per row.
        eps_sq: squared distortion eps^2.
        n: the sample count in the scale factor; default ``m`` (the textbook definition).  SCORE passes the
            final selection budget here.
    """
    m, d = Z.shape[-2], Z.shape[-1]
    n = m if n is None else n
    if n <= 0:
        return Z.new_zeros(Z.shape[:-2])
    return 0.5 * logdet_gram(Z, d / (n * eps_sq))


def class_coding_rate(Z: torch.Tensor, labels: torch.Tensor, eps_sq: float = DEFAULT_EPS_SQ,
                      n: Optional[int] = None, n_c: Optional[Union[Sequence[int], torch.Tensor]] = None,
                      num_classes: Optional[int] = None) -> torch.Tensor:
    """Class-conditional coding rate ``Rc = sum_c n_c/(2n) logdet(I_d + d/(n_c eps^2) Z_c^T Z_c)`` in nats.

    Args:
        Z: ``(m, d)`` features of the selected set.
        labels: ``(m,)`` class ids in ``[0, num_classes)``.
        eps_sq: squared distortion eps^2.
        n: total budget in the class weights; default ``m``.
        n_c: ``(num_classes,)`` per-class budgets (SCORE: IPC for every class); default the observed counts.
        num_classes: class count; default ``max(labels) + 1`` (or ``len(n_c)``).

    Returns:
        A 0-d tensor.
    """
    labels = torch.as_tensor(labels, device=Z.device).long()
    m, d = Z.shape
    if num_classes is None:
        num_classes = len(n_c) if n_c is not None else (int(labels.max()) + 1 if m else 0)
    counts = torch.bincount(labels, minlength=num_classes)
    n_c = counts if n_c is None else torch.as_tensor(n_c, device=Z.device)
    n = m if n is None else n
    total = Z.new_zeros(())
    for c in range(num_classes):
        if counts[c] == 0 or n_c[c] <= 0:
            continue
        nc = float(n_c[c])
        total = total + (nc / (2.0 * n)) * logdet_gram(Z[labels == c], d / (nc * eps_sq))
    return total


def label_coding_rate(Y: torch.Tensor, eps_sq: float = DEFAULT_EPS_SQ, temperature: float = 1.0,
                      chunk_size: int = 4096) -> torch.Tensor:
    """Per-image soft-label coding rate ``R(Y_i)`` in nats (the compressibility term of Eq. 4).

    Args:
        Y: ``(N, K, C)`` raw teacher logits, ``K`` augmented views per image (fp16 dumps are upcast).
        eps_sq: squared distortion eps_y^2 of the label space.
        temperature: softmax temperature ``T`` (the training temperature, e.g. 20 for ImageNet-1K).
        chunk_size: images per batched log-determinant (bounds the ``chunk x min(K,C)^2`` Gram memory).

    Returns:
        ``(N,)`` rates in the dtype of ``Y`` (float32 for half inputs).
    """
    if Y.ndim != 3:
        raise InputError(f"soft labels must have shape (N, K, C), found {tuple(Y.shape)}")
    if not all_finite(Y):
        raise InputError("soft labels contain NaN or Inf")
    N, K, C = Y.shape
    dtype = Y.dtype if Y.dtype in (torch.float32, torch.float64) else torch.float32
    out = torch.empty(N, dtype=dtype, device=Y.device)
    for s in range(0, N, chunk_size):
        y = torch.log_softmax(Y[s:s + chunk_size].to(dtype) / temperature, dim=-1)
        y = y - y.mean(dim=-1, keepdim=True)
        out[s:s + chunk_size] = 0.5 * logdet_gram(y, C / (K * eps_sq))
    return out


def _centred_log_probs(Y: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    y = torch.log_softmax(Y.to(dtype) / temperature, dim=-1)
    return y - y.mean(dim=-1, keepdim=True)


def residual_label_coding_rate(Y: torch.Tensor, rank: int = 16, eps_sq: float = DEFAULT_EPS_SQ,
                               temperature: float = 1.0, fit_rows: int = 65_536,
                               chunk_size: int = 4096) -> torch.Tensor:
    """Per-image coding rate of the soft labels a store-wide basis leaves out (*ours*).

    The default codec codes every row in one basis fitted on the whole store, so what it cannot represent
    of an image is the part of its rows outside that subspace, not how low-rank the image's own ``K x C``
    matrix is (CutMix makes those full-rank anyway).  This is :func:`label_coding_rate` of the rows'
    residuals after projecting the centred log-probabilities onto the mean row plus the top-``rank``
    principal directions of all candidates' rows (fitted on about ``fit_rows`` rows from images spread
    over the candidates).

    Args:
        Y: ``(N, K, C)`` raw teacher logits of K augmented views per candidate.
        rank: directions of the store-wide basis (the codec's rank at the budget of interest).
        eps_sq, temperature: as in :func:`label_coding_rate`.
        fit_rows: rows the basis is fitted on.
        chunk_size: images per batched log-determinant.

    Returns:
        ``(N,)`` rates in nats (float32 for half inputs).
    """
    if Y.ndim != 3:
        raise InputError(f"soft labels must have shape (N, K, C), found {tuple(Y.shape)}")
    if not all_finite(Y):
        raise InputError("soft labels contain NaN or Inf")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise InputError(f"rank must be a non-negative integer, found {rank!r}")
    N, K, C = Y.shape
    dtype = Y.dtype if Y.dtype in (torch.float32, torch.float64) else torch.float32
    pick = torch.linspace(0, N - 1, max(1, min(N, -(-fit_rows // K)))).round().long().unique()
    rows = _centred_log_probs(Y[pick], temperature, dtype).reshape(-1, C)
    mean = rows.mean(0)
    rows = rows - mean
    evals, evecs = torch.linalg.eigh(rows.T @ rows)
    basis = evecs[:, torch.argsort(evals, descending=True)[:min(rank, C)]].T.contiguous()   # (r, C)
    out = torch.empty(N, dtype=dtype, device=Y.device)
    for s in range(0, N, chunk_size):
        y = _centred_log_probs(Y[s:s + chunk_size], temperature, dtype) - mean
        resid = y - (y @ basis.T) @ basis
        out[s:s + chunk_size] = 0.5 * logdet_gram(resid, C / (K * eps_sq))
    return out


def objective(Z: torch.Tensor, labels: torch.Tensor, alpha: float = 0.0, beta: float = 0.0,
              eps_sq: float = DEFAULT_EPS_SQ, n: Optional[int] = None,
              n_c: Optional[Union[Sequence[int], torch.Tensor]] = None, num_classes: Optional[int] = None,
              label_rates: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The SCORE set objective ``F(S) = R(Z_S) - alpha Rc(Z_S) - beta sum_{x in S} R(Y_x)`` in nats.

    ``Z``/``labels``/``label_rates`` are the rows of the selected set (``(m, d)``, ``(m,)``, ``(m,)``);
    ``n``/``n_c`` are the final budgets used in the scale factors (defaults as in :func:`coding_rate` and
    :func:`class_coding_rate`).  The greedy gains of :mod:`score_select.greedy` sum to this value.
    """
    val = coding_rate(Z, eps_sq, n)
    if alpha:
        val = val - alpha * class_coding_rate(Z, labels, eps_sq, n=n if n is not None else Z.shape[0],
                                              n_c=n_c, num_classes=num_classes)
    if beta and label_rates is not None:
        val = val - beta * label_rates.to(Z.dtype).sum()
    return val
