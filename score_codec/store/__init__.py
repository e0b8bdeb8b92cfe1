"""The label store: records, the streaming writer, the reader, the index and augmentation metadata.

``docs/FORMAT.md`` is the normative description of what these modules write and read.
"""
from .layout import FORMAT_VERSION
from .meta import AugMeta
from .options import CodecOptions
from .writer import StoreWriter
from .reader import LabelStore
from .bulk import encode, plan

__all__ = ["FORMAT_VERSION", "AugMeta", "CodecOptions", "StoreWriter", "LabelStore", "encode", "plan"]
