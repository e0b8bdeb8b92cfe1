"""One exception hierarchy for the whole library.

Every error the library raises on bad input or a damaged file is a :class:`ScoreError`; the CLI maps
them to exit codes (2 for bad input, 1 for a failed integrity check).  Messages name the file, the record
and the expected versus the found value.
"""
from __future__ import annotations

__all__ = [
    "cli_message",
    "ScoreError",
    "InputError",
    "FormatError",
    "UnsafePickleError",
    "StoreError",
    "StoreVersionError",
    "CorruptRecordError",
    "TruncatedFileError",
    "MissingShardError",
    "IndexMismatchError",
    "IncompleteStoreError",
    "CodecError",
    "UnknownCodecError",
    "BudgetError",
    "WriteFailedError",
    "SizeLimitError",
    "UnreadableFileError",
    "StoreLockedError",
]


class ScoreError(Exception):
    """Base class of every error raised by score_codec and score_select."""

    exit_code = 2


class InputError(ScoreError, ValueError):
    """Bad user input: wrong shapes, NaN/Inf logits, wrong class count, unwritable destination."""


class FormatError(InputError):
    """A label dump or file does not follow the format it claims (or that was detected)."""


class UnsafePickleError(FormatError):
    """A pickled dump needs a global outside the allow-list; it was not loaded."""


class StoreError(ScoreError):
    """A label store cannot be read as specified in docs/FORMAT.md."""


class StoreVersionError(StoreError):
    """The store was written by a format version this reader does not know."""


class CorruptRecordError(StoreError):
    """A record's checksum or internal sizes disagree with the index."""

    exit_code = 1


class TruncatedFileError(CorruptRecordError):
    """A shard or record is shorter than the index says."""


class MissingShardError(CorruptRecordError):
    """A shard named by the index is absent."""


class IndexMismatchError(CorruptRecordError):
    """The index disagrees with the shard it points into."""


class IncompleteStoreError(StoreError):
    """The store has no manifest: it was interrupted while being written."""


class CodecError(ScoreError):
    """A codec was configured or called incorrectly."""


class UnknownCodecError(CodecError, KeyError):
    """No codec is registered under the requested id."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class BudgetError(InputError):
    """A rate target (ratio / target_bytes) cannot be met by any allowed rank."""


class WriteFailedError(InputError):
    """The destination could not be written (disk full, file too large, I/O error); nothing was kept."""


class SizeLimitError(CorruptRecordError):
    """A size read from a file (table rows, record cells, decompressed bytes, nesting depth) exceeds what the
    file can hold or the reader's cap; nothing was allocated for it."""


class UnreadableFileError(CorruptRecordError):
    """A file of the store cannot be read: permission denied, a dangling link, an I/O error."""


class StoreLockedError(InputError):
    """Another writer holds the destination's lock file."""


#: Python keyword spellings in messages -> the command-line flags that do the same
_CLI_SPELLING = {
    "overwrite=True": "--overwrite",
    "resume=True": "--resume",
    "check_mapping=False": "--trust-order",
    "keep_mean=True": "--keep-mean",
    "labels=": "--images or --ipc",
    "num_classes=": "--num-classes",
    "quant='fp32'": "--quant fp32",
    "resume with resume=True": "resume with --resume",
}


def cli_message(exc: BaseException) -> str:
    """``str(exc)`` with Python keyword spellings replaced by their command-line flags."""
    msg = str(exc)
    for py, flag in sorted(_CLI_SPELLING.items(), key=lambda kv: -len(kv[0])):
        msg = msg.replace(py, flag)
    return msg
