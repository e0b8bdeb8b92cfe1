"""Per-channel input normalisation of teacher views, and how a store records it.

A teacher trained on ImageNet expects ``(x - mean) / std`` of [0, 1] pixels, channel by channel.
``relabel`` applies that step last, after crop, flip and the batch's CutMix / Mixup, and records the
mean and std in the store's augmentation metadata attributes (``attrs["normalize"]``); the dataset
that replays the views applies the same step to the same float32 tensors, so the replayed view equals the
teacher's input bit for bit with no wrapper on the user's side.

The step is ``x.sub(mean).div(std)`` with float32 ``(C, 1, 1)`` tensors, the operation order of
torchvision's ``Normalize``: subtraction and division are correctly rounded, so every process and CPU
gets the same bits.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from ..errors import InputError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZE_PRESETS", "Normalization", "resolve_normalization",
           "normalization_from_attrs", "normalization_attrs", "check_channels", "normalize_views"]

#: ImageNet channel means and standard deviations of [0, 1] RGB pixels (torchvision's and timm's defaults).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Named normalisations accepted by ``normalize=`` / ``--normalize``.
NORMALIZE_PRESETS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}

#: (mean, std) per channel, both tuples of the same length (1 applies to every channel).
Normalization = Tuple[Tuple[float, ...], Tuple[float, ...]]
#: The key of the store's augmentation metadata attributes that holds ``{"mean": [...], "std": [...]}``.
ATTR = "normalize"


def _floats(values: Sequence[float], what: str) -> Tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"normalisation {what} must be a list of numbers, found {values!r}") from exc
    if not out or not all(math.isfinite(v) for v in out):
        raise InputError(f"normalisation {what} must be a non-empty list of finite numbers, found {list(values)!r}")
    return out


def resolve_normalization(normalize: Union[None, str, Normalization, Dict[str, Any]] = None,
                          mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None) -> Optional[Normalization]:
    """The (mean, std) to apply, or None for none.

    Args:
        normalize: None or ``"none"`` (no normalisation unless ``mean`` / ``std`` are given), a preset name
            (:data:`NORMALIZE_PRESETS`: ``"imagenet"``), a ``(mean, std)`` pair or a ``{"mean", "std"}`` dict.
        mean, std: per-channel values (length 1 or the image's channel count); a missing one defaults to
            0 / 1.  They cannot be combined with a preset.

    Raises:
        InputError: an unknown preset, both a preset and mean / std, lengths that differ (other than 1),
            a non-positive std, or non-finite values.
    """
    if isinstance(normalize, str):
        name = normalize.lower()
        if name == "none":
            normalize = None
        elif name in NORMALIZE_PRESETS:
            if mean is not None or std is not None:
                raise InputError(f"normalize={normalize!r} sets mean and std; do not also pass mean / std")
            mean, std = NORMALIZE_PRESETS[name]
            normalize = None
        else:
            raise InputError(f"unknown normalisation {normalize!r}; expected 'none', one of "
                             f"{sorted(NORMALIZE_PRESETS)}, or mean / std values")
    if isinstance(normalize, dict):
        if set(normalize) - {"mean", "std"}:
            raise InputError(f"a normalisation dict has keys 'mean' and 'std', found {sorted(normalize)}")
        normalize = (normalize.get("mean", (0.0,)), normalize.get("std", (1.0,)))
    if normalize is not None:
        if mean is not None or std is not None:
            raise InputError("pass the normalisation either as normalize=(mean, std) or as mean= / std=, not both")
        try:
            mean, std = normalize
        except (TypeError, ValueError) as exc:
            raise InputError(f"normalize must be a preset name, (mean, std) or a dict, found {normalize!r}") from exc
    if mean is None and std is None:
        return None
    m = _floats(mean if mean is not None else (0.0,), "mean")
    s = _floats(std if std is not None else (1.0,), "std")
    if len(m) != len(s) and 1 not in (len(m), len(s)):
        raise InputError(f"normalisation mean has {len(m)} values but std has {len(s)}; give one per channel "
                         f"(or one for all channels)")
    if min(s) <= 0:
        raise InputError(f"normalisation std must be positive, found {list(s)}")
    return m, s


def normalization_from_attrs(attrs: Dict[str, Any], where: str = "label store") -> Optional[Normalization]:
    """The normalisation a store's augmentation metadata attributes record (``attrs["normalize"]``), or None.

    Raises:
        InputError: the attribute is present but not ``{"mean": [...], "std": [...]}`` of valid values.
    """
    value = attrs.get(ATTR)
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise InputError(f"{where}: augmentation attrs['{ATTR}'] must be {{'mean': [...], 'std': [...]}}, "
                         f"found {value!r}")
    try:
        return resolve_normalization(value)
    except InputError as exc:
        raise InputError(f"{where}: augmentation attrs['{ATTR}']: {exc}") from exc


def normalization_attrs(norm: Optional[Normalization]) -> Dict[str, Any]:
    """The augmentation metadata attributes that record ``norm`` ({} for None)."""
    if norm is None:
        return {}
    return {ATTR: {"mean": list(norm[0]), "std": list(norm[1])}}


def check_channels(norm: Optional[Normalization], channels: int, where: str) -> None:
    """Refuse a normalisation whose per-channel lists fit neither 1 nor ``channels`` channels."""
    if norm is None:
        return
    for name, values in zip(("mean", "std"), norm):
        if len(values) not in (1, channels):
            raise InputError(f"{where}: normalisation {name} has {len(values)} values but the images have "
                             f"{channels} channels")


def normalize_views(x: torch.Tensor, norm: Optional[Normalization]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of float views (B, C, S, S) or (C, S, S); ``x`` itself for None.

    Returns a new float32 tensor (the input is not modified)."""
    if norm is None:
        return x
    mean = torch.tensor(norm[0], dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(norm[1], dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.float().sub(mean).div(std)
