"""score_codec: compressed storage for dataset-distillation soft labels.

Per-image K x C teacher-logit matrices are stored as quantised low-rank factors plus a sparse
residual in checksummed HDF5 shards (docs/FORMAT.md), with lossless augmentation metadata.
"""
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .codecs import Codec, get_codec, register_codec, registered_codecs
from .layout import FORMAT_VERSION
from .meta import AugMeta
from .writer import StoreWriter
from .reader import LabelStore
from .api import encode

__version__ = "0.1.0"

__all__ = [
    "encode", "StoreWriter", "LabelStore", "AugMeta", "FORMAT_VERSION",
    "Codec", "get_codec", "register_codec", "registered_codecs", "__version__",
] + list(_errors_all)
