"""The codec interface and its registry (the numcodecs pattern).

A codec turns a batch of row-centred soft-label matrices of one shape, ``(n, K, C)``, into low-rank
factors ``A (K, r)`` and ``B (r, C)`` per image, with ``Y ~ A @ B``.  Quantisation, the sparse residual,
serialisation and rate control are shared by all codecs and live elsewhere, so adding a method means
adding one class here and registering it, nothing more.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

import numpy as np
import torch

from ..errors import CodecError, InputError, UnknownCodecError

__all__ = ["Factors", "Codec", "register_codec", "get_codec", "codec_from_config", "registered_codecs", "check_matrix",
           "all_finite", "to_float32"]


@dataclass
class Factors:
    """Low-rank factors of a batch of images with one shape.

    ``a``: (n, K, r) float32, ``b``: (n, r, C) float32, zero-padded past each image's rank;
    ``ranks``: (n,) int64; ``sparse``: optional (n, K, C) float32 tensor whose non-zeros the codec
    proposes as residual positions (RPCA's sparse part); ``None`` for the others.
    """

    a: torch.Tensor
    b: torch.Tensor
    ranks: torch.Tensor
    sparse: Optional[torch.Tensor] = None


class Codec:
    """Base class of the factorisers.

    Subclasses set ``codec_id`` and implement :meth:`factorize`.  Constructor arguments are the codec's
    configuration and must be JSON-serialisable; :meth:`get_config` returns them with ``id`` added.
    """

    codec_id: ClassVar[str] = ""
    #: True when images of a group share ``b`` (only ``a`` is stored per image).
    shared_basis: ClassVar[bool] = False
    #: "image": factors per image (or per chunk group); "store": bases fitted on the whole store first
    #: (:class:`~score_codec.codecs.global_basis.StoreScopeCodec`)
    scope: ClassVar[str] = "image"

    def __init__(self, **config: Any) -> None:
        type(self).check_settings(config)
        self._config = dict(config)

    @classmethod
    def settings(cls) -> Tuple[str, ...]:
        """The configuration keys the constructor accepts: its keyword parameters and, where it passes
        ``**config`` on, those of the constructors above it (empty for a codec without settings)."""
        names: List[str] = []
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if klass is Codec:
                break
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            names += [p.name for p in params if p.name != "self" and p.name not in names
                      and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            if not any(p.kind is p.VAR_KEYWORD for p in params):
                break
        return tuple(names)

    @classmethod
    def check_settings(cls, config: Dict[str, Any]) -> None:
        """CodecError naming each key of ``config`` that :meth:`settings` does not list (a misspelt
        ``codec_config`` key would otherwise be ignored)."""
        accepted = cls.settings()
        unknown = [k for k in config if k not in accepted]
        if unknown:
            accepted = ", ".join(accepted) or "none"
            raise CodecError(f"codec {cls.codec_id!r}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                             f"accepted: {accepted}")

    def factorize(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        """Factorise ``y`` (n, K, C) float32 with per-image ``ranks`` (n,) into :class:`Factors`."""
        raise NotImplementedError

    def encode(self, y: torch.Tensor, ranks: torch.Tensor) -> Factors:
        """Alias of :meth:`factorize` with input checks (shape (n, K, C), ranks <= min(K, C))."""
        if y.ndim != 3:
            raise CodecError(f"{self.codec_id}: expected a (n, K, C) batch, found shape {tuple(y.shape)}")
        kmax = min(y.shape[1], y.shape[2])
        if ranks.numel() and (int(ranks.max()) > kmax or int(ranks.min()) < 0):
            raise CodecError(f"{self.codec_id}: ranks must lie in [0, {kmax}], found {ranks.tolist()}")
        return self.factorize(y, ranks.to(torch.int64))

    @staticmethod
    def decode(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Reconstruct ``a @ b``: (n, K, r) x (n, r, C) -> (n, K, C); the same for every codec."""
        return torch.bmm(a, b)

    def get_config(self) -> Dict[str, Any]:
        """JSON-serialisable configuration, ``{"id": codec_id, **constructor arguments}``."""
        return {"id": self.codec_id, **self._config}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Codec":
        cfg = dict(config)
        cfg.pop("id", None)
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


_REGISTRY: Dict[str, Type[Codec]] = {}


def register_codec(cls: Type[Codec]) -> Type[Codec]:
    """Class decorator: register ``cls`` under ``cls.codec_id``."""
    if not cls.codec_id:
        raise CodecError(f"{cls.__name__} has no codec_id")
    if cls.codec_id in _REGISTRY and _REGISTRY[cls.codec_id] is not cls:
        raise CodecError(f"codec id {cls.codec_id!r} is already registered by {_REGISTRY[cls.codec_id].__name__}")
    _REGISTRY[cls.codec_id] = cls
    return cls


def registered_codecs() -> List[str]:
    """Ids of all registered codecs, sorted."""
    return sorted(_REGISTRY)


def get_codec(codec_id: str, **config: Any) -> Codec:
    """Instantiate the codec registered as ``codec_id`` with ``config``."""
    try:
        cls = _REGISTRY[codec_id]
    except KeyError:
        raise UnknownCodecError(f"unknown codec {codec_id!r}; registered: {', '.join(registered_codecs())}") from None
    cls.check_settings(config)   # before the constructor: one CodecError for every codec, not a TypeError
    return cls(**config)


def codec_from_config(config: Dict[str, Any]) -> Codec:
    """Rebuild a codec from :meth:`Codec.get_config` output."""
    if "id" not in config:
        raise CodecError(f"codec config has no 'id': {config!r}")
    return get_codec(config["id"], **{k: v for k, v in config.items() if k != "id"})


def to_float32(x: Any, device: Any = None) -> torch.Tensor:
    """An array or tensor of any float dtype as a float32 tensor on ``device`` (None: where ``x`` is; the
    CPU for arrays).

    Moved in its own dtype and widened by torch: numpy's float16 -> float32 conversion is about 20x
    slower, and a float16 copy halves a host-to-GPU transfer.  Shares memory with ``x`` when nothing
    needs converting."""
    if not isinstance(x, torch.Tensor):
        a = np.ascontiguousarray(x)
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        x = torch.from_numpy(a if a.flags.writeable else a.copy())
    return (x if device is None else x.to(device)).to(torch.float32)


def all_finite(x: torch.Tensor) -> bool:
    """True when every value of ``x`` (any shape, float) is finite.

    One summation pass: NaN and +-Inf propagate through a sum, so a finite sum proves every term finite.
    Only when the sum is not finite (a bad value, or finite values whose sum overflows) does it run the
    elementwise test, which on CPU is much slower than the sum."""
    s = x.sum(dtype=torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x.sum()
    if bool(torch.isfinite(s)):
        return True
    return bool(torch.isfinite(x).all())


def check_matrix(m: torch.Tensor, c: int, what: str) -> None:
    """InputError, prefixed with ``what`` (e.g. "image 3"), unless ``m`` is a finite (K, ``c``) matrix with K >= 1."""
    if m.ndim != 2:
        raise InputError(f"{what}: expected a (K, C) matrix, found shape {tuple(m.shape)}")
    if m.shape[1] != c:
        raise InputError(f"{what}: expected C={c} classes, found {m.shape[1]}")
    if m.shape[0] == 0:
        raise InputError(f"{what}: has zero rows")
    if not all_finite(m):
        bad = (~torch.isfinite(m)).nonzero()[0].tolist()
        raise InputError(f"{what}: non-finite logit (NaN or Inf) at row {bad[0]}, class {bad[1]}")
