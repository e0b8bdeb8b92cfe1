"""Names, dtypes and constants of the on-disk store layout (docs/FORMAT.md is normative)."""
from __future__ import annotations

import numpy as np

__all__ = [
    "FORMAT_VERSION", "INDEX_FILE", "MANIFEST_FILE", "SHARD_DIR", "shard_name", "IMAGE_INDEX_DTYPE",
    "READABLE_VERSIONS", "TOC_VERSIONS", "CHUNKED_AUG_VERSION", "ONE_SCALE_VERSION", "POOL_VERSION", "BASIS_INDEX_DTYPE",
    "BASIS_INDEX_DTYPE_V1", "BASIS_FLAG_MEAN", "RECORDS_DATASET", "is_single_file",
]

#: Version of the store format this library writes; readers accept exactly the versions they know.
FORMAT_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)
#: the first version whose index may hold the ``pool`` attribute (a store keeping a subset of label epochs)
POOL_VERSION = 3
#: versions read through the table of contents (docs/FORMAT.md section 2.2); older ones only through
#: libhdf5, on request (``allow_unchecked``) or after ``score-codec upgrade``
TOC_VERSIONS = (3, 4, 5)
#: the first version whose augmentation rows are stored as compressed chunks (``aug/row_chunks``)
CHUNKED_AUG_VERSION = 4
#: the first version whose records may hold int8 coefficients with one scale (record flag 16)
ONE_SCALE_VERSION = 5

INDEX_FILE = "index.h5"
MANIFEST_FILE = "manifest.json"
SHARD_DIR = "shards"
RECORDS_DATASET = "records"
SINGLE_FILE_SUFFIXES = (".h5", ".hdf5", ".score")


def shard_name(i: int) -> str:
    """File name of shard ``i`` inside ``shards/``."""
    return f"shard-{i:05d}.h5"


def is_single_file(path: str) -> bool:
    """A store path with an HDF5 suffix is a single-file store; anything else is a directory store."""
    return str(path).lower().endswith(SINGLE_FILE_SUFFIXES)


#: One entry per image, indexed by image id.
IMAGE_INDEX_DTYPE = np.dtype(
    [
        ("shard", "<u4"),
        ("offset", "<u8"),
        ("length", "<u4"),
        ("crc32", "<u4"),
        ("k", "<u4"),
        ("rank", "<u2"),
        ("nnz", "<u4"),
        ("label", "<i4"),
        ("basis", "<i4"),
    ]
)

#: Version 1: one entry per shared basis, its bytes in ``/bases/blob`` (quantised like the factors).
BASIS_INDEX_DTYPE_V1 = np.dtype([("offset", "<u8"), ("length", "<u4"), ("rank", "<u2"), ("crc32", "<u4")])
#: Version 2 adds the parent basis (its rows come first; -1: none), flags and the basis's own quantisation.
BASIS_INDEX_DTYPE = np.dtype([("offset", "<u8"), ("length", "<u4"), ("rank", "<u2"), ("crc32", "<u4"),
                              ("parent", "<i4"), ("flags", "u1"), ("quant", "u1")])
#: basis flag: the blob holds C float32 mean values after the matrix (root bases only)
BASIS_FLAG_MEAN = 1
