"""Small teacher / student networks in plain torch, and their safetensors save/load.

Both architectures work at any input resolution and channel count (adaptive pooling before the
classifier) so the same code serves 28x28 Fashion-MNIST and 224x224 ImageNet crops.  Every model keeps
its constructor arguments in ``model.config`` so :func:`save_model` can write them next to the weights
and :func:`load_model` can rebuild the network without the caller knowing the architecture.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable, Dict, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import InputError

__all__ = ["ConvNet", "ResNet", "ARCHITECTURES", "build_model", "save_model", "load_model", "classifier_of"]


class ConvNet(nn.Module):
    """The dataset-distillation ConvNet: ``depth`` x [conv3x3 -> instance norm -> ReLU -> avgpool 2].

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        num_classes: logits per image.
        width: channels of every conv layer; also the feature dimension ``d``.
        depth: number of conv blocks.
        norm: ``"instance"`` (the DD convention: GroupNorm with one group per channel) or ``"batch"``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 128, depth: int = 3,
                 norm: str = "instance") -> None:
        super().__init__()
        if norm not in ("instance", "batch"):
            raise InputError(f"ConvNet norm must be 'instance' or 'batch', found {norm!r}")
        self.config = dict(in_channels=int(in_channels), num_classes=int(num_classes), width=int(width), depth=int(depth))
        if norm != "instance":
            self.config["norm"] = norm   # absent for the default, so older checkpoints load unchanged
        layers = []
        c = in_channels
        for _ in range(depth):
            # GroupNorm with one group per channel is instance norm with affine parameters (DC convention).
            # ceil_mode keeps a 1-pixel map at 1 pixel, so deep nets accept tiny inputs.
            layers += [nn.Conv2d(c, width, 3, padding=1),
                       nn.GroupNorm(width, width) if norm == "instance" else nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2, ceil_mode=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: (B, C_in, H, W) float -> (B, width)."""
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, C_in, H, W) float -> (B, num_classes)."""
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A CIFAR-style ResNet (3x3 stem, no max-pool): stage s has ``blocks[s]`` basic blocks of
    ``width * 2**s`` channels, stride 2 from the second stage on.  ``blocks=(2, 2, 2, 2)`` is ResNet-18.

    Args:
        in_channels: image channels.
        num_classes: logits per image.
        width: channels of the first stage.
        blocks: basic blocks per stage.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        super().__init__()
        blocks = [int(b) for b in blocks]
        self.config = dict(in_channels=int(in_channels), num_classes=int(num_classes), width=int(width), blocks=blocks)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        stages = []
        c = width
        for s, n in enumerate(blocks):
            cout = width * 2 ** s
            for b in range(n):
                stages.append(_BasicBlock(c, cout, 2 if (s > 0 and b == 0) else 1))
                c = cout
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(c, num_classes)
        self.feature_dim = c

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: (B, C_in, H, W) float -> (B, width * 2**(len(blocks)-1))."""
        return F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, C_in, H, W) float -> (B, num_classes)."""
        return self.classifier(self.features(x))


#: Architecture name -> class; the name is what :func:`save_model` records.
ARCHITECTURES: Dict[str, Callable[..., nn.Module]] = {"convnet": ConvNet, "resnet": ResNet}
_ARCH_NAMES = {cls: name for name, cls in ARCHITECTURES.items()}


def build_model(arch: str, **config: Any) -> nn.Module:
    """Instantiate a registered architecture by name (see :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise InputError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    try:
        return ARCHITECTURES[arch](**config)
    except TypeError as exc:
        raise InputError(f"architecture {arch!r}: bad constructor config {config}: {exc}") from exc


def save_model(model: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``model``'s weights to a safetensors file with ``{"arch", "config"}`` as JSON metadata."""
    from safetensors.torch import save_file

    arch = _ARCH_NAMES.get(type(model))
    if arch is None or not hasattr(model, "config"):
        raise InputError(f"save_model supports the registered architectures {sorted(ARCHITECTURES)}, "
                         f"found {type(model).__name__}")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, os.fspath(path), metadata={"arch": arch, "config": json.dumps(model.config)})


def _load_safetensors(path: str) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise InputError(f"model file {path}: not a readable safetensors file ({exc})") from exc
    if "arch" not in meta or "config" not in meta:
        raise InputError(f"model file {path}: expected 'arch' and 'config' metadata (written by save_model), "
                         f"found keys {sorted(meta)}")
    model = build_model(meta["arch"], **json.loads(meta["config"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(f"model file {path}: weights do not match arch {meta['arch']!r} {meta['config']}: {exc}") from exc
    return model


def _load_factory(spec: str) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"model spec {spec!r}: cannot import {attr!r} from module {mod_name!r} ({exc})") from exc
    model = factory()
    if not isinstance(model, nn.Module):
        raise InputError(f"model spec {spec!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def load_model(spec: Union[str, os.PathLike, nn.Module], device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Load a model from a :func:`save_model` safetensors file or a ``"package.module:factory"`` string
    (the factory is called with no arguments).  An ``nn.Module`` is passed through.

    Returns the model on ``device`` in eval mode.  Raises :class:`InputError` naming the spec otherwise.
    """
    if isinstance(spec, nn.Module):
        model = spec
    else:
        s = os.fspath(spec)
        if os.path.isfile(s):
            model = _load_safetensors(s)
        elif ":" in s and os.path.sep not in s.partition(":")[0]:
            model = _load_factory(s)
        else:
            raise InputError(f"model spec {s!r}: expected an existing .safetensors file written by save_model "
                             f"or 'package.module:factory'")
    return model.to(device).eval()


def classifier_of(model: nn.Module):
    """(weight (C, d), bias (C,) or None) of a model's final linear layer: ``model.classifier`` when it is
    an ``nn.Linear`` (score's architectures), else the last ``nn.Linear`` among its modules."""
    head = getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise InputError(f"{type(model).__name__} has no nn.Linear layer to use as the label basis")
        head = linears[-1]
    return head.weight.detach().float().cpu(), None if head.bias is None else head.bias.detach().float().cpu()
