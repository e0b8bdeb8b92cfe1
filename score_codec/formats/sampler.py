"""Replay of the SRe2L relabel sampler: which dataset image each row of ``epoch_e/batch_b.tar`` holds.

SRe2L dumps do not store image indices.  Its loader rebuilds ``BatchSampler(RandomSampler(range(N),
generator=Generator().manual_seed(42)), B, drop_last=False)`` and iterates it once per epoch.  Within an
epoch torch's RandomSampler yields ``randperm(N)``; current torch releases then draw a second, empty
``randperm(N)[:0]`` when the iterator is exhausted, so epoch e uses draw 2e (``draws=2``).  Older releases
drew once per epoch (``draws=1``).  A dump made by one and read by the other maps every epoch after the
first to the wrong images, which :mod:`score_codec.formats.sre2l` detects and reports.
"""
from __future__ import annotations

from typing import Iterator, List

import numpy as np
import torch

from ..errors import InputError

__all__ = ["sampler_epochs", "sampler_batches", "DEFAULT_SEED", "DEFAULT_DRAWS"]

#: SRe2L's loader hard-codes 42 (the default --fkd-seed).
DEFAULT_SEED = 42
#: randperm draws per epoch of the torch release this library runs on (checked in the tests against
#: torch's own RandomSampler).
DEFAULT_DRAWS = 2


def sampler_epochs(n: int, seed: int = DEFAULT_SEED, draws: int = DEFAULT_DRAWS) -> Iterator[np.ndarray]:
    """Endless per-epoch permutations of ``range(n)`` (int64 (n,)), as RandomSampler yields them."""
    if n <= 0:
        raise InputError(f"sampler replay needs a positive image count, found {n}")
    if draws not in (1, 2):
        raise InputError(f"--sampler-draws must be 1 or 2, found {draws}")
    g = torch.Generator()
    g.manual_seed(int(seed))
    while True:
        perm = torch.randperm(n, generator=g).numpy().astype(np.int64)
        if draws == 2:
            # the exhausted iterator's `randperm(n)[:0]` still advances the generator by one draw
            torch.randperm(n, generator=g)
        yield perm


def sampler_batches(n: int, batch_size: int, epochs: int, seed: int = DEFAULT_SEED, draws: int = DEFAULT_DRAWS,
                    drop_last: bool = False) -> Iterator[List[np.ndarray]]:
    """Per epoch, the list of batches (int64 arrays of dataset indices) BatchSampler would produce."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, found {batch_size}")
    it = sampler_epochs(n, seed, draws)
    for _ in range(epochs):
        perm = next(it)
        stop = (n // batch_size) * batch_size if drop_last else n
        yield [perm[s:min(s + batch_size, stop)] for s in range(0, stop, batch_size)]
