"""Image sources for relabelling and student training.

All sources share one interface: ``len(ds)``, ``ds[i] -> (float32 CHW tensor in [0, 1], class)``,
``ds.targets`` (np.int64 (N,)) and ``ds.classes``.  Index tables are numpy arrays, not Python lists of
objects, so DataLoader workers forked from the parent do not copy them page by page through refcount
writes (the copy-on-access memory growth of list-based datasets).
"""
from __future__ import annotations

import gzip
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import InputError

__all__ = ["IMG_EXTENSIONS", "FASHION_MNIST_ROOT", "load_fashion_mnist", "ImageFolder", "TensorImages", "load_images"]

#: File extensions ImageFolder accepts (case-insensitive), the torchvision set.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]


def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    """Read a gzipped big-endian IDX file (uint8 payload) into an array of its stored shape."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise InputError(f"{path}: expected IDX magic {magic}, found {found}")
    dims = [int.from_bytes(data[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim)]
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise InputError(f"{path}: header says {dims} ({int(np.prod(dims))} bytes), found {payload.size} bytes")
    return payload.reshape(dims)


def load_fashion_mnist(split: str = "train", root: str = FASHION_MNIST_ROOT) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST from the gzipped IDX files: (uint8 (N, 1, 28, 28), int64 (N,)); N = 60000 / 10000."""
    if split not in _FMNIST_FILES:
        raise InputError(f"fashion-mnist split must be one of {sorted(_FMNIST_FILES)}, found {split!r}")
    img_name, lab_name = _FMNIST_FILES[split]
    img_path, lab_path = os.path.join(root, img_name), os.path.join(root, lab_name)
    for p in (img_path, lab_path):
        if not os.path.isfile(p):
            raise InputError(f"Fashion-MNIST file {p} not found; install it with "
                             f"`apt-get install dataset-fashion-mnist` or pass root=")
    x = _read_idx(img_path, 2051, 3)
    y = _read_idx(lab_path, 2049, 1)
    if len(x) != len(y):
        raise InputError(f"{img_path} has {len(x)} images but {lab_path} has {len(y)} labels")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _pil_to_tensor(img, channels: Optional[int] = None) -> torch.Tensor:
    """Pillow image -> float32 (C, H, W) in [0, 1]: ``channels`` 1 (grayscale) or 3 (RGB); None keeps
    grayscale at 1 channel and makes everything else RGB."""
    if channels is None:
        channels = 1 if img.mode in _GRAY_MODES else 3
    want = "L" if channels == 1 else "RGB"
    if img.mode != want:
        img = img.convert(want)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageFolder:
    """``root/<class>/<file>`` images in torchvision ImageFolder order: class folders sorted by name,
    files found by a sorted walk of each class folder and kept if their extension is in
    :data:`IMG_EXTENSIONS`.  Dataset index ``n`` is the n-th such file.

    Only paths are held (as a numpy string array); images are opened with Pillow on access.

    Args:
        root: the folder.
        channels: 3 (every image as RGB), 1 (every image as grayscale), or None: as the first image
            (grayscale if it is, else RGB), so a photo folder with a few grayscale or CMYK JPEGs (ImageNet
            has some) gives 3-channel tensors throughout and a folder of grayscale PNGs stays 1-channel.
    """

    def __init__(self, root: Union[str, os.PathLike], channels: Optional[int] = None) -> None:
        if channels not in (None, 1, 3):
            raise InputError(f"ImageFolder channels must be 1, 3 or None, found {channels!r}")
        self.channels = channels
        self.root = os.fspath(root)
        if not os.path.isdir(self.root):
            raise InputError(f"image folder {self.root} does not exist or is not a directory")
        self.classes: List[str] = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        if not self.classes:
            raise InputError(f"image folder {self.root}: expected class sub-folders, found none")
        paths, targets = [], []
        for c, name in enumerate(self.classes):
            for dirpath, _, files in sorted(os.walk(os.path.join(self.root, name), followlinks=True)):
                for fname in sorted(files):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        paths.append(os.path.join(dirpath, fname))
                        targets.append(c)
        if not paths:
            raise InputError(f"image folder {self.root}: no image files with extensions {IMG_EXTENSIONS}")
        self._paths = np.array(paths)
        self.targets = np.asarray(targets, dtype=np.int64)

    @property
    def samples(self) -> List[Tuple[str, int]]:
        """(path, class) pairs in dataset order (built on demand)."""
        return [(str(p), int(t)) for p, t in zip(self._paths, self.targets)]

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        from PIL import Image

        if self.channels is None:   # decided by image 0 in every process alike
            first = str(self._paths[0])
            try:
                with Image.open(first) as img:
                    self.channels = 1 if img.mode in _GRAY_MODES else 3
            except OSError as exc:
                raise InputError(f"image {first} (index 0) cannot be read: {exc}") from exc
        path = str(self._paths[index])
        try:
            with Image.open(path) as img:
                return _pil_to_tensor(img, self.channels), int(self.targets[index])
        except OSError as exc:
            raise InputError(f"image {path} (index {index}) cannot be read: {exc}") from exc


class TensorImages:
    """In-memory images with the ImageFolder interface.

    Args:
        images: (N, C, H, W) uint8 (scaled by 1/255 on access) or float tensor in [0, 1].
        labels: (N,) class ids.
        classes: class names (default: ``"0"..."C-1"``).
    """

    def __init__(self, images: torch.Tensor, labels: Union[torch.Tensor, Sequence[int], np.ndarray],
                 classes: Sequence[str] = None) -> None:
        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise InputError(f"TensorImages: expected images of shape (N, C, H, W), found {tuple(images.shape)}")
        self.images = images
        self.targets = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.targets) != len(images):
            raise InputError(f"TensorImages: {len(images)} images but {len(self.targets)} labels")
        n_cls = int(self.targets.max()) + 1 if len(self.targets) else 0
        self.classes = list(classes) if classes is not None else [str(c) for c in range(n_cls)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x = self.images[index]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        return x, int(self.targets[index])


def load_images(spec: Union[str, os.PathLike]) -> Union[ImageFolder, TensorImages]:
    """An image source by spec.

    * an image folder path -> :class:`ImageFolder`;
    * ``"fashion-mnist[:train|test[:N]]"`` -> :class:`TensorImages` of that split (N: its first N images),
      from ``apt-get install dataset-fashion-mnist``;
    * ``"cjk-glyphs[:train|test[:N]][?classes=C&size=S&seed=X]"`` -> rendered CJK characters, one class per
      character, split by font design family (:mod:`score_codec.training.glyphs`; N: a seeded subset).
    """
    s = os.fspath(spec)
    name, _, rest = s.partition(":")
    if os.path.isdir(s):
        return ImageFolder(s)
    if name == "fashion-mnist":
        split, _, count = rest.partition(":")
        x, y = load_fashion_mnist(split or "train")
        if count:
            if not count.isdigit() or int(count) < 1:
                raise InputError(f"image source {s!r}: the count after the split must be a positive integer")
            x, y = x[:int(count)], y[:int(count)]
        return TensorImages(x, y, FASHION_MNIST_CLASSES)
    if name.partition("?")[0] == "cjk-glyphs":
        from .glyphs import glyph_split

        x, y, chars = glyph_split(s)
        return TensorImages(torch.from_numpy(x), y, chars)
    raise InputError(f"image source {s!r}: expected an image folder, 'fashion-mnist[:train|test[:N]]' or "
                     f"'cjk-glyphs[:train|test[:N]][?classes=C&size=S]'")
