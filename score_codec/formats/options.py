"""How to interpret a dump, as one value: :class:`DumpOptions` (the reader keywords of every format)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["DumpOptions", "DUMP_OPTION_NAMES", "split_dump_options"]


@dataclass(frozen=True)
class DumpOptions:
    """What a dump does not say about itself.

    Attributes:
        num_classes: expected number of classes C; a dump with another C is refused.  None: take the dump's.
        labels: (N,) int class of each image (an ImageFolder's targets); wins over ``ipc``.
        ipc: images per class of an SRe2L-style synthetic set (class = index // ipc).  Without ``labels``
            and ``ipc`` the classes are inferred as index // (N / C) when C divides N, else unknown.
        seed: sampler seed of an SRe2L dump (SRe2L's loader uses 42); its rows carry no image ids, so
            the reader replays the sampler.
        sampler_draws: random permutations the dump's torch drew per epoch (2 for current releases, 1 for
            old ones; an error names the other value when the mapping check fails).
        check_mapping: test that replayed SRe2L rows map to the right images (a rank test on the
            logits of different epochs); False skips it with a warning.
        num_images: dataset size N for dumps that store indices, when the last images never appear.
    """

    num_classes: Optional[int] = None
    labels: Optional[np.ndarray] = field(default=None, compare=False, hash=False, repr=False)
    ipc: Optional[int] = None
    seed: int = 42
    sampler_draws: int = 2
    check_mapping: bool = True
    num_images: Optional[int] = None

    @classmethod
    def build(cls, options: Optional["DumpOptions"] = None, **overrides: Any) -> "DumpOptions":
        """``options`` (default: all defaults) with the fields named in ``overrides`` replaced; TypeError for
        a keyword that is not a field."""
        if options is None:
            options = cls()
        elif not isinstance(options, cls):
            raise TypeError(f"dump_options must be a DumpOptions, found {type(options).__name__}")
        unknown = sorted(set(overrides) - set(DUMP_OPTION_NAMES))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(map(repr, unknown))}; dump options are "
                            f"{', '.join(DUMP_OPTION_NAMES)}")
        return dataclasses.replace(options, **overrides) if overrides else options

    def reader_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of a :class:`~score_codec.formats.base.DumpReader`."""
        kw: Dict[str, Any] = dict(num_classes=self.num_classes, labels=self.labels, ipc=self.ipc, seed=self.seed,
                                  sampler_draws=self.sampler_draws, check_mapping=self.check_mapping)
        if self.num_images is not None:
            kw["num_images"] = self.num_images
        return kw


#: the keyword names :meth:`DumpOptions.build` accepts
DUMP_OPTION_NAMES: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DumpOptions))


def split_dump_options(kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(dump option keywords, the rest) of a keyword dict."""
    dump = {k: v for k, v in kwargs.items() if k in DUMP_OPTION_NAMES}
    return dump, {k: v for k, v in kwargs.items() if k not in DUMP_OPTION_NAMES}
