"""One exception hierarchy for the whole library.

Every error that score_codec and score_select raise on bad input, a damaged file or a failed read or
write is a :class:`ScoreError`.  Messages name the file, the record and the expected versus the found
value.  Each class carries the exit code that ``score-codec`` and ``score-select`` return for it:

====  ==========================================================================================
code  meaning
====  ==========================================================================================
0     success
1     a failed integrity check (:class:`CorruptRecordError` and its subclasses; ``verify``)
2     bad input: arguments, shapes, values, dump or store contents (:class:`InputError`,
      :class:`StoreError`, :class:`CodecError`)
3     an I/O failure: the disk is full, the destination cannot be written, a file cannot be read
      (:class:`IOFailureError`; the command line also maps an unexpected ``OSError`` here)
====  ==========================================================================================

::

    ScoreError
    +-- InputError (ValueError)
    |   +-- FormatError
    |   |   +-- UnsafePickleError
    |   +-- BudgetError
    |   +-- BatchSizeMismatchError
    |   +-- WeightsMismatchError
    +-- StoreError
    |   +-- StoreVersionError
    |   |   +-- UncheckedStoreError
    |   +-- IncompleteStoreError
    |   +-- CorruptRecordError                    (exit 1)
    |       +-- TruncatedFileError
    |       +-- MissingShardError
    |       +-- IndexMismatchError
    +-- CodecError
    |   +-- UnknownCodecError (KeyError)
    +-- IOFailureError                            (exit 3)
        +-- WriteFailedError
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "EXIT_OK",
    "EXIT_VERIFY_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_IO_FAILURE",
    "ScoreError",
    "InputError",
    "FormatError",
    "UnsafePickleError",
    "StoreError",
    "StoreVersionError",
    "UncheckedStoreError",
    "CorruptRecordError",
    "TruncatedFileError",
    "MissingShardError",
    "IndexMismatchError",
    "IncompleteStoreError",
    "CodecError",
    "UnknownCodecError",
    "BudgetError",
    "BatchSizeMismatchError",
    "WeightsMismatchError",
    "IOFailureError",
    "WriteFailedError",
    "SizeLimitError",
    "UnreadableFileError",
    "StoreLockedError",
]

#: process exit codes of ``score-codec`` and ``score-select``
EXIT_OK = 0
EXIT_VERIFY_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_IO_FAILURE = 3


class ScoreError(Exception):
    """Base class of every error raised by score_codec and score_select."""

    exit_code = EXIT_BAD_INPUT


class InputError(ScoreError, ValueError):
    """Bad user input: wrong shapes, NaN/Inf logits, wrong class count, a destination that exists."""


class FormatError(InputError):
    """A label dump or file does not follow the format it claims (or that was detected)."""


class UnsafePickleError(FormatError):
    """A pickled dump needs a global outside the allow-list; it was not loaded."""


class StoreError(ScoreError):
    """A label store cannot be read as specified in docs/FORMAT.md."""


class StoreVersionError(StoreError):
    """The store was written by a format version this reader does not know."""


class UncheckedStoreError(StoreVersionError):
    """The store predates the table of contents (format versions 1 and 2): reading it would hand its HDF5
    metadata to libhdf5.  Open it with ``allow_unchecked=True`` (``--allow-unchecked``) or convert it with
    ``score-codec upgrade``."""


class CorruptRecordError(StoreError):
    """A record's checksum or internal sizes disagree with the index."""

    exit_code = EXIT_VERIFY_FAILED


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
    """A rate target (ratio / target_bytes) cannot be met by any allowed rank.

    Attributes:
        reason: what was measured: the budget, and what the smallest useful label needs.
        advice: what the caller can change (empty when there is nothing to suggest).
        max_ratio: the largest ratio the allocation could have held, where it measured one (else None).
    """

    def __init__(self, reason: str, *, advice: str = "", max_ratio: Optional[float] = None) -> None:
        super().__init__(f"{reason}. {advice}" if advice else reason)
        self.reason = reason
        self.advice = advice
        self.max_ratio = max_ratio


class BatchSizeMismatchError(InputError):
    """Training asked for a batch size other than the dump's while the dump mixes images per batch."""


class WeightsMismatchError(InputError):
    """A weights file's parameter names or shapes do not fit the architecture it is loaded into."""


class SizeLimitError(CorruptRecordError):
    """A size read from a file (table rows, record cells, decompressed bytes, nesting depth) exceeds what the
    file can hold or the reader's cap; nothing was allocated for it."""


class UnreadableFileError(CorruptRecordError):
    """A file of the store cannot be read: permission denied, a dangling link, an I/O error."""


class StoreLockedError(InputError):
    """Another writer holds the destination's lock file."""


class IOFailureError(ScoreError):
    """The operating system refused a read or a write (disk full, permission denied, I/O error).

    Not the input's fault: the same call can succeed once the disk or the permissions are fixed.
    """

    exit_code = EXIT_IO_FAILURE


class WriteFailedError(IOFailureError):
    """The destination could not be written (disk full, file too large, not writable); nothing was kept."""
