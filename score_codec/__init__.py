"""score_codec: compressed storage for dataset-distillation soft labels.

Per-image K x C teacher-logit matrices are stored as quantised low-rank factors plus a sparse
residual in checksummed HDF5 shards (docs/FORMAT.md), with lossless augmentation metadata.

The package is layered; lower layers never import upper ones::

    codecs/    factorisers, quantisation, residual selection, rate control (pure torch)
    store/     the on-disk format: records, writer, reader, index, augmentation metadata
    formats/   readers and writers of existing dump families (SRe2L, LPLD, LPQLD, EDC, G-VBSM, FKD)
    training/  image sources, augmentation replay, relabelling, the drop-in dataset, small models
    cli/       the ``score-codec`` command line

Public names are imported lazily (PEP 562), so ``import score_codec`` and ``score-codec --help``
do not pay for importing torch until a name that needs it is used.
"""
from __future__ import annotations

import importlib
from typing import Any, List

from . import _compat
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

from ._version import __version__

#: public name -> module that defines it
_LAZY = {
    "encode": "score_codec.store.bulk",
    "StoreWriter": "score_codec.store.writer",
    "LabelStore": "score_codec.store.reader",
    "AugMeta": "score_codec.store.meta",
    "FORMAT_VERSION": "score_codec.store.layout",
    "Codec": "score_codec.codecs",
    "get_codec": "score_codec.codecs",
    "register_codec": "score_codec.codecs",
    "registered_codecs": "score_codec.codecs",
    "codec_from_config": "score_codec.codecs",
    "CompressedSoftLabelDataset": "score_codec.training.dataset",
    "LabelDecoder": "score_codec.training.dataset",
    "ReplayBatchSampler": "score_codec.training.replay",
    "BatchSizeMismatchError": "score_codec.training.replay",
    "relabel": "score_codec.training.relabel",
    "load_images": "score_codec.training.images",
    "encode_distributed": "score_codec.store.distributed",
}

__all__ = sorted(_LAZY) + ["__version__"] + list(_errors_all)

_compat.install()


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'score_codec' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
