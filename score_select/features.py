"""Teacher features and augmented soft labels for selection, with a safetensors cache.

:func:`extract` runs a teacher over any indexable of ``(image, class)`` pairs (``score_codec.training.images``'s
``ImageFolder``/``TensorImages`` or anything alike) and returns

* ``features``: ``(N, d)`` float32 penultimate-layer features (``model.features(x)``, or ``feature_fn``);
* ``labels``: ``(N,)`` int64 classes;
* ``logits``: ``(N, C)`` float32 teacher logits of the un-augmented image (for ``rded``);
* ``soft_labels``: ``(N, K, C)`` float16 logits of ``K`` random-resized-crop + flip views (for ``R(Y)``),
  when ``num_views > 0``.  Each image's views come from a generator seeded by (seed, index), so the cache
  is reproducible and independent of the batch size.

:func:`save_features`/:func:`load_features` store that dict (plus string metadata such as image paths) in
one safetensors file, so selection can be re-run with other alpha/beta without the teacher.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from score_codec.codecs.base import all_finite
from score_codec.errors import InputError
from score_codec.training.augment import augment_views  # noqa: F401  (re-exported: features' view sampler)

__all__ = ["extract", "augment_views", "save_features", "load_features"]

log = logging.getLogger(__name__)


def _collate(image_size: Optional[int]):
    def collate(batch):
        imgs, ys = zip(*batch)
        imgs = [torch.as_tensor(im, dtype=torch.float32) for im in imgs]
        ch = max(im.shape[0] for im in imgs)
        imgs = [im.expand(ch, -1, -1) if im.shape[0] == 1 else im for im in imgs]  # grey among RGB
        if image_size is not None:
            imgs = [im if im.shape[-2:] == (image_size, image_size) else
                    F.interpolate(im[None], size=(image_size, image_size), mode="bilinear", antialias=True,
                                  align_corners=False)[0] for im in imgs]
        shapes = {tuple(im.shape) for im in imgs}
        if len(shapes) > 1:
            raise InputError(f"images have different shapes {sorted(shapes)[:3]}; pass image_size to resize")
        return torch.stack(imgs), torch.as_tensor(ys, dtype=torch.long)

    return collate


@torch.no_grad()
def extract(model: torch.nn.Module, images: Sequence, *, batch_size: int = 128,
            device: Union[str, torch.device] = "cpu", feature_fn: Optional[Callable] = None,
            num_views: int = 0, logits: bool = True, image_size: Optional[int] = None,
            crop_scale: Tuple[float, float] = (0.4, 1.0), flip: bool = True,
            preprocess: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, seed: int = 0,
            num_workers: int = 0, progress: bool = True, fast: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Teacher features (and logits / augmented soft labels) of every image in ``images``.

    Args:
        model: teacher; ``model(x)`` gives ``(B, C)`` logits.  Features come from ``feature_fn(model, x)``
            if given, else ``model.features(x)`` (``(B, d)``; higher-rank outputs are flattened).
        images: indexable of ``(CHW float image in [0, 1], class)`` with ``len``.
        batch_size: images per forward pass (views multiply it by ``num_views``).
        device: where the teacher runs.
        num_views: K augmented views per image for ``soft_labels`` (0: none).
        logits: also return the clean-image logits.
        image_size: resize every image to this square size (needed when sizes differ).
        crop_scale, flip: view augmentation (paper: RandomResizedCrop scale (0.4|0.3|0.2, 1) + flip).
        preprocess: applied to each batch after augmentation (e.g. mean/std normalisation).
        seed: seed of the view generator.
        num_workers: DataLoader workers for image decoding.
        progress: tqdm bar on stderr.
        fast: run a fast copy of the model (batch norm folded into its convolutions, channels-last: 2x
            faster on CPU, the same outputs up to float32 rounding, checked on the first batch; see
            :func:`score_codec.training.inference.fast_inference_model`).  None (the default): fast unless
            ``feature_fn`` is given (it may reach into the model's layers or close over the model itself).
    """
    if feature_fn is None and not callable(getattr(model, "features", None)):
        raise InputError("the model has no .features(x) method; pass feature_fn(model, x) -> (B, d)")
    if len(images) == 0:
        raise InputError("no images to extract features from")
    from score_codec.progress import progress_bar

    model = model.to(device).eval()
    fast = feature_fn is None if fast is None else fast
    if feature_fn is None:
        feature_fn = lambda m, x: m.features(x)  # noqa: E731
    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate(image_size))
    feats, labels, clean, views = [], [], [], []
    done = 0
    for x, y in progress_bar(loader, desc="teacher features", unit="batch", enabled=progress, leave=False):
        x = x.to(device)
        px = preprocess(x) if preprocess else x
        if fast:   # checked against the model on the first batch; the model itself if they differ
            from score_codec.training.inference import fast_inference_model

            model, fast = fast_inference_model(model, px), False
        feats.append(feature_fn(model, px).flatten(1).float().cpu())
        labels.append(y)
        if logits:
            clean.append(model(px).float().cpu())
        if num_views > 0:
            # one generator per image, seeded by (seed, index): views do not depend on the batch size
            gens = [torch.Generator().manual_seed(seed * 1_000_000_007 + done + i) for i in range(x.shape[0])]
            v = augment_views(x, num_views, gens, scale=crop_scale, flip=flip)
            v = preprocess(v) if preprocess else v
            out = model(v)
            views.append(out.reshape(x.shape[0], num_views, -1).half().cpu())
        done += x.shape[0]
    out = {"features": torch.cat(feats), "labels": torch.cat(labels)}
    if logits:
        out["logits"] = torch.cat(clean)
    if views:
        out["soft_labels"] = torch.cat(views)
    if not all_finite(out["features"]):
        raise InputError("the teacher produced NaN/Inf features")
    return out


def save_features(path: Union[str, os.PathLike], data: Dict[str, torch.Tensor],
                  metadata: Optional[Dict[str, Any]] = None) -> None:
    """Write ``data`` (tensors) and JSON-serialisable ``metadata`` (e.g. ``paths``, ``classes``, the
    teacher spec) to one safetensors file; written to a temporary name and renamed, so it is never partial."""
    from safetensors.torch import save_file

    path = os.fspath(path)
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in data.items()}, tmp, metadata=meta)
    os.replace(tmp, path)


def load_features(path: Union[str, os.PathLike]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a cache written by :func:`save_features`: ``(tensors, metadata)``."""
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"feature cache {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            data = {k: f.get_tensor(k) for k in f.keys()}
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except Exception as exc:  # safetensors raises its own error types for damaged headers
        raise InputError(f"feature cache {path} cannot be read: {exc}") from exc
    if "features" not in data or "labels" not in data:
        raise InputError(f"feature cache {path} lacks 'features' or 'labels'")
    return data, meta
