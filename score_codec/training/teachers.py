"""Teachers (and students) by name: score's own models, torchvision and timm architectures, with weights
from a checkpoint file.

A teacher spec is one of

* ``"torchvision:NAME"``: ``torchvision.models.get_model(NAME, num_classes=...)`` (any architecture
  torchvision builds by name, e.g. ``torchvision:resnet18``); needs ``pip install torchvision``;
* ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False, num_classes=...)``; needs ``pip install timm``;
* what :func:`~score_codec.training.models.load_model` takes: a safetensors file written by
  :func:`~score_codec.training.models.save_model`, or ``"package.module:factory"``;
* an ``nn.Module``.

Weights come from ``weights=FILE``: a state dict or a checkpoint dict holding one under a usual key
(``state_dict``, ``model``, ...), saved by ``torch.save`` or as safetensors.  Files are read with
``torch.load(weights_only=True)``, which runs no code from the file.  Named architectures are built
without downloading anything; pretrained weights are always a file the user names.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import pickle
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import InputError, WeightsMismatchError
from .models import load_model

__all__ = ["NAMED_SOURCES", "CHECKPOINT_KEYS", "named_model", "load_teacher", "load_weights", "read_state_dict",
           "penultimate_features"]

log = logging.getLogger(__name__)

#: Spec prefix -> (module to import, what to pip install).
NAMED_SOURCES = {"torchvision": ("torchvision.models", "pip install torchvision"),
                 "timm": ("timm", "pip install timm")}
#: Keys of a checkpoint dict that may hold the state dict, tried in this order.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")
#: Key prefixes that wrappers add to every parameter name: DataParallel / DistributedDataParallel, torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: How many names a mismatch error lists per kind.
LIST_NAMES = 5


def _import_source(prefix: str):
    mod_name, pip = NAMED_SOURCES[prefix]
    try:
        return importlib.import_module(mod_name)
    except Exception as exc:   # ImportError, or a RuntimeError from a torchvision built for another torch
        raise InputError(f"teacher '{prefix}:...' needs {prefix}, which cannot be imported "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); install a build "
                         f"that matches torch {torch.__version__} with `{pip}` "
                         f"(or `pip install \"score[{prefix}]\"`)") from exc


def _split_named(spec: str):
    prefix, sep, name = spec.partition(":")
    if sep and prefix in NAMED_SOURCES:
        if not name:
            raise InputError(f"model spec {spec!r}: expected '{prefix}:NAME', e.g. '{prefix}:resnet18'")
        return prefix, name
    return None, None


def named_model(spec: str, num_classes: Optional[int] = None, **kwargs: Any) -> nn.Module:
    """A freshly initialised architecture by name: ``"torchvision:NAME"`` or ``"timm:NAME"``.

    Args:
        spec: ``"torchvision:resnet18"``, ``"timm:resnet50"``, ...
        num_classes: logits per image (None: the library's default, 1000 for ImageNet architectures).
        kwargs: further constructor arguments passed to the library (e.g. ``in_chans=1`` for timm).
    Returns the module in training mode on the CPU.

    Raises:
        InputError: the spec is not a named one, the library cannot be imported (naming the pip command)
            or does not know the name.
    """
    prefix, name = _split_named(os.fspath(spec))
    if prefix is None:
        raise InputError(f"model spec {spec!r}: expected 'torchvision:NAME' or 'timm:NAME'")
    lib = _import_source(prefix)
    if num_classes is not None:
        kwargs["num_classes"] = int(num_classes)
    try:
        if prefix == "torchvision":
            model = lib.get_model(name, weights=None, **kwargs)
        else:
            model = lib.create_model(name, pretrained=False, **kwargs)
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InputError(f"model spec {spec!r}: {prefix} cannot build {name!r} with {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"model spec {spec!r}: {prefix} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefixes(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    changed = True
    while changed:
        changed = False
        for p in WRAPPER_PREFIXES:
            if state and all(k.startswith(p) for k in state):
                state = {k[len(p):]: v for k, v in state.items()}
                changed = True
    return state


def read_state_dict(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The state dict a weights file holds, on the CPU.

    ``path`` is a safetensors file, or a ``torch.save`` file of a state dict or of a checkpoint dict
    holding one under one of :data:`CHECKPOINT_KEYS`; a ``module.`` (DataParallel / DDP) or ``_orig_mod.``
    (torch.compile) prefix on every key is removed.  Read with ``weights_only=True`` (argparse
    ``Namespace`` objects, which training scripts store in checkpoints, are allowed too).

    Raises:
        InputError: the file is missing or unreadable, refuses safe loading, or holds no state dict.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise InputError(f"weights file {path}: not a readable safetensors file ({exc})") from exc
    else:
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            wanted = re.search(r"GLOBAL ([\w.]+)", str(exc))
            if wanted is None:
                raise InputError(f"weights file {path}: not a readable torch.save file (the unpickler stopped at "
                                 f"data it does not know)") from None
            raise InputError(f"weights file {path}: refused by torch.load(weights_only=True): it needs "
                             f"{wanted.group(1)}, more than tensors and containers. If you trust the file, re-save "
                             f"its state dict: torch.save(torch.load(f, weights_only=False)['state_dict'], "
                             f"'weights.pth')") from None
        except Exception as exc:   # torch.load has no single error for a damaged or foreign file
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise InputError(f"weights file {path}: not a readable torch.save file "
                             f"({type(exc).__name__}: {first[:200]})") from None
    if not _is_state_dict(obj):
        found = None
        if isinstance(obj, Mapping):
            for key in CHECKPOINT_KEYS:
                if _is_state_dict(obj.get(key)):
                    found = obj[key]
                    break
        if found is None:
            what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
            raise InputError(f"weights file {path}: expected a state dict (parameter name -> tensor) or a checkpoint "
                             f"holding one under one of {list(CHECKPOINT_KEYS)}, found {what}")
        obj = found
    return _strip_prefixes(dict(obj))


def _mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]):
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def _head_names(model: nn.Module) -> List[str]:
    """State-dict names of the last ``nn.Linear``'s weight and bias (the classifier of most architectures)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return [] if last is None else [f"{last}.weight", f"{last}.bias"]


def load_weights(model: nn.Module, weights: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
                 where: Optional[str] = None) -> nn.Module:
    """Load a weights file (see :func:`read_state_dict`) or a state dict into ``model``, strictly.

    Raises:
        WeightsMismatchError: names missing from the file, names the model does not have, or shapes that
            differ; the message lists the first few of each and their counts.
    """
    state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else _strip_prefixes(dict(weights))
    src = where or (os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "the state dict")
    missing, unexpected, shapes = _mismatch(model, state)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the file (e.g. {missing[:LIST_NAMES]})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the model (e.g. {unexpected[:LIST_NAMES]})")
        if shapes:
            parts.append(f"{len(shapes)} with other shapes (e.g. "
                         + ", ".join(f"{k}: file {a}, model {b}" for k, a, b in shapes[:LIST_NAMES]) + ")")
        raise WeightsMismatchError(f"weights {src} do not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_teacher(spec: Union[str, os.PathLike, nn.Module], weights: Union[None, str, os.PathLike] = None,
                 num_classes: Optional[int] = None, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """A teacher by spec, with weights from a file, in eval mode on ``device``.

    Args:
        spec: ``"torchvision:NAME"``, ``"timm:NAME"``, a :func:`~score_codec.training.models.save_model`
            safetensors file, ``"package.module:factory"`` or an ``nn.Module``.
        weights: a state dict or checkpoint file to load strictly (see :func:`read_state_dict`); required
            for a meaningful named teacher, optional otherwise.
        num_classes: logits of a named architecture or keyword of a factory.  None for a named architecture
            with ``weights``: the row count of the weights' final linear layer when it differs from the
            library default (so a 10-class checkpoint needs no flag).
        device: where the teacher runs.

    Raises:
        InputError: a spec that resolves to nothing, a library that cannot be imported (the message names
            the pip command), an unreadable weights file.
        WeightsMismatchError: weights whose names or shapes do not fit the architecture.
    """
    if isinstance(spec, nn.Module):
        model = spec
        if num_classes is not None:
            raise InputError("num_classes applies to a teacher named by spec, not to a module passed in")
    else:
        s = os.fspath(spec)
        prefix, _ = _split_named(s)
        if prefix is not None:
            state = read_state_dict(weights) if weights is not None else None
            model = named_model(s, num_classes)
            if state is not None and num_classes is None:
                model = _fit_head(s, model, state)
            if state is not None:
                load_weights(model, state, where=os.fspath(weights))
            return model.to(device).eval()
        if num_classes is not None and not os.path.isfile(s) and ":" in s:
            model = _factory_with_classes(s, int(num_classes))
        else:
            model = load_model(s)
            found = getattr(model, "config", {}).get("num_classes")
            if num_classes is not None and found is not None and int(found) != int(num_classes):
                raise InputError(f"model file {s}: has {found} classes, but num_classes={num_classes} was asked for")
    if weights is not None:
        load_weights(model, weights)
    return model.to(device).eval()


def _fit_head(spec: str, model: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild a named architecture with the class count of ``state``'s final linear layer when only that
    layer's shapes differ from the default build."""
    head = _head_names(model)
    _, _, shapes = _mismatch(model, state)
    if shapes and head and all(k in head for k, _, _ in shapes) and head[0] in state:
        n = int(state[head[0]].shape[0])
        log.info("%s: the weights' %s has %d rows; building the architecture with num_classes=%d",
                 spec, head[0], n, n)
        return named_model(spec, n)
    return model


def _factory_with_classes(spec: str, num_classes: int) -> nn.Module:
    mod_name, _, attr = spec.partition(":")
    try:
        factory: Callable[..., Any] = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"model spec {spec!r}: cannot import {attr!r} from module {mod_name!r} ({exc})") from exc
    try:
        model = factory(num_classes=num_classes)
    except TypeError as exc:
        raise InputError(f"model spec {spec!r}: the factory does not take num_classes ({exc})") from exc
    if not isinstance(model, nn.Module):
        raise InputError(f"model spec {spec!r}: factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate-layer features (B, d) of a batch (B, C, H, W) for any classifier.

    ``model.features(x)`` when that is a method (score's architectures); timm's
    ``forward_head(forward_features(x), pre_logits=True)``; otherwise the input of the model's last
    ``nn.Linear`` during ``model(x)`` (torchvision's ``fc`` / ``classifier[-1]`` / ``heads.head``).
    An ``nn.Module`` attribute named ``features`` (torchvision's VGG, MobileNet) is a convolutional
    trunk, not the penultimate layer, and is not used.
    """
    feats = getattr(model, "features", None)
    if callable(feats) and not isinstance(feats, nn.Module):
        return feats(x).flatten(1)
    if callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        return model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError(f"{type(model).__name__} has neither a features(x) method nor an nn.Linear layer whose "
                         f"input could serve as features")
    seen: List[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    if not seen:
        raise InputError(f"{type(model).__name__}: its last nn.Linear layer is not called by forward; "
                         f"pass a feature function")
    return seen[-1].flatten(1)
