"""score_codec: compressed storage for dataset-distillation soft labels.

Per-image K x C teacher-logit matrices are stored as quantised low-rank factors plus a sparse
residual in checksummed HDF5 shards (docs/FORMAT.md), with lossless augmentation metadata.

The package is layered; lower layers never import upper ones::

    codecs/    factorisers, quantisation, residual selection, rate control (pure torch)
    store/     the on-disk format: records, writer, reader, index, augmentation metadata
    formats/   readers and writers of existing dump families (SRe2L, LPLD, LPQLD, EDC, G-VBSM, FKD),
               dump <-> store conversion (encode_dump, decode_dump)
    training/  image sources, augmentation replay, relabelling, the drop-in dataset, small models
    cli/       the ``score-codec`` command line

Public names are imported lazily (PEP 562), so ``import score_codec`` and ``score-codec --help``
do not pay for importing torch until a name that needs it is used.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

from ._version import __version__
from .errors import (BatchSizeMismatchError, BudgetError, CodecError, CorruptRecordError, FormatError,
                     IncompleteStoreError, IndexMismatchError, InputError, IOFailureError, MissingShardError,
                     ScoreError, SizeLimitError, StoreError, StoreLockedError, StoreVersionError,
                     TruncatedFileError, UncheckedStoreError, UnknownCodecError, UnreadableFileError,
                     UnsafePickleError, WeightsMismatchError, WriteFailedError)

if TYPE_CHECKING:  # the names below load on first use (__getattr__); this block is for readers and tools
    from .codecs import (BasisSet, Codec, Factors, codec_from_config, get_codec, register_codec,
                         registered_codecs)
    from .formats.convert import decode_dump, encode_dump, plan_dump
    from .formats.options import DumpOptions
    from .formats.report import store_info, verify_store
    from .store.bulk import encode, plan
    from .store.distributed import encode_distributed
    from .store.layout import FORMAT_VERSION
    from .store.meta import AugMeta
    from .store.options import CodecOptions
    from .store.reader import LabelStore
    from .store.writer import StoreWriter
    from .training.dataset import CompressedSoftLabelDataset, LabelDecoder
    from .training.images import load_images
    from .training.relabel import relabel
    from .training.replay import ReplayBatchSampler

#: public name -> module that defines it
_LAZY = {
    # encode and decode
    "encode": "score_codec.store.bulk",
    "encode_dump": "score_codec.formats.convert",
    "plan": "score_codec.store.bulk",
    "plan_dump": "score_codec.formats.convert",
    "decode_dump": "score_codec.formats.convert",
    "encode_distributed": "score_codec.store.distributed",
    "CodecOptions": "score_codec.store.options",
    "DumpOptions": "score_codec.formats.options",
    # the store
    "StoreWriter": "score_codec.store.writer",
    "LabelStore": "score_codec.store.reader",
    "AugMeta": "score_codec.store.meta",
    "FORMAT_VERSION": "score_codec.store.layout",
    "store_info": "score_codec.formats.report",
    "verify_store": "score_codec.formats.report",
    # writing a codec
    "Codec": "score_codec.codecs",
    "Factors": "score_codec.codecs",
    "BasisSet": "score_codec.codecs",
    "get_codec": "score_codec.codecs",
    "register_codec": "score_codec.codecs",
    "registered_codecs": "score_codec.codecs",
    "codec_from_config": "score_codec.codecs",
    # training
    "CompressedSoftLabelDataset": "score_codec.training.dataset",
    "LabelDecoder": "score_codec.training.dataset",
    "ReplayBatchSampler": "score_codec.training.replay",
    "relabel": "score_codec.training.relabel",
    "load_images": "score_codec.training.images",
}

__all__ = [
    "__version__",
    # encode and decode
    "encode", "encode_dump", "plan", "plan_dump", "decode_dump", "encode_distributed", "CodecOptions", "DumpOptions",
    # the store
    "StoreWriter", "LabelStore", "AugMeta", "FORMAT_VERSION", "store_info", "verify_store",
    # writing a codec
    "Codec", "Factors", "BasisSet", "get_codec", "register_codec", "registered_codecs", "codec_from_config",
    # training
    "CompressedSoftLabelDataset", "LabelDecoder", "ReplayBatchSampler", "relabel", "load_images",
    # errors
    "ScoreError", "InputError", "FormatError", "UnsafePickleError", "BudgetError", "BatchSizeMismatchError",
    "StoreError", "StoreVersionError", "UncheckedStoreError", "IncompleteStoreError", "CorruptRecordError", "TruncatedFileError",
    "MissingShardError", "IndexMismatchError", "CodecError", "UnknownCodecError", "IOFailureError",
    "WriteFailedError", "WeightsMismatchError", "SizeLimitError", "UnreadableFileError", "StoreLockedError",
]


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'score_codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
