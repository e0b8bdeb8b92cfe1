"""Baseline selection methods, written from their definitions (not ported from DeepCore, whose herding
takes the argmax of the distance and whose log-determinant gain has the wrong sign).

All methods work per class with the task's budgets, on L2-normalised features (the space SCORE uses),
and return their picks interleaved round-robin over classes (round k holds every class's k-th pick), so
any prefix of the order is class-balanced.  Ties go to the smallest original index.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from score_codec.errors import InputError

from .registry import SelectionTask, register

__all__ = ["select_random", "select_herding", "select_kcenter", "select_rded", "class_members", "interleave"]


def class_members(labels: torch.Tensor, num_classes: int) -> List[torch.Tensor]:
    """Original indices of each class, ascending: a list of ``num_classes`` int64 tensors."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=num_classes).tolist()
    return list(torch.split(order, counts))


def interleave(per_class: List[torch.Tensor]) -> torch.Tensor:
    """Round-robin merge of per-class pick lists (class order inside a round) -> ``(n,)`` int64."""
    out: List[int] = []
    lists = [p.tolist() for p in per_class]
    for k in range(max((len(p) for p in lists), default=0)):
        out.extend(p[k] for p in lists if k < len(p))
    return torch.tensor(out, dtype=torch.long)


def _normalised(task: SelectionTask, idx: torch.Tensor) -> torch.Tensor:
    x = task.features[idx].to(device=task.device, dtype=task.dtype)
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


@register("random")
def select_random(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Uniform random subset of each class (``torch.Generator`` seeded with ``task.seed``)."""
    gen = torch.Generator().manual_seed(int(task.seed))
    members = class_members(task.labels, len(task.budgets))
    picks = [m[torch.randperm(len(m), generator=gen)[:int(b)]] for m, b in zip(members, task.budgets)]
    return interleave(picks), None


def _greedy_per_class(task: SelectionTask, pick) -> torch.Tensor:
    """Run ``pick(x, b) -> local indices`` on each class's normalised features ``x`` (n_c, d) with its
    budget ``b``; the picks as original indices, interleaved."""
    picks = []
    for m, b in zip(class_members(task.labels, len(task.budgets)), task.budgets.tolist()):
        chosen = pick(_normalised(task, m), b) if b > 0 else []
        picks.append(m[torch.tensor(chosen, dtype=torch.long)])
    return interleave(picks)


def _herding(x: torch.Tensor, b: int) -> List[int]:
    mu = x.mean(0)
    s = torch.zeros_like(mu)
    sq = x.square().sum(1)
    free = torch.ones(len(x), dtype=torch.bool, device=x.device)
    chosen = []
    for k in range(b):
        v = (k + 1) * mu - s
        dist = (sq - 2.0 * (x @ v)).masked_fill(~free, float("inf"))  # ||v - x||^2 - ||v||^2
        j = int(torch.argmin(dist))
        chosen.append(j)
        free[j] = False
        s = s + x[j]
    return chosen


def _kcenter(x: torch.Tensor, b: int) -> List[int]:
    sq = x.square().sum(1)
    j = int(torch.argmin(sq - 2.0 * (x @ x.mean(0))))
    chosen = [j]
    min_d = torch.full((len(x),), float("inf"), dtype=x.dtype, device=x.device)
    for _ in range(b - 1):
        d = (sq - 2.0 * (x @ x[j]) + sq[j]).clamp_min(0)
        min_d = torch.minimum(min_d, d)
        min_d[chosen] = -1.0  # never re-pick a centre (distance 0 ties with duplicates otherwise)
        j = int(torch.argmax(min_d))
        chosen.append(j)
    return chosen


@register("herding")
def select_herding(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Herding (Welling 2009) as greedy mean matching (iCaRL): per class, add the candidate that brings
    the mean of the picked features closest to the class mean, i.e. ``argmin_x ||(k+1)mu - s - x||``."""
    return _greedy_per_class(task, _herding), None


@register("kcenter")
def select_kcenter(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """k-center greedy (Gonzalez farthest-point traversal) per class.  The first centre is the candidate
    nearest the class mean (ours: deterministic, where DeepCore starts at a random point)."""
    return _greedy_per_class(task, _kcenter), None


@register("rded")
def select_rded(task: SelectionTask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """RDED-style teacher confidence on whole images: per class, the candidates with the lowest
    cross-entropy of the teacher logits against their own label (mean over the K views when
    ``soft_labels`` is ``(N, K, C)``).  RDED scores crops and stitches patches; we keep whole images."""
    if task.soft_labels is None:
        raise InputError("method 'rded' needs teacher logits: pass soft_labels (N, C) or (N, K, C)")
    Y = torch.as_tensor(task.soft_labels)
    if Y.ndim == 2:
        Y = Y[:, None]
    if Y.ndim != 3 or Y.shape[0] != task.labels.shape[0]:
        raise InputError(f"soft_labels must be (N, C) or (N, K, C) with N={task.labels.shape[0]}, "
                         f"found {tuple(torch.as_tensor(task.soft_labels).shape)}")
    if int(task.labels.max()) >= Y.shape[-1]:
        raise InputError(f"labels reach {int(task.labels.max())} but the logits have {Y.shape[-1]} classes")
    ce = torch.empty(Y.shape[0], dtype=torch.float64)
    for s in range(0, Y.shape[0], 4096):
        logp = torch.log_softmax(Y[s:s + 4096].to(torch.float64), dim=-1)
        tgt = task.labels[s:s + 4096].view(-1, 1, 1).expand(-1, Y.shape[1], 1)
        ce[s:s + 4096] = -logp.gather(-1, tgt).squeeze(-1).mean(1)
    picks = []
    for m, b in zip(class_members(task.labels, len(task.budgets)), task.budgets.tolist()):
        order = torch.argsort(ce[m], stable=True)  # stable: equal losses keep index order
        picks.append(m[order[:b]])
    return interleave(picks), None
