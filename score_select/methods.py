"""Registration of the coding-rate greedy methods: ``score`` (Eq. 4) and ``coding-rate`` (alpha = beta = 0,
pure log-det greedy with per-class budgets)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .greedy import greedy_select
from .registry import SelectionTask, register

__all__ = ["select_score", "select_coding_rate"]

_GREEDY_OPTIONS = ("order", "lazy", "chunk_size", "normalize")


def _greedy(task: SelectionTask, alpha: float, beta: float) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    opts = {k: v for k, v in task.options.items() if k in _GREEDY_OPTIONS}
    res = greedy_select(task.features, task.labels, task.budgets, alpha=alpha, beta=beta, eps_sq=task.eps_sq,
                        label_rates=task.label_rates, device=task.device, dtype=task.dtype,
                        progress=task.progress, **opts)
    return res.indices, res.gains


@register("score", options=_GREEDY_OPTIONS)
def select_score(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """SCORE: greedy ``R - alpha Rc - beta R(Y)`` with the task's weights."""
    return _greedy(task, task.alpha, task.beta)


@register("coding-rate", options=_GREEDY_OPTIONS)
def select_coding_rate(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Pure log-det greedy (alpha = beta = 0).  The gains are left to ``select``, which scores the picks
    under the task's alpha/beta like every other baseline."""
    return _greedy(task, 0.0, 0.0)[0], None
