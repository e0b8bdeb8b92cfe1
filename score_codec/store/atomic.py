"""Crash- and concurrency-safe replacement of a destination path (a store, or a decoded dump).

- :class:`WriteLock`: ``<dst>.lock`` held with ``flock`` by the one process writing ``dst``; a second writer is
  refused with :class:`~score_codec.errors.StoreLockedError` naming the lock file and its holder's pid.  The
  kernel releases the lock when its holder dies (even by SIGKILL), so a lock file left behind is stale and
  is taken over without any guessing from pids or ages.
- :func:`install`: move a finished ``tmp`` into ``dst``.  Files are renamed over (atomic); a directory is
  exchanged with the old one in one ``renameat2(RENAME_EXCHANGE)`` call where the kernel offers it, else the
  old one is first renamed to ``<dst>.replaced`` (which :func:`recover` puts back, or removes once the new one
  is in place, after a crash between the two renames).  At every moment ``dst`` is the complete old or the
  complete new tree, and the old tree is deleted only once the new one is in place.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
from typing import Callable, Optional

from ..errors import InputError, StoreLockedError

__all__ = ["WriteLock", "install", "recover", "lock_path", "replaced_path"]

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def lock_path(dst: str) -> str:
    """The lock file of destination ``dst``."""
    return f"{dst}.lock"


def replaced_path(dst: str) -> str:
    """Where an old directory waits while a new one is renamed in (only without RENAME_EXCHANGE)."""
    return f"{dst}.replaced"


class WriteLock:
    """Exclusive right to write ``dst`` (a context manager; :meth:`release` is idempotent)."""

    def __init__(self, dst: str) -> None:
        self.path = lock_path(os.fspath(dst))
        self.fd: Optional[int] = None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise StoreLockedError(f"{self.path}: another writer (pid {holder or 'unknown'}) is writing "
                                           f"{dst}; wait for it, or remove the lock file if that process is gone "
                                           f"from another machine") from None
                raise
            # the holder before us may have removed the file after we opened it: lock the file on disk
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file and unlock (the file goes first, so no one locks a file about to vanish)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:  # pragma: no cover - removed by hand
            pass
        os.close(self.fd)
        self.fd = None

    def __del__(self) -> None:
        # a writer dropped without close() (its process carries on): unlock, leave the file (a stale lock
        # file is taken over by the next writer)
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:  # pragma: no cover
                pass
            self.fd = None

    def __enter__(self) -> "WriteLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:  # pragma: no cover
        return None


def _exchange(a: str, b: str) -> bool:
    """Swap paths ``a`` and ``b`` atomically; False where the kernel or file system cannot."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:  # pragma: no cover - glibc before 2.28, other platforms
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # pragma: no cover
        return False
    raise OSError(err, os.strerror(err), a)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def install(tmp: str, dst: str, check_old: Optional[Callable[[str], None]] = None) -> None:
    """Put the finished ``tmp`` at ``dst`` (replacing what is there) so that ``dst`` is always complete.

    ``check_old(dst)`` runs first when ``dst`` exists and raises if it must not be replaced (for example,
    when it holds files score did not write).  The caller holds ``dst``'s :class:`WriteLock`."""
    if os.path.lexists(dst) and check_old is not None:
        check_old(dst)
    tmp_dir = os.path.isdir(tmp)
    dst_dir = os.path.isdir(dst) and not os.path.islink(dst)
    if not os.path.lexists(dst) or not (tmp_dir or dst_dir):
        os.replace(tmp, dst)       # one rename: atomic for a file, and for a directory into an empty place
        _fsync_dir(os.path.dirname(os.path.abspath(dst)))
        return
    if tmp_dir != dst_dir:
        raise InputError(f"{dst}: is a {'directory' if dst_dir else 'file'}; the new "
                         f"{'directory' if tmp_dir else 'file'} cannot replace it")
    if _exchange(tmp, dst):
        _fsync_dir(os.path.dirname(os.path.abspath(dst)))
        shutil.rmtree(tmp)         # the old tree, now at tmp
        return
    old = replaced_path(dst)
    _remove(old)
    os.rename(dst, old)
    os.rename(tmp, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))
    shutil.rmtree(old)


def recover(dst: str) -> None:
    """After a crash inside :func:`install`'s two-rename fallback: put the old tree back where no new one
    arrived, or delete it where one did.  The caller holds ``dst``'s :class:`WriteLock`."""
    old = replaced_path(dst)
    if not os.path.lexists(old):
        return
    if os.path.lexists(dst):
        log.warning("%s: removing the previous version left at %s by an interrupted replacement", dst, old)
        _remove(old)
    else:
        log.warning("%s: restoring the previous version from %s (its replacement was interrupted)", dst, old)
        os.rename(old, dst)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
