"""How the command lines report errors: one line on stderr, the flags spelled as the user typed them, and
the exit code of the error's class (see :mod:`score_codec.errors`)."""
from __future__ import annotations

import sys
from typing import Callable

from ..errors import EXIT_BAD_INPUT, EXIT_IO_FAILURE, EXIT_OK, EXIT_VERIFY_FAILED, ScoreError

__all__ = ["EXIT_STATUS_HELP", "cli_message", "run_reporting_errors"]

#: the epilog paragraph that documents the exit codes in ``--help``
EXIT_STATUS_HELP = f"""exit status:
  {EXIT_OK}  success
  {EXIT_VERIFY_FAILED}  a failed integrity check (verify found a corrupt record)
  {EXIT_BAD_INPUT}  bad input: arguments, shapes, values, dump or store contents (one line on stderr)
  {EXIT_IO_FAILURE}  an I/O failure: disk full, destination not writable, a file that cannot be read
"""

#: Python keyword spellings in messages -> the command-line flags that do the same
_CLI_SPELLING = {
    "overwrite=True": "--overwrite",
    "resume=True": "--resume",
    "check_mapping=False": "--trust-order",
    "keep_mean=True": "--keep-mean",
    "labels= or ipc=": "--images or --ipc",
    "labels=": "--images or --ipc",
    "num_images=": "--num-images",
    "num_classes=": "--num-classes",
    "quant='fp32'": "--quant fp32",
    "resume with resume=True": "resume with --resume",
    "keep_epochs= / pool=False": "--keep-epochs / --no-pool",
    "keep_epochs=": "--keep-epochs",
    "pool=False": "--no-pool",
    "max_kl=": "--max-kl ",
    "raise max_kl": "raise --max-kl",
}


def cli_message(exc: BaseException) -> str:
    """``str(exc)`` with Python keyword spellings replaced by their command-line flags."""
    msg = str(exc)
    for py, flag in sorted(_CLI_SPELLING.items(), key=lambda kv: -len(kv[0])):
        msg = msg.replace(py, flag)
    return msg


def run_reporting_errors(prog: str, fn: Callable[[], int]) -> int:
    """Run ``fn`` and turn what it raises into a one-line message and an exit code.

    A :class:`~score_codec.errors.ScoreError` exits with its class's code; an ``OSError`` that no layer
    below translated (a read or write the operating system refused) exits with the I/O-failure code
    rather than a traceback; Ctrl-C exits 130 like a shell.
    """
    try:
        return int(fn() or 0)
    except ScoreError as exc:
        print(f"{prog}: error: {cli_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_IO_FAILURE
    except KeyboardInterrupt:
        print(f"{prog.split()[0]}: interrupted", file=sys.stderr)
        return 130
