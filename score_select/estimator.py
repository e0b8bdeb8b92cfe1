"""A scikit-learn-style estimator around :func:`score_select.select`, in apricot's vocabulary.

``__init__`` only stores parameters (so ``get_params``/``set_params``/cloning work as in scikit-learn,
which is not a dependency); ``fit(X, y)`` sets ``ranking_`` (picked indices in pick order), ``gains_``
(marginal gains, nats) and ``n_features_in_``; ``transform(X)`` returns ``X[ranking_]``.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Sequence, Union

import torch

from score_codec.errors import InputError

from .api import DEFAULT_ALPHA, DEFAULT_BETA, select
from .coding_rate import DEFAULT_EPS_SQ

__all__ = ["ScoreSelection"]


class ScoreSelection:
    """Select ``ipc`` samples per class with a registered method.

    Args:
        ipc: images per class (int or one per class).
        method: registered method name (``score``, ``coding-rate``, ``random``, ``herding``, ``kcenter``,
            ``rded``).
        alpha, beta, eps_sq: objective weights and squared distortion (see :func:`score_select.select`).
        device: compute device.
        dtype: compute precision.
        seed: seed of random methods.
        verbose: show a progress bar on stderr.
        options: extra method options, e.g. ``{"order": "round_robin"}``.
    """

    def __init__(self, ipc: Union[int, Sequence[int]] = 10, method: str = "score", alpha: float = DEFAULT_ALPHA,
                 beta: float = DEFAULT_BETA, eps_sq: float = DEFAULT_EPS_SQ, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0, verbose: bool = False,
                 options: Optional[Dict[str, Any]] = None) -> None:
        self.ipc = ipc
        self.method = method
        self.alpha = alpha
        self.beta = beta
        self.eps_sq = eps_sq
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.verbose = verbose
        self.options = options

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """Constructor parameters by name (scikit-learn protocol)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {k: getattr(self, k) for k in names}

    def set_params(self, **params: Any) -> "ScoreSelection":
        """Set constructor parameters (scikit-learn protocol); unknown names raise :class:`InputError`."""
        valid = self.get_params()
        for k, v in params.items():
            if k not in valid:
                raise InputError(f"ScoreSelection has no parameter {k!r}; valid: {', '.join(valid)}")
            setattr(self, k, v)
        return self

    def fit(self, X, y, soft_labels=None, label_rates=None) -> "ScoreSelection":
        """Run the selection on features ``X`` (N, d) with classes ``y`` (N,); optional teacher logits
        ``soft_labels`` (N, K, C) or precomputed ``label_rates`` (N,).  Returns ``self``."""
        X = torch.as_tensor(X)
        ranking, gains = select(X, torch.as_tensor(y), self.ipc, method=self.method, alpha=self.alpha,
                                beta=self.beta, eps_sq=self.eps_sq, soft_labels=soft_labels, device=self.device,
                                label_rates=label_rates, dtype=self.dtype, seed=self.seed,
                                progress=self.verbose, **(self.options or {}))
        self.ranking_ = ranking
        self.gains_ = gains
        self.n_features_in_ = int(X.shape[1]) if X.ndim == 2 else 0
        return self

    def transform(self, X, y=None):
        """``X[ranking_]`` (and ``y[ranking_]`` when ``y`` is given, as apricot does)."""
        if not hasattr(self, "ranking_"):
            raise InputError("ScoreSelection.transform called before fit")
        idx = self.ranking_
        Xs = X[idx.numpy()] if not isinstance(X, torch.Tensor) else X[idx]
        if y is None:
            return Xs
        ys = y[idx.numpy()] if not isinstance(y, torch.Tensor) else y[idx]
        return Xs, ys

    def fit_transform(self, X, y, **fit_params):
        """``fit(X, y, **fit_params).transform(X, y)``."""
        return self.fit(X, y, **fit_params).transform(X, y)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ScoreSelection({args})"
