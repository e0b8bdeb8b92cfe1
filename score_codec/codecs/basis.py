"""Numeric kernels of the global codecs: streaming PCA, KL-optimal coefficients, a teacher-head basis.

All functions are batched torch and run on the device of their inputs (CPU or CUDA); none holds more
than ``chunk_rows`` rows of per-row work at a time.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..errors import CodecError, InputError

__all__ = ["GramAccumulator", "fit_coefficients", "orthonormal_rows", "head_basis", "kl_rows"]


class GramAccumulator:
    """First and second moments of logit rows, accumulated in float64: memory C^2, whatever the row count.

    ``add`` rows in any number of calls (or on several ranks and :meth:`merge`), then :meth:`pca`.
    """

    def __init__(self, num_classes: int, device: torch.device = torch.device("cpu")) -> None:
        self.c = int(num_classes)
        self.count = 0
        self.total = torch.zeros(self.c, dtype=torch.float64, device=device)
        self.gram = torch.zeros(self.c, self.c, dtype=torch.float64, device=device)
        self.shift = torch.zeros(self.c, device=device)

    def add(self, rows: torch.Tensor, chunk_rows: int = 8192) -> None:
        """Add row-centred logit rows (n, C).  Each chunk's products are float32 GEMMs (float64 ones
        are several times slower), summed into float64; the rows are shifted by the first chunk's mean first, so the float32
        products see centred values and keep their precision."""
        if rows.ndim != 2 or rows.shape[1] != self.c:
            raise CodecError(f"GramAccumulator: expected (n, {self.c}) rows, found {tuple(rows.shape)}")
        for s in range(0, rows.shape[0], chunk_rows):
            x = rows[s:s + chunk_rows].to(self.gram.device, torch.float32)
            if self.count == 0:
                self.shift = x.mean(0)
            x = x - self.shift
            self.total += x.sum(0).to(torch.float64)
            self.gram += (x.T @ x).to(torch.float64)
            self.count += int(x.shape[0])

    def merge(self, other: "GramAccumulator") -> None:
        """Add another accumulator's rows (e.g. another rank's)."""
        if other.count == 0:
            return
        if self.count == 0:
            self.shift = other.shift.to(self.gram.device)
        # re-express the other's moments about this accumulator's shift
        d = (other.shift.to(self.gram.device) - self.shift).to(torch.float64)
        t = other.total.to(self.total.device)
        self.gram += other.gram.to(self.gram.device) + torch.outer(t, d) + torch.outer(d, t) + other.count * torch.outer(d, d)
        self.total += t + other.count * d
        self.count += other.count

    def covariance(self) -> torch.Tensor:
        """(C, C) float64 covariance of the rows about their mean."""
        if self.count == 0:
            raise CodecError("GramAccumulator.covariance: no rows were added")
        mean = self.total / self.count
        return self.gram / self.count - torch.outer(mean, mean)

    def pca(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean (C,), basis (C, C) rows = principal directions by decreasing variance, variances (C,)),
        all float64.  The variances are the eigenvalues of the covariance of the rows about their mean."""
        if self.count == 0:
            raise CodecError("GramAccumulator.pca: no rows were added")
        cov = self.covariance()
        mean = self.total / self.count + self.shift.to(torch.float64)
        evals, evecs = torch.linalg.eigh(cov)
        order = torch.argsort(evals, descending=True)
        return mean, evecs[:, order].T.contiguous(), evals[order].clamp_min(0)


def orthonormal_rows(rows: torch.Tensor, against: Optional[torch.Tensor] = None, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal rows spanning ``rows`` (r, C) minus its component along ``against`` (q, C, orthonormal).

    Directions that vanish (norm below ``tol`` of the largest) are dropped, so fewer than r rows may come back."""
    x = rows.to(torch.float64)
    if against is not None and against.numel():
        a = against.to(torch.float64)
        x = x - (x @ a.T) @ a
        x = x - (x @ a.T) @ a      # twice: classical Gram-Schmidt loses orthogonality once
    if x.shape[0] == 0:
        return x
    q, r = torch.linalg.qr(x.T)
    keep = r.diagonal().abs() > tol * max(float(r.diagonal().abs().max()), 1e-300)
    return q.T[keep].contiguous()


def head_basis(weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
               num_classes: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Basis and mean of a teacher's final linear layer ``logits = weight @ h + bias``.

    ``weight`` (C, d), ``bias`` (C,).  Row-centred logits lie in ``mean + span(rows)`` with
    mean = centred bias and rows = an orthonormal basis (d', C) of the centred columns of ``weight``,
    so the global codec with this basis reproduces the teacher's logits up to quantisation.
    ``num_classes``: the C of the labels it will code; a head with another C is an InputError."""
    w = weight.detach().to(torch.float64)
    if w.ndim != 2:
        raise CodecError(f"head_basis: weight must be (C, d), found shape {tuple(w.shape)}")
    if num_classes is not None and w.shape[0] != num_classes:
        raise InputError(f"head: the teacher's final layer has {w.shape[0]} outputs (weight {tuple(w.shape)}), "
                         f"the labels have {num_classes} classes")
    if bias is not None and tuple(bias.shape) != (w.shape[0],):
        raise InputError(f"head: bias must have shape ({w.shape[0]},) to match weight {tuple(w.shape)}, "
                         f"found {tuple(bias.shape)}")
    b = torch.zeros(w.shape[0], dtype=torch.float64) if bias is None else bias.detach().to(torch.float64)
    w = w - w.mean(0, keepdim=True)
    return b - b.mean(), orthonormal_rows(w.T)


def kl_rows(target_log: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row KL(p || softmax(logits / T)) with ``target_log`` = log p (n, C); returns (n,)."""
    lq = torch.log_softmax(logits / temperature, -1)
    return (target_log.exp() * (target_log - lq)).sum(-1)


def _solve_spd(h: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Solve h x = g for a batch of damped Hessians h (n, r, r) and g (n, r): Cholesky, which takes about half
    the work of LU on these symmetric positive definite systems; LU for any matrix the factorisation rejects
    (the top-m Hessian approximation can lose definiteness in float32)."""
    chol, info = torch.linalg.cholesky_ex(h)
    x = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
    bad = info != 0
    if bool(bad.any()):
        x[bad] = torch.linalg.solve(h[bad], g[bad])
    return x


def fit_coefficients(y: torch.Tensor, basis: torch.Tensor, mean: Optional[torch.Tensor] = None, *,
                     temperature: float = 1.0, steps: int = 2, damping: float = 1e-3, penalty: float = 0.0,
                     hessian_classes: Optional[int] = 64, chunk_rows: int = 1024) -> torch.Tensor:
    """Coefficients ``a`` (n, r) with ``mean + a @ basis`` close to the rows ``y`` (n, C) in KL.

    Starts from the least-squares projection (exact for an orthonormal ``basis`` (r, C)), then takes
    ``steps`` damped Newton steps on KL(softmax(y/T) || softmax(yhat/T)) per row, each followed by a
    backtracking search (full, half or quarter step; a row keeps its old coefficients when no step lowers
    its KL).  Squared-error projection spends its accuracy evenly over all C classes; KL weights the few
    classes that carry the probability mass, which is what a student trained on softmax(y/T) sees
    (on 1000-class CutMix logits, rank 16: KL(T=1) 0.29 -> 0.07).  KL at one temperature is blind to
    logits far below the top ones, which other temperatures see; ``penalty`` adds
    ``penalty * h0 / 2 * ||a - a_projection||^2`` (h0: the row's mean Hessian diagonal at the start), which
    keeps the fit near the least-squares one.  ``hessian_classes=m`` builds ``B diag(q) B^T`` from the m most
    probable classes of each row exactly and spreads the remaining mass evenly over the others (for an
    orthonormal basis that part is ``(I - B_top B_top^T)`` times the mean remaining probability): m r^2
    instead of C r^2 per row; the gradient stays exact and the line search checks every step.  None: exact.
    float32 on the device of ``y``.
    """
    dev = y.device
    b = basis.to(dev, torch.float32)
    r = b.shape[0]
    mu = torch.zeros(y.shape[1], device=dev) if mean is None else mean.to(dev, torch.float32)
    out = torch.empty(y.shape[0], r, device=dev)
    if r == 0:
        return out
    gram = b @ b.T
    orthonormal = bool(torch.allclose(gram, torch.eye(r, device=dev), atol=1e-3))
    eye = torch.eye(r, device=dev)
    t = float(temperature)
    # B diag(q) B^T for every row at once as one GEMM: q (n, C) @ P (C, r(r+1)/2), P[c] = upper triangle
    # of b_c b_c^T (no (n, r, C) intermediate)
    iu = torch.triu_indices(r, r, device=dev)
    c = b.shape[1]
    top_m = None if hessian_classes is None or not orthonormal or hessian_classes >= c else int(hessian_classes)
    outer = None if top_m else (b.T[:, :, None] * b.T[:, None, :])[:, iu[0], iu[1]]     # (C, r(r+1)/2)
    bt = b.T.contiguous()
    # least squares against the basis as stored: a rounded (fp16) orthonormal basis is orthonormal only to
    # about 1e-3, and a plain projection would leave that much of every row's scale as error even at full rank
    ginv = torch.linalg.pinv(gram.double()).float()
    inv_t = 1.0 / t
    for s in range(0, y.shape[0], chunk_rows):
        yc = y[s:s + chunk_rows].to(torch.float32)
        x = ((yc - mu) @ b.T) @ ginv
        if steps > 0:
            plog = torch.log_softmax(yc if t == 1.0 else yc * inv_t, -1)
            p = plog.exp()
            # KL(p || q) = sum p log p - sum p log q: the first term is fixed per row, and p @ B^T once
            # gives the gradient's target part (B (q - p) = B q - B p)
            plogp = (p * plog).sum(-1)
            pb = p @ b.T
            x0 = x
            rho = torch.zeros(x.shape[0], device=dev)

            def logq(xx: torch.Tensor) -> torch.Tensor:
                z = torch.addmm(mu, xx, b)
                return torch.log_softmax(z if t == 1.0 else z * inv_t, -1)

            def objective(xx: torch.Tensor) -> torch.Tensor:
                return plogp - (p * logq(xx)).sum(-1) + 0.5 * rho * (xx - x0).pow(2).sum(-1)

            cur = objective(x)
            for it in range(steps):
                q = logq(x).exp_()
                qb = q @ b.T
                g = (qb - pb) * inv_t
                # Hessian of the softmax KL in coefficient space: B (diag q - q q^T) B^T / T^2
                if top_m:
                    qt, idx = torch.topk(q, top_m, dim=-1)
                    bs = bt[idx]                                              # (n, m, r)
                    rest = (1 - qt.sum(-1)).clamp_min(0) / (c - top_m)         # mean probability of the others
                    h = torch.matmul(bs.transpose(1, 2) * (qt - rest[:, None])[:, None, :], bs)
                    h = h + rest[:, None, None] * eye
                else:
                    h = q.new_empty(q.shape[0], r, r)
                    tri = q @ outer
                    h[:, iu[0], iu[1]] = tri
                    h[:, iu[1], iu[0]] = tri
                h = (h - qb[:, :, None] * qb[:, None, :]) * inv_t ** 2
                diag = h.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)
                if it == 0 and penalty > 0:
                    rho = penalty * diag
                    cur = objective(x)
                g = g + rho[:, None] * (x - x0)
                step = _solve_spd(h + (damping * diag + rho)[:, None, None] * eye, g)
                best, best_kl = x, cur
                for frac in (1.0, 0.5, 0.25):
                    xn = x - frac * step
                    k = objective(xn)
                    better = k < best_kl
                    best = torch.where(better[:, None], xn, best)
                    best_kl = torch.where(better, k, best_kl)
                x, cur = best, best_kl
        out[s:s + chunk_rows] = x
    return out
