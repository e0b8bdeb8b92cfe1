"""A generated JPEG image folder with the shape of an ImageNet subset: class folders of photo-sized JPEGs.

Each image is a Fashion-MNIST item (the class's garment type, a different item per image) scaled up with
bicubic interpolation to a random part of the frame, tinted with a per-class colour, over a textured
background (a smooth random colour field, a woven sinusoid and pixel noise), then written by Pillow as a
baseline JPEG (quality 90, 4:2:0 chroma).  Frames have ImageNet-like sizes (long side 300..500 px by
default, landscape, portrait and square); the noise and texture give the JPEGs photo-like entropy, which
is what the decoder's time depends on.

The folder is built once per parameter set and reused: a ``manifest.json`` written after the last image
marks it complete.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Tuple

import numpy as np

__all__ = ["ASPECTS", "render_image", "make_image_folder"]

#: Width / height choices of the frames (landscape 4:3 is the most common ImageNet shape).
ASPECTS = (4 / 3, 4 / 3, 3 / 4, 1.0, 3 / 2)
MANIFEST = "manifest.json"


def _class_colour(c: int) -> np.ndarray:
    """A stable saturated RGB colour (3,) float in [0, 1] for class ``c``."""
    h = (c * 0.61803398875) % 1.0
    k = (np.array([0.0, 2.0, 4.0]) + h * 6.0) % 6.0
    return 1.0 - 0.75 * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def render_image(item: np.ndarray, cls: int, rng: np.random.Generator, long_side: Tuple[int, int]) -> np.ndarray:
    """One frame: uint8 (H, W, 3) from a 28 x 28 uint8 ``item`` of class ``cls``.

    ``long_side``: inclusive range of the frame's longer side in pixels.
    """
    from PIL import Image

    side = int(rng.integers(long_side[0], long_side[1] + 1))
    aspect = float(ASPECTS[int(rng.integers(len(ASPECTS)))])
    W, H = (side, max(16, int(round(side / aspect)))) if aspect >= 1 else (max(16, int(round(side * aspect))), side)
    # background: a 4 x 4 random colour field, bicubically smoothed to the frame
    field = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((W, H), Image.BICUBIC)
    bg = 0.2 + 0.6 * np.asarray(field, dtype=np.float32) / 255.0   # muted, so the garment stands out
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.05, 0.35)
    u, v = xx * np.cos(theta) + yy * np.sin(theta), yy * np.cos(theta) - xx * np.sin(theta)
    weave = np.sin(freq * u) * np.sin(0.7 * freq * v)
    bg = bg * (0.8 + 0.2 * weave[..., None])
    # foreground: the garment, 50-90 % of the short side, somewhere in the frame
    fg_side = int(min(H, W) * rng.uniform(0.5, 0.9))
    mask = np.asarray(Image.fromarray(item).resize((fg_side, fg_side), Image.BICUBIC), dtype=np.float32) / 255.0
    top, left = int(rng.integers(0, H - fg_side + 1)), int(rng.integers(0, W - fg_side + 1))
    colour = _class_colour(cls) * rng.uniform(0.7, 1.0)
    patch = bg[top:top + fg_side, left:left + fg_side]
    alpha = np.clip(mask * 1.2, 0.0, 1.0)[..., None]
    shade = (0.35 + 0.65 * mask)[..., None] * colour
    bg[top:top + fg_side, left:left + fg_side] = (1 - alpha) * patch + alpha * shade
    img = bg * 255.0 + rng.standard_normal(bg.shape, dtype=np.float32) * 6.0
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(root: str, n: int, classes: int, seed: int = 0, long_side: Tuple[int, int] = (300, 500),
                      quality: int = 90) -> Dict[str, Any]:
    """Write ``n`` JPEGs into ``root/c0000/...``, image ``i`` in class ``i % classes``; returns the manifest.

    Class ``c`` shows Fashion-MNIST garment type ``c % 10`` in a colour of its own.  Reuses ``root`` when its
    manifest records the same parameters.  The manifest holds the parameters, the total JPEG bytes and the
    mean frame size in pixels.
    """
    from PIL import Image
    from score_codec.training.images import load_fashion_mnist

    params = dict(n=int(n), classes=int(classes), seed=int(seed), long_side=list(long_side), quality=int(quality))
    path = os.path.join(root, MANIFEST)
    if os.path.isfile(path):
        with open(path) as fh:
            manifest = json.load(fh)
        if manifest.get("params") == params:
            return manifest
    if os.path.isdir(root):   # another parameter set or an interrupted build: start afresh
        shutil.rmtree(root)
    x, y = load_fashion_mnist("train")
    x, y = x[:, 0].numpy(), y.numpy()
    by_type = [np.flatnonzero(y == t) for t in range(10)]
    total_bytes, pixels = 0, 0
    for c in range(classes):
        os.makedirs(os.path.join(root, f"c{c:04d}"), exist_ok=True)
    for i in range(n):
        c = i % classes
        pool = by_type[c % 10]
        item = x[pool[(i // 10 + c * 7919) % len(pool)]]
        rng = np.random.default_rng([seed, i])
        img = render_image(item, c, rng, long_side)
        dst = os.path.join(root, f"c{c:04d}", f"img{i:06d}.jpg")
        Image.fromarray(img).save(dst, format="JPEG", quality=quality)
        total_bytes += os.path.getsize(dst)
        pixels += img.shape[0] * img.shape[1]
    manifest = dict(params=params, jpeg_bytes=int(total_bytes), mean_pixels=float(pixels / max(n, 1)))
    with open(path + ".tmp", "w") as fh:
        json.dump(manifest, fh, indent=1)
    os.replace(path + ".tmp", path)
    return manifest
