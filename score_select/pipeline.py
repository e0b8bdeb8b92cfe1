"""Teacher features -> selection -> ``selection.json`` (+ a condensed ImageFolder): :func:`select_images`,
the library call behind ``score-select``."""
from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any, Dict, List, Optional, Tuple

from score_codec.errors import InputError, WriteFailedError

__all__ = ["select_images"]

log = logging.getLogger("score_select")


def _features(images: str, teacher: str, cache: str, *, views: int, image_size: Optional[int], batch_size: int,
              device: str, seed: int, progress: bool, weights: Optional[str] = None, num_classes: Optional[int] = None,
              normalize: Any = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from .features import extract, load_features, save_features

    if os.path.isfile(cache):
        log.info("reusing teacher outputs from %s", cache)
        return load_features(cache)
    if teacher == "-":
        raise InputError(f"TEACHER is '-' but the feature cache {cache} does not exist")
    from score_codec.training.images import load_images
    from score_codec.training.normalize import normalize_views, resolve_normalization
    from score_codec.training.teachers import load_teacher, penultimate_features

    norm = resolve_normalization(normalize)
    pool = load_images(images)
    model = load_teacher(teacher, weights=weights, num_classes=num_classes, device=device)
    data = extract(model, pool, batch_size=batch_size, device=device, num_views=views, image_size=image_size,
                   seed=seed, progress=progress, feature_fn=penultimate_features, fast=True,
                   preprocess=(lambda x: normalize_views(x, norm)) if norm is not None else None)
    samples = getattr(pool, "samples", None)
    meta = {"images": os.path.abspath(images) if os.path.isdir(images) else images,
            "teacher": teacher, "weights": weights, "views": views, "seed": seed,
            "normalize": None if norm is None else {"mean": list(norm[0]), "std": list(norm[1])},
            "classes": list(getattr(pool, "classes", [])),
            "paths": [s[0] for s in samples] if samples is not None else []}
    save_features(cache, data, meta)
    log.info("teacher outputs cached in %s", cache)
    return data, meta


def _copy(out_dir: str, idx: List[int], labels: List[int], meta: dict, images_spec: str) -> str:
    dest = os.path.join(out_dir, "images")
    classes = meta.get("classes") or []
    paths = meta.get("paths") or []
    names = lambda c: classes[c] if c < len(classes) else f"{c:05d}"  # noqa: E731
    for c in sorted(set(labels)):
        os.makedirs(os.path.join(dest, names(c)), exist_ok=True)
    source = None
    for i, c in zip(idx, labels):
        if paths:
            src = paths[i]
            base = os.path.basename(src)
            target = os.path.join(dest, names(c), base)
            if os.path.exists(target):
                target = os.path.join(dest, names(c), f"{i:08d}_{base}")
            shutil.copy2(src, target)
        else:  # in-memory pools (fashion-mnist) have no files: write PNGs
            if source is None:
                from score_codec.training.images import load_images
                source = load_images(images_spec)
            from PIL import Image

            x = (source[i][0].clamp(0, 1) * 255).round().byte()
            arr = x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()
            Image.fromarray(arr).save(os.path.join(dest, names(c), f"{i:08d}.png"))
    return dest


def select_images(images: str, teacher: str, out: str, ipc: int, *, method: str = "score",
                  preset: Optional[str] = None, alpha: Optional[float] = None, beta: Optional[float] = None,
                  eps_sq: float = 0.5, temperature: Optional[float] = None, order: str = "greedy", views: int = 8,
                  features: Optional[str] = None, image_size: Optional[int] = None, batch_size: int = 128,
                  device: str = "cpu", seed: int = 0, copy: bool = False, progress: bool = False,
                  weights: Optional[str] = None, num_classes: Optional[int] = None,
                  normalize: Any = None, label_rate: Optional[str] = None, label_rank: int = 16) -> Dict[str, Any]:
    """Select ``ipc`` real images per class from a pool with a teacher, into the directory ``out``.

    Args:
        images: the candidate pool: an ImageFolder root (``root/<class>/<file>``) or ``"fashion-mnist[:train]"``.
        teacher: ``"torchvision:NAME"``, ``"timm:NAME"``, a safetensors file written by
            :func:`score_codec.training.models.save_model` or ``"package.module:factory"`` (see
            :func:`score_codec.training.teachers.load_teacher`); ``"-"`` when ``features`` points to an
            existing cache.  Features are the input of its last linear layer (or its ``features(x)``).
        out: the output directory (created if missing; removed again if this call created it and fails).
        ipc: images to select per class.
        method: ``score``, ``coding-rate``, ``random``, ``herding``, ``kcenter`` or ``rded``.
        preset: take alpha, beta and the temperature from the paper's values for ``imagenet1k``, ``tiny``,
            ``imagewoof`` or ``imagenette``; explicit ``alpha`` / ``beta`` / ``temperature`` win.
        alpha: weight of the class-conditional rate Rc (default 1.0).
        beta: weight of the soft-label rate R(Y) (default 0.1).
        eps_sq: squared distortion eps^2 of the rates.
        temperature: softmax temperature of R(Y) (default 1, or the preset's).
        label_rate, label_rank: what R(Y) measures (:func:`score_select.select`): ``"residual"`` (what a
            store-wide basis of ``label_rank`` directions leaves) or ``"image"`` (the paper's term).  None:
            ``"residual"``, or ``"image"`` with a ``preset`` (its beta is the paper's, tuned for its term).
        order: ``"greedy"`` (global greedy) or ``"round_robin"`` (blocked rounds over classes).
        views: augmented views per image whose teacher logits give R(Y) (0 disables).
        features: the teacher-output cache to read if it exists, else to write (default
            ``out/features.safetensors``).
        image_size: resize images to this square side before the teacher.
        batch_size: images per teacher batch.
        device: torch device of the teacher and the selection.
        seed: seed of the augmented views and of ``method="random"``.
        copy: also write the selected images to ``out/images`` in ImageFolder layout.
        progress: progress bars on stderr.
        weights: a state dict or checkpoint file for the teacher.
        num_classes: logits of a teacher named by spec (None: from ``weights``).
        normalize: the teacher's input normalisation: ``"imagenet"``, ``(mean, std)`` or None.

    Returns:
        What ``out/selection.json`` holds: the settings, ``indices`` / ``labels`` / ``paths`` in pick order,
        ``gains`` (nats, each pick's marginal gain), ``objective_nats``, and ``copied_to`` with ``copy``.
    """
    from .api import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_LABEL_RATE
    from .presets import preset as preset_values

    a, b, t = DEFAULT_ALPHA, DEFAULT_BETA, 1.0
    if preset:
        a, b, t = preset_values(preset, ipc)
    alpha = alpha if alpha is not None else a
    beta = beta if beta is not None else b
    temperature = temperature if temperature is not None else t
    if label_rate is None:
        label_rate = "image" if preset else DEFAULT_LABEL_RATE
    if ipc <= 0:
        raise InputError(f"ipc must be positive, got {ipc}")
    created = not os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise WriteFailedError(f"{out}: cannot create the output directory ({exc})") from exc
    try:
        return _select_into(images, teacher, out, ipc, method=method, alpha=alpha, beta=beta, eps_sq=eps_sq,
                            temperature=temperature, order=order, views=views, label_rate=label_rate,
                            label_rank=label_rank, cache=features or os.path.join(out, "features.safetensors"), image_size=image_size,
                            batch_size=batch_size, device=device, seed=seed, copy=copy, progress=progress,
                            teacher_args=dict(weights=weights, num_classes=num_classes, normalize=normalize))
    except BaseException:
        if created:   # a failed run leaves nothing behind
            shutil.rmtree(out, ignore_errors=True)
        raise


def _select_into(images: str, teacher: str, out_dir: str, ipc: int, *, method: str, alpha: float, beta: float,
                 eps_sq: float, temperature: float, order: str, views: int, label_rate: str, label_rank: int,
                 cache: str, image_size: Optional[int],
                 batch_size: int, device: str, seed: int, copy: bool, progress: bool,
                 teacher_args: Dict[str, Any]) -> Dict[str, Any]:
    from .api import select
    from .registry import method_options

    data, meta = _features(images, teacher, cache, views=views, image_size=image_size, batch_size=batch_size,
                           device=device, seed=seed, progress=progress, **teacher_args)
    y = data["labels"]
    soft = data.get("soft_labels")
    if soft is None and method == "rded":
        soft = data.get("logits")
    idx, gains = select(data["features"], y, ipc, method=method, alpha=alpha, beta=beta, eps_sq=eps_sq,
                        soft_labels=soft, device=device, temperature=temperature, seed=seed, progress=progress,
                        label_rate=label_rate, label_rank=label_rank,
                        **({"order": order} if "order" in method_options(method) else {}))
    idx_l, lab_l = idx.tolist(), y[idx].tolist()
    paths = meta.get("paths") or []
    summary = {
        "method": method, "ipc": ipc, "alpha": alpha, "beta": beta, "eps_sq": eps_sq,
        "temperature": temperature, "order": order, "label_rate": label_rate, "candidates": int(y.shape[0]),
        "selected": len(idx_l), "objective_nats": float(gains.sum()), "classes": meta.get("classes", []),
        "indices": idx_l, "labels": lab_l, "paths": [paths[i] for i in idx_l] if paths else [],
        "gains": gains.tolist(),
    }
    with open(os.path.join(out_dir, "selection.json"), "w") as f:
        json.dump(summary, f)
    if copy:
        summary["copied_to"] = _copy(out_dir, idx_l, lab_l, meta, images)
    return summary
