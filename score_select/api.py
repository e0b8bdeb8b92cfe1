"""The functional entry point :func:`select`."""
from __future__ import annotations

import importlib
import inspect
import logging
from typing import Any, Optional, Sequence, Tuple, Union

import torch

from score_codec.errors import InputError

from .coding_rate import DEFAULT_EPS_SQ, label_coding_rate, residual_label_coding_rate
from .greedy import budgets_from_ipc, prepare, sequence_gains
from .registry import SelectionTask, get_selector, method_options

__all__ = ["select", "DEFAULT_ALPHA", "DEFAULT_BETA", "DEFAULT_LABEL_RATE"]

log = logging.getLogger(__name__)

# importing a method's module registers it: random/herding/kcenter/rded and score/coding-rate
for _module in ("baselines", "methods"):
    importlib.import_module(f"{__package__}.{_module}")

#: Our defaults (the paper gives only per-dataset values; see :mod:`score_select.presets`).
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.1
#: what R(Y_x) measures by default: the part of an image's soft labels outside a store-wide basis, the part
#: the default ``global`` codec loses (the paper's per-image rate, ``"image"``, cost student accuracy in the
#: storage benchmark's selection x compression tables)
DEFAULT_LABEL_RATE = "residual"


def select(features: torch.Tensor, labels: torch.Tensor, ipc: Union[int, Sequence[int]], method: str = "score",
           alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, eps_sq: float = DEFAULT_EPS_SQ,
           soft_labels: Optional[torch.Tensor] = None, device: Union[str, torch.device] = "cpu", *,
           label_rates: Optional[torch.Tensor] = None, label_eps_sq: float = DEFAULT_EPS_SQ,
           temperature: float = 1.0, label_rate: str = DEFAULT_LABEL_RATE, label_rank: int = 16, num_classes: Optional[int] = None, dtype: torch.dtype = torch.float32,
           seed: int = 0, progress: bool = False, **options: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pick ``ipc`` real images per class.

    Args:
        features: ``(N, d)`` teacher features (penultimate layer); L2-normalised internally.
        labels: ``(N,)`` int class ids.
        ipc: images per class (int) or one budget per class.
        method: a registered method (:func:`~score_select.registry.available_methods`): ``score``,
            ``coding-rate``, ``random``, ``herding``, ``kcenter``, ``rded``.
        alpha, beta: weights of ``Rc`` and ``R(Y)`` in ``R - alpha Rc - beta R(Y)``.
        eps_sq: squared distortion eps^2 of the feature coding rates (MCR^2's "eps", default 0.5).
        soft_labels: ``(N, K, C)`` teacher logits of K augmented views (or ``(N, C)``); gives ``R(Y)`` and
            the ``rded`` confidences.  Without it (and without ``label_rates``) the ``beta`` term is absent.
        device: compute device (``"cpu"``, ``"cuda"``).
        label_rates: ``(N,)`` precomputed ``R(Y_x)`` in nats (skips computing them from ``soft_labels``).
        label_eps_sq, temperature: eps_y^2 and softmax temperature of ``R(Y)``.
        label_rate: what ``R(Y_x)`` measures: ``"residual"`` (the default: the coding rate of what a
            store-wide basis of ``label_rank`` directions leaves of the image's soft labels, i.e. what the
            default ``global`` codec cannot represent;
            :func:`~score_select.coding_rate.residual_label_coding_rate`) or ``"image"`` (the paper's term:
            the coding rate of the image's own ``K x C`` soft labels, what a per-image codec needs).
        label_rank: the store-wide basis's directions for ``label_rate="residual"``.
        num_classes: class count (default ``max(labels) + 1``).
        dtype: compute precision (float64 for exact tests).
        seed: seed of the ``random`` method.
        progress: tqdm progress bar on stderr.
        **options: method options, e.g. ``order="round_robin"``, ``lazy=False``, ``chunk_size``.

    Returns:
        ``indices`` ``(n,)`` int64 in pick order and ``gains`` ``(n,)`` float64: each pick's marginal gain of
        ``R - alpha Rc - beta R(Y)`` (nats) given the earlier picks, whatever the method, so they sum to the
        objective value of the selection and compare across methods.
    """
    fn = get_selector(method)
    unknown = sorted(set(options) - set(method_options(method)))
    if unknown:
        own = [p for p in inspect.signature(select).parameters if p != "options"]
        raise TypeError(f"select() got unexpected keyword argument(s) {', '.join(map(repr, unknown))} for method "
                        f"{method!r}; it accepts {', '.join(own)}"
                        + (f" and the method options {', '.join(method_options(method))}" if method_options(method) else "")
                        + ("; did you mean eps_sq=?" if "eps" in unknown else ""))
    X, y = prepare(features, labels)
    budgets = budgets_from_ipc(y, ipc, num_classes)
    if soft_labels is not None:
        soft_labels = torch.as_tensor(soft_labels)
        if soft_labels.shape[0] != X.shape[0]:
            raise InputError(f"soft_labels has {soft_labels.shape[0]} rows for {X.shape[0]} candidates")
    if label_rate not in ("image", "residual"):
        raise InputError(f"label_rate must be 'image' or 'residual', found {label_rate!r}")
    if label_rates is None and soft_labels is not None and beta != 0:
        Y = soft_labels if soft_labels.ndim == 3 else soft_labels[:, None]
        label_rates = (label_coding_rate(Y.to(device), label_eps_sq, temperature) if label_rate == "image" else
                       residual_label_coding_rate(Y.to(device), label_rank, label_eps_sq, temperature))
    if label_rates is None and beta != 0:
        log.info("no soft labels given: the beta * R(Y) term is absent")
    task = SelectionTask(X, y, budgets, alpha=float(alpha), beta=float(beta), eps_sq=float(eps_sq),
                         label_rates=label_rates, soft_labels=soft_labels, device=device, dtype=dtype,
                         seed=seed, progress=progress, options=dict(options))
    indices, gains = fn(task)
    counts = torch.bincount(y[indices], minlength=len(budgets))
    if not torch.equal(counts, budgets):
        raise RuntimeError(f"method {method!r} broke the per-class budgets")  # a bug, not bad input
    if gains is None:
        gains = sequence_gains(X, y, indices, budgets, alpha=task.alpha, beta=task.beta, eps_sq=task.eps_sq,
                               label_rates=label_rates, device=device)
    return indices, gains
