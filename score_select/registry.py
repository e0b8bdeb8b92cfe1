"""String-keyed registry of selection methods.

A method is a function ``fn(task: SelectionTask) -> (indices, gains_or_None)``; adding one is a function
plus ``@register("name")``.  :func:`score_select.select` looks methods up here, so there is no if-chain
to extend.  When a method returns ``None`` for the gains, ``select`` reports the SCORE marginal gains of its
picks (:func:`score_select.greedy.sequence_gains`), so every method's gains are comparable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from score_codec.errors import InputError

__all__ = ["SelectionTask", "SelectFn", "register", "get_selector", "method_options", "available_methods"]


@dataclass
class SelectionTask:
    """Everything a selection method may use.

    Attributes:
        features: ``(N, d)`` teacher features (raw; methods normalise as their definition requires).
        labels: ``(N,)`` int64 class ids.
        budgets: ``(C,)`` int64 picks per class; every method must return exactly these counts.
        alpha, beta, eps_sq: SCORE weights and squared distortion (see :mod:`score_select.coding_rate`).
        label_rates: ``(N,)`` per-image ``R(Y_x)`` or None.
        soft_labels: ``(N, K, C)`` or ``(N, C)`` teacher logits or None (needed by ``rded``).
        device, dtype: compute placement and precision.
        seed: seed of random methods.
        progress: show progress bars on stderr.
        options: method-specific keyword options (e.g. ``order``, ``lazy``, ``chunk_size``).
    """

    features: torch.Tensor
    labels: torch.Tensor
    budgets: torch.Tensor
    alpha: float = 0.0
    beta: float = 0.0
    eps_sq: float = 0.5
    label_rates: Optional[torch.Tensor] = None
    soft_labels: Optional[torch.Tensor] = None
    device: Union[str, torch.device] = "cpu"
    dtype: torch.dtype = torch.float32
    seed: int = 0
    progress: bool = False
    options: Dict[str, Any] = field(default_factory=dict)


SelectFn = Callable[[SelectionTask], Tuple[torch.Tensor, Optional[torch.Tensor]]]

_REGISTRY: Dict[str, SelectFn] = {}
_OPTIONS: Dict[str, Tuple[str, ...]] = {}


def register(name: str, fn: Optional[SelectFn] = None, *, replace: bool = False, options: Tuple[str, ...] = ()):
    """Register ``fn`` under ``name`` (usable as ``@register("name")``).  ``options`` names the method-specific
    keywords it reads from ``task.options``; :func:`score_select.select` refuses any other keyword.
    Re-registering a name raises :class:`InputError` unless ``replace=True``."""

    def deco(f: SelectFn) -> SelectFn:
        if name in _REGISTRY and not replace:
            raise InputError(f"selection method {name!r} is already registered")
        _REGISTRY[name] = f
        _OPTIONS[name] = tuple(options)
        return f

    return deco(fn) if fn is not None else deco


def get_selector(name: str) -> SelectFn:
    """The method registered under ``name``; :class:`InputError` naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown selection method {name!r}; known: {', '.join(available_methods())}") from None


def method_options(name: str) -> Tuple[str, ...]:
    """The method-specific keyword options of ``name`` (see :func:`register`)."""
    get_selector(name)
    return _OPTIONS.get(name, ())


def available_methods() -> List[str]:
    """Registered method names, sorted."""
    return sorted(_REGISTRY)
