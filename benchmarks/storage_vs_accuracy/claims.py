"""Claims on students, so that several runs can share one cache without training the same student twice.

Runs of one preset that share a cache (``benchmarks/cache/<name>``) already share their finished students
through ``students.jsonl``.  A claim covers the time a student trains: before training, a run creates
``claims/<digest>.claim`` (exclusively) holding its host and process id; a second run that finds a claim
held by a live process on the same host leaves that student to it and goes on to the next.  A claim whose
process is gone (a killed run) is taken over.  Claims from another host are honoured until they are
``stale_after`` seconds old, since their process cannot be checked from here.
"""
from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Optional

__all__ = ["StudentClaims"]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, owned by someone else
        return True
    return True


class StudentClaims:
    """Claim files under ``<cache>/claims``: :meth:`claim` before a student trains, :meth:`release` after.

    Args:
        cache_dir: the run's cache folder.
        stale_after: seconds after which a claim from another host is treated as abandoned.
    """

    def __init__(self, cache_dir: str, stale_after: float = 6 * 3600.0) -> None:
        self.dir = os.path.join(cache_dir, "claims")
        self.stale_after = float(stale_after)
        self.me = f"{socket.gethostname()} {os.getpid()}"

    def _path(self, key: str) -> str:
        return os.path.join(self.dir, hashlib.sha256(key.encode()).hexdigest()[:24] + ".claim")

    def holder(self, key: str) -> Optional[str]:
        """``"host pid"`` of the live run that holds ``key``'s claim, or None (unclaimed, ours, or stale)."""
        path = self._path(key)
        try:
            with open(path) as fh:
                owner = fh.read().strip()
            age = time.time() - os.path.getmtime(path)
        except OSError:
            return None
        if owner == self.me:
            return None
        host, _, pid = owner.rpartition(" ")
        if host == socket.gethostname():
            return owner if pid.isdigit() and _alive(int(pid)) else None
        return owner if age < self.stale_after else None

    def claim(self, key: str) -> bool:
        """Claim ``key``; False when a live run holds it (train something else)."""
        os.makedirs(self.dir, exist_ok=True)
        path = self._path(key)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if self.holder(key) is not None:
                return False
            tmp = f"{path}.{os.getpid()}.tmp"   # take over a stale claim in one rename
            with open(tmp, "w") as fh:
                fh.write(self.me)
            os.replace(tmp, path)
            return True
        with os.fdopen(fd, "w") as fh:
            fh.write(self.me)
        return True

    def release(self, key: str) -> None:
        """Remove ``key``'s claim if this run holds it."""
        path = self._path(key)
        try:
            with open(path) as fh:
                if fh.read().strip() != self.me:
                    return
            os.remove(path)
        except OSError:
            pass
