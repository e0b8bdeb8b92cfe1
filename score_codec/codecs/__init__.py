"""Registered factorisers.  Importing this package registers every built-in codec."""
from .base import Codec, Factors, codec_from_config, get_codec, register_codec, registered_codecs
from . import svd, cur, rpca, shared, storewide  # noqa: F401  (registration side effect)
from .svd import RandomizedSVDCodec, SVDCodec
from .cur import CURCodec
from .rpca import RPCACodec, rpca as rpca_decompose
from .shared import SharedBasisCodec
from .storewide import BasisEntry, BasisSet, FitSource, GlobalBasisCodec, StoreCodec, TwoLevelCodec

__all__ = [
    "Codec", "Factors", "codec_from_config", "get_codec", "register_codec", "registered_codecs",
    "SVDCodec", "RandomizedSVDCodec", "CURCodec", "RPCACodec", "SharedBasisCodec", "rpca_decompose",
    "StoreCodec", "GlobalBasisCodec", "TwoLevelCodec", "BasisEntry", "BasisSet", "FitSource",
]
