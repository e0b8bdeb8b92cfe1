"""Runs of one preset that share a cache at once: claims on students and exclusive builds.

Runs that share a cache (``benchmarks/cache/<name>``) share their finished students through
``students.jsonl``.  While a student trains, its run holds an ``flock`` on ``claims/<digest>.lock``
(:class:`StudentClaims`); a second run that finds the lock held leaves that student to the first and goes
on to the next.  The kernel drops the lock when its holder exits, even by SIGKILL, so a killed run's
claims are free at once, with no guessing from process ids or ages.  Steps that write a shared file (a
variant's encode, the variants' metrics) run under :func:`exclusive`, which waits for the other run.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Dict, Iterator, Optional

from score_codec.errors import StoreLockedError
from score_codec.store.atomic import WriteLock

__all__ = ["StudentClaims", "exclusive"]

log = logging.getLogger(__name__)


def _holder_pid(lock_file: str) -> Optional[int]:
    """The pid written in a held lock file, or None."""
    try:
        with open(lock_file) as fh:
            text = fh.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class StudentClaims:
    """Claims under ``<cache_dir>/claims``: :meth:`claim` before a student trains, :meth:`release` after."""

    def __init__(self, cache_dir: str) -> None:
        self.dir = os.path.join(cache_dir, "claims")
        self._held: Dict[str, WriteLock] = {}

    def _path(self, key: str) -> str:
        # WriteLock locks "<path>.lock"
        return os.path.join(self.dir, hashlib.sha256(key.encode()).hexdigest()[:24])

    def claim(self, key: str) -> bool:
        """Claim ``key`` (True), or find it held by another live run (False: train something else)."""
        if key in self._held:
            return True
        os.makedirs(self.dir, exist_ok=True)
        try:
            self._held[key] = WriteLock(self._path(key))
        except StoreLockedError:
            return False
        return True

    def holder(self, key: str) -> Optional[int]:
        """The pid of the run holding ``key``'s claim as it wrote it (for messages), or None."""
        return None if key in self._held else _holder_pid(self._path(key) + ".lock")

    def wait(self, key: str, poll: float = 10.0) -> bool:
        """Return once no other run holds ``key``'s claim: True when one did (and this waited for it)."""
        if key in self._held:
            return False
        if self.claim(key):
            self.release(key)
            return False
        log.info("%s: waiting for the run that trains it (pid %s)", key, self.holder(key))
        with exclusive(self._path(key), poll):
            return True

    def release(self, key: str) -> None:
        """Give up ``key``'s claim if this run holds it."""
        lock = self._held.pop(key, None)
        if lock is not None:
            lock.release()


@contextlib.contextmanager
def exclusive(path: str, poll: float = 2.0) -> Iterator[None]:
    """Hold ``<path>.lock`` for the block, waiting (``poll`` seconds between tries) while another run does."""
    import time

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        try:
            lock = WriteLock(path)
            break
        except StoreLockedError:
            time.sleep(poll)
    try:
        yield
    finally:
        lock.release()
