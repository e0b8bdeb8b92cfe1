"""Progress bars on stderr, created only when one is asked for.

A disabled ``tqdm`` bar still takes tqdm's process-shared write lock (and may start its monitor thread);
a process forked while another holds that lock, or killed while holding it, can leave the lock held for
good and every later bar waiting on it.  Library calls run with ``progress=False`` by default, in
DataLoader workers and forked encoders among others, so they never touch tqdm at all.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

__all__ = ["progress_bar"]


class _SilentBar:
    """The part of tqdm's interface the library uses, doing nothing."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_SilentBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool, **kwargs: Any) -> Any:
    """A ``tqdm.auto.tqdm`` bar over ``iterable`` (or a manual bar, given ``total=``) when ``enabled``.

    Disabled, it returns ``iterable`` itself, or an object whose ``update`` / ``set_postfix`` / ``close`` do
    nothing when there is no iterable.  ``kwargs`` are tqdm's (``total``, ``desc``, ``unit``, ...).
    """
    if enabled:
        from tqdm.auto import tqdm
        return tqdm(iterable, **kwargs)
    return _SilentBar() if iterable is None else iterable
