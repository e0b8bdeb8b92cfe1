"""How labels are coded, as one value: :class:`CodecOptions`.

Every function that writes a store (:func:`score_codec.encode`, :func:`score_codec.encode_dump`,
:class:`score_codec.StoreWriter`, :func:`score_codec.relabel`, :func:`score_codec.encode_distributed`)
takes an optional ``options`` object plus the same names as keyword arguments; keywords override the
object's fields, so ``encode(Y, dst, method="global", ratio=30, quant="int8")`` and
``encode(Y, dst, CodecOptions(method="global", ratio=30, quant="int8"))`` write the same store.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..codecs.arguments import check_device
from ..errors import InputError
from .encoder import CodingFields, EncodeOptions, default_quant

__all__ = ["CodecOptions", "CODEC_OPTION_NAMES", "split_codec_options"]


@dataclass(frozen=True)
class CodecOptions(CodingFields):
    """Codec, rate control, quantisation and storage settings of a label store.

    At most one of ``rank``, ``energy``, ``ratio`` and ``target_bytes`` may be given; with none of them the
    rank is 8.

    Attributes:
        method: registered codec id (:func:`score_codec.registered_codecs`): ``"global"`` (default: one
            basis and mean row for the whole store, per-row coefficients), ``"two-level"`` (global basis plus
            per-class directions; needs classes), or the image-scope ``"svd"``, ``"rsvd"``, ``"cur"``,
            ``"rpca"``, ``"shared"`` (one basis per class; needs classes).
        rank: components per image (image-scope codecs) or of the global basis (store-scope codecs).
        energy: share in (0, 1] of the squared singular values kept per image (of the store's variance,
            for store-scope codecs).
        ratio: target compression ratio: fp16 label bytes (2 C per row) over stored label bytes (for
            ``global``, record sizes after zstd measured on a sample, so met to within about 1%); met per
            ``StoreWriter.add`` chunk by image-scope codecs, by the whole store (bases included) by
            store-scope codecs.
        target_bytes: total stored label bytes, met as ``ratio`` is (turned into it once the row count is known; not
            available to :class:`~score_codec.StoreWriter`, which does not know it in advance).
        quant: number format of the stored factors: ``"int8"`` (one fp32 scale per component; one per record for ``global``), ``"fp16"``,
            ``"bf16"`` or ``"fp32"``; None (default): int8 for the store-scope codecs (``global``,
            ``two-level``), fp16 for the image-scope ones.  The automatic allocation measures its KL with the
            quantisation included, so at one ratio int8 keeps more label epochs than fp16 at the same KL.
        residual: sparse residual entries kept per row (largest KL contributions), 0 for none.
        residual_score: how residual entries are chosen (``"kl"``).
        keep_mean: also store each row's mean (4 bytes per row) so decoding returns the exact logits;
            without it decoded rows are row-centred, which leaves softmax unchanged.
        zstd_level: zstd level of each record (0 disables compression).
        shuffle: byte-shuffle factor arrays before compression.
        codec_config: codec-specific settings, e.g. ``{"fit_temperature": 4.0, "newton_steps": 0,
            "class_rank": 2}`` for the store-scope codecs (see :mod:`score_codec.codecs.global_basis`).
        device: torch device the codec runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        pool: with ``ratio`` (or ``target_bytes``) and the global codec, let the encode keep fewer label epochs
            when coding every row would take the decoded labels past ``max_kl`` (pooling; see
            :mod:`score_codec.store.allocate`); False codes every row at the ratio (a warning names the
            measured KL when it exceeds ``max_kl``).  Views that are not label epochs are never pooled.
        keep_epochs: keep exactly this many label epochs (evenly spaced, the first included) and code them at
            the rest of the options (a ``ratio`` then counts the source's rows); None: decided by ``pool``.
        max_kl: the largest mean KL(T=1) between source and decoded rows, measured on a probe sample, that the
            automatic allocation accepts for the inner codec.  The default, 0.01, sits between the KL of the
            benchmark variants whose students matched raw labels and that of those whose students fell behind
            (docs/codecs/pooling.md gives the figures).

    ``pool``, ``keep_epochs`` and ``max_kl`` are read by :func:`score_codec.encode`,
    :func:`score_codec.encode_dump` and :func:`score_codec.relabel`; :class:`~score_codec.StoreWriter` and
    :func:`score_codec.encode_distributed` write the rows they are given and never pool (they refuse
    ``keep_epochs``).
    """

    device: str = "cpu"
    pool: bool = True
    keep_epochs: Optional[int] = None
    max_kl: float = 0.01

    def __post_init__(self) -> None:
        if self.quant is None:
            object.__setattr__(self, "quant", default_quant(self.method))   # frozen: resolved once, here
        self.encode_options()  # validates the values (one set of rules, shared with the store writer)
        k = self.keep_epochs
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or k < 1):
            raise InputError(f"keep_epochs must be a positive integer, found {self.keep_epochs!r}")
        if not (isinstance(self.max_kl, (int, float)) and self.max_kl > 0 and self.max_kl == self.max_kl):
            raise InputError(f"max_kl must be a positive number, found {self.max_kl!r}")
        if self.keep_epochs is not None and not self.pool:
            raise InputError("give keep_epochs or pool=False, not both (pool=False keeps every epoch)")
        check_device("device", self.device)

    @classmethod
    def build(cls, options: Optional["CodecOptions"] = None, **overrides: Any) -> "CodecOptions":
        """``options`` (default: all defaults) with the fields named in ``overrides`` replaced.

        Raises TypeError for a keyword that is not a field, like a misspelt function argument.
        """
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"options must be a CodecOptions, found {type(options).__name__} "
                            f"(pass method=, rank=, ... as keywords)")
        unknown = sorted(set(overrides) - set(CODEC_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; codec options are "
                            f"{', '.join(CODEC_OPTION_NAMES)}")
        if options is None:
            return cls(**overrides)   # built at once: the quantisation default follows the method given
        return dataclasses.replace(options, **overrides) if overrides else options

    def replace(self, **changes: Any) -> "CodecOptions":
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def encode_options(self) -> EncodeOptions:
        """The writer's internal, JSON-serialisable form (what the store's index records)."""
        return EncodeOptions(**self.coding_fields())

    def as_dict(self) -> Dict[str, Any]:
        """The fields as a plain dict (``codec_config`` copied)."""
        d = dataclasses.asdict(self)
        d["codec_config"] = dict(self.codec_config or {}) or None
        return d


#: the keyword names :meth:`CodecOptions.build` accepts
CODEC_OPTION_NAMES: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CodecOptions))


def split_codec_options(kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(codec option keywords, the rest) of a keyword dict."""
    codec = {k: v for k, v in kwargs.items() if k in CODEC_OPTION_NAMES}
    return codec, {k: v for k, v in kwargs.items() if k not in CODEC_OPTION_NAMES}
