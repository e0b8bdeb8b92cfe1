"""Registered codecs and what a codec author needs.  Importing this package registers every built-in codec (importing a codec's module registers it).

Image-scope codecs (``scope == "image"``: ``svd``, ``rsvd``, ``cur``, ``rpca``, ``shared``) factorise each
image's K x C matrix; store-scope codecs (``scope == "store"``: ``global``, ``two-level``) fit their bases on
the whole store first and store per-row coefficients.  A new codec subclasses :class:`Codec`, implements
``factorize`` returning :class:`Factors`, and is registered with :func:`register_codec`; quantisation,
the residual and rate control are shared (:func:`roundtrip` shows what a quantisation keeps).
"""
from .base import Codec, Factors, codec_from_config, get_codec, register_codec, registered_codecs
from .svd import RandomizedSVDCodec, SVDCodec
from .cur import CURCodec
from .rpca import RPCACodec, rpca as rpca_decompose
from .shared import SharedBasisCodec
from .global_basis import BasisEntry, BasisSet, FitSource, GlobalCodec, StoreScopeCodec, TwoLevelCodec
from .quantize import QUANT_CODES, bytes_per_value, roundtrip

__all__ = [
    "Codec", "Factors", "codec_from_config", "get_codec", "register_codec", "registered_codecs",
    "SVDCodec", "RandomizedSVDCodec", "CURCodec", "RPCACodec", "SharedBasisCodec", "rpca_decompose",
    "StoreScopeCodec", "GlobalCodec", "TwoLevelCodec", "BasisEntry", "BasisSet", "FitSource",
    "QUANT_CODES", "bytes_per_value", "roundtrip",
]
