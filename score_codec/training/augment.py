"""The augmentations of FKD-style soft-label dumps, sampled and replayed in plain torch.

Conventions (docs/FKD dump formats, sections 6.3 and 6.4):

* A crop *box* is ``(top, left, height, width)`` in integer pixels of the source image.  Its stored
  *coords* are float32 ``(top/H, left/W, height/H, width/W)``.
* Replaying coords on an ``H x W`` image takes rows ``round(c0*H) : round(c0*H + c2*H)`` and columns
  ``round(c1*W) : round(c1*W + c3*W)``, products and sums in float64 of the float32 values, rounded
  half-to-even (Python's ``round``, which Pillow's ``crop`` uses).  For coords made by
  :func:`crop_coords` this returns the integer box exactly (tested for every box with H, W <= 512).
* The crop is resized to ``size x size`` bilinearly with ``F.interpolate(align_corners=False,
  antialias=False)``; this is our replay, identical in relabelling and training, not Pillow's resampler.
* The flip is horizontal and applied after the crop.
* Mixing acts on a batch after crop and flip: CutMix with one box ``(row0, col0, row1, col1)`` per batch,
  ``x[:, :, row0:row1, col0:col1] = x[perm, :, row0:row1, col0:col1]`` (donors un-mixed); Mixup
  ``lam * x + (1 - lam) * x[perm]``.  ``perm`` is over batch positions.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..store.meta import MIX_CUTMIX, MIX_MIXUP, MIX_NONE

__all__ = ["sample_crop", "crop_coords", "coords_to_box", "resized_crop", "hflip", "cutmix_box", "apply_mix",
           "mix_type_id", "MIX_NAMES", "augment_views", "random_resized_views"]

#: Mix name -> the integer id stored in AugMeta's batches table.
MIX_NAMES = {"none": MIX_NONE, "cutmix": MIX_CUTMIX, "mixup": MIX_MIXUP}

Box = Tuple[int, int, int, int]


def mix_type_id(mix: Union[str, int, None]) -> int:
    """``"cutmix"`` / ``"mixup"`` / ``"none"`` / None / a MIX_* id -> the MIX_* id."""
    if mix is None:
        return MIX_NONE
    if isinstance(mix, str):
        if mix not in MIX_NAMES:
            raise InputError(f"mix type must be one of {sorted(MIX_NAMES)}, found {mix!r}")
        return MIX_NAMES[mix]
    if int(mix) not in MIX_NAMES.values():
        raise InputError(f"mix type id must be one of {sorted(MIX_NAMES.values())}, found {mix}")
    return int(mix)


def _uniform(lo: float, hi: float, generator: Optional[torch.Generator]) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=generator).item())


def sample_crop(height: int, width: int, scale: Sequence[float] = (0.08, 1.0),
                ratio: Sequence[float] = (3 / 4, 4 / 3), generator: Optional[torch.Generator] = None) -> Box:
    """Draw RandomResizedCrop parameters ``(top, left, h, w)`` (ints) for an ``height x width`` image.

    Up to 10 tries of an area fraction ~ U(scale) and a log-uniform aspect ratio w/h in ``ratio``; the
    first box that fits is placed uniformly.  If none fits, the largest centred box whose aspect ratio is
    clamped into ``ratio`` is returned.  All randomness comes from ``generator``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_lo, log_hi, generator))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def crop_coords(box, height, width) -> torch.Tensor:
    """Integer box(es) ``(top, left, h, w)`` -> float32 coords ``(top/H, left/W, h/H, w/W)``.

    ``box``: (4,) or (B, 4); ``height``/``width``: ints or (B,) tensors.  Divisions are done in float64
    and then rounded to float32, which is what ``torch.FloatTensor((i / H, ...))`` stores.
    """
    b = torch.as_tensor(box, dtype=torch.float64)
    h = torch.as_tensor(height, dtype=torch.float64)
    w = torch.as_tensor(width, dtype=torch.float64)
    denom = torch.stack(torch.broadcast_tensors(h, w, h, w), dim=-1)
    return (b / denom).to(torch.float32)


def coords_to_box(coords, height, width) -> torch.Tensor:
    """Float coords (4,) or (B, 4) -> int64 boxes ``(top, left, h, w)`` by the replay rule above."""
    c = torch.as_tensor(coords).to(torch.float64)
    h = torch.as_tensor(height, dtype=torch.float64)
    w = torch.as_tensor(width, dtype=torch.float64)
    top, left = c[..., 0] * h, c[..., 1] * w
    # torch.round is half-to-even, like Python's round; the end is rounded from the float sum
    r0, c0 = torch.round(top), torch.round(left)
    r1, c1 = torch.round(top + c[..., 2] * h), torch.round(left + c[..., 3] * w)
    return torch.stack([r0, c0, r1 - r0, c1 - c0], dim=-1).to(torch.int64)


def _one_box(spec, height: int, width: int) -> Optional[Box]:
    """:func:`coords_to_box` of one (4,) float tensor or array in Python floats (the same float64 products,
    sums and half-to-even roundings, without a dozen tensor ops per view); None for anything else."""
    if not isinstance(spec, (torch.Tensor, np.ndarray)) or tuple(spec.shape) != (4,):
        return None
    if not (spec.is_floating_point() if isinstance(spec, torch.Tensor) else spec.dtype.kind == "f"):
        return None
    c0, c1, c2, c3 = spec.tolist()     # exact: float32 and float64 values are Python floats
    top, left = c0 * height, c1 * width
    end_r, end_c = top + c2 * height, left + c3 * width
    if not all(math.isfinite(v) for v in (top, left, end_r, end_c)):
        return None
    r0, col0 = round(top), round(left)
    return r0, col0, round(end_r) - r0, round(end_c) - col0


def resized_crop(img: torch.Tensor, coords_or_box, size: int) -> torch.Tensor:
    """Crop ``img`` (C, H, W) float and resize bilinearly to (C, size, size).

    ``coords_or_box``: a floating tensor / floats are normalised coords (replayed by the rounding rule in
    the module docstring); integers are a pixel box ``(top, left, h, w)``.
    """
    if img.ndim != 3:
        raise InputError(f"resized_crop: expected an image of shape (C, H, W), found {tuple(img.shape)}")
    H, W = img.shape[-2:]
    box = _one_box(coords_or_box, H, W)
    if box is None:
        spec = torch.as_tensor(coords_or_box)
        box = coords_to_box(spec, H, W) if spec.is_floating_point() else spec.to(torch.int64)
        box = tuple(int(v) for v in box.tolist())
    top, left, h, w = box
    if h <= 0 or w <= 0 or top < 0 or left < 0 or top + h > H or left + w > W:
        raise InputError(f"crop box (top={top}, left={left}, h={h}, w={w}) does not fit a {H}x{W} image "
                         f"(from {torch.as_tensor(coords_or_box).tolist()})")
    patch = img[:, top:top + h, left:left + w].unsqueeze(0)
    out = F.interpolate(patch.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return out[0]


def hflip(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Horizontal flip of (..., H, W); with ``mask`` (B,) bool and x (B, C, H, W) only those rows flip."""
    if mask is None:
        return x.flip(-1)
    mask = torch.as_tensor(mask, dtype=torch.bool, device=x.device).view(-1, *([1] * (x.ndim - 1)))
    return torch.where(mask, x.flip(-1), x)


def cutmix_box(size, lam: float, generator: Optional[torch.Generator] = None) -> Box:
    """One CutMix box ``(row0, col0, row1, col1)`` on a ``size`` (int or (H, W)) crop.

    SRe2L ``rand_bbox`` semantics: side ``int(S * sqrt(1 - lam))`` per axis, centre uniform over the
    pixels, edges clipped to the image (so the box area is not re-matched to ``lam``).
    """
    H, W = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * cut), int(W * cut)
    cr = int(torch.randint(0, H, (1,), generator=generator).item())
    cc = int(torch.randint(0, W, (1,), generator=generator).item())
    clip = lambda v, hi: min(max(v, 0), hi)  # noqa: E731
    return (clip(cr - cut_h // 2, H), clip(cc - cut_w // 2, W), clip(cr + cut_h // 2, H), clip(cc + cut_w // 2, W))


def apply_mix(x: torch.Tensor, mix_type: Union[str, int, None], perm: Optional[torch.Tensor] = None,
              lam: Optional[float] = None, bbox: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Mix a batch x (B, C, S, S) with partner positions ``perm`` (B,) int64; returns a new tensor.

    CutMix needs ``bbox`` (row0, col0, row1, col1); Mixup needs ``lam``.  ``"none"`` returns ``x``.
    """
    kind = mix_type_id(mix_type)
    if kind == MIX_NONE:
        return x
    if perm is None:
        raise InputError("apply_mix: a partner permutation is required for mixing")
    perm = torch.as_tensor(perm, dtype=torch.int64, device=x.device)
    if perm.shape != (x.shape[0],):
        raise InputError(f"apply_mix: permutation shape {tuple(perm.shape)} does not match batch {x.shape[0]}")
    if kind == MIX_CUTMIX:
        if bbox is None:
            raise InputError("apply_mix: CutMix needs a box (row0, col0, row1, col1)")
        r0, c0, r1, c1 = (int(v) for v in bbox)
        out = x.clone()
        # the right-hand side reads the un-mixed input, so donors are never already mixed
        out[:, :, r0:r1, c0:c1] = x[perm, :, r0:r1, c0:c1]
        return out
    if lam is None:
        raise InputError("apply_mix: Mixup needs lam")
    return lam * x + (1.0 - lam) * x[perm]


def _crop_params(m: int, g: torch.Generator, scale, ratio, flip) -> torch.Tensor:
    """``(m, 4)`` rows (x scale with flip sign, x centre, y scale, y centre) in grid units."""
    area = torch.empty(m).uniform_(scale[0], scale[1], generator=g)
    r = torch.empty(m).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g).exp()
    w = (area * r).sqrt().clamp(max=1.0)  # crop width / height as fractions of the image
    h = (area / r).sqrt().clamp(max=1.0)
    cx = (torch.rand(m, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(m, generator=g) * 2 - 1) * (1 - h)
    sx = torch.where(torch.rand(m, generator=g) < 0.5, -w, w) if flip else w
    return torch.stack([sx, cx, h, cy], 1)


def augment_views(x: torch.Tensor, k: int, generator: Union[torch.Generator, Sequence[torch.Generator]],
                  scale: Tuple[float, float] = (0.4, 1.0), ratio: Tuple[float, float] = (3 / 4, 4 / 3),
                  flip: bool = True) -> torch.Tensor:
    """``k`` RandomResizedCrop(+ horizontal flip) views of each image, batched with one ``grid_sample``.

    Args:
        x: ``(B, ch, H, W)`` float images.
        k: views per image.
        generator: one CPU generator for the whole batch, or one per image (then an image's views do not
            depend on how the pool was batched).
        scale: crop area fraction range; ratio: aspect ratio range (log-uniform), as torchvision.
        flip: flip each view with probability 1/2.

    Returns:
        ``(B * k, ch, H, W)``, image-major (rows ``i*k .. i*k+k-1`` are image ``i``'s views).
    """
    B = x.shape[0]
    if isinstance(generator, torch.Generator):
        prm = _crop_params(B * k, generator, scale, ratio, flip)
    else:
        prm = torch.cat([_crop_params(k, g, scale, ratio, flip) for g in generator])
    theta = torch.zeros(B * k, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = prm.unbind(1)
    theta = theta.to(device=x.device, dtype=x.dtype)
    src = x.repeat_interleave(k, dim=0)
    grid = F.affine_grid(theta, list(src.shape), align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_resized_views(x: torch.Tensor, generator: torch.Generator, scale: Tuple[float, float] = (0.4, 1.0)) -> torch.Tensor:
    """One RandomResizedCrop + flip view per image of ``x`` (B, ch, H, W): :func:`augment_views` with k = 1."""
    return augment_views(x, 1, generator, scale=scale)
