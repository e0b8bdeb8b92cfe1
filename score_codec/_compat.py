"""Old flat module paths (``score_codec.reader``, ``score_codec.dataset``, ...) as deprecated aliases.

Until 0.1 every module sat directly in ``score_codec/``.  For one release, importing an old path returns
the module at its new place (the same module object, so classes and isinstance checks are shared) and
emits a :class:`DeprecationWarning` that names the new path.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from typing import Optional, Sequence

__all__ = ["MOVED", "install"]

#: old module name -> new module name
MOVED = {
    "score_codec.api": "score_codec.store.bulk",
    "score_codec.layout": "score_codec.store.layout",
    "score_codec.record": "score_codec.store.record",
    "score_codec.encoder": "score_codec.store.encoder",
    "score_codec.writer": "score_codec.store.writer",
    "score_codec.journal": "score_codec.store.journal",
    "score_codec.indexio": "score_codec.store.indexio",
    "score_codec.reader": "score_codec.store.reader",
    "score_codec.dense": "score_codec.store.dense",
    "score_codec.stats": "score_codec.store.stats",
    "score_codec.meta": "score_codec.store.meta",
    "score_codec.distributed": "score_codec.store.distributed",
    "score_codec.quantize": "score_codec.codecs.quantize",
    "score_codec.residual": "score_codec.codecs.residual",
    "score_codec.ratecontrol": "score_codec.codecs.ratecontrol",
    "score_codec.dataset": "score_codec.training.dataset",
    "score_codec.replay": "score_codec.training.replay",
    "score_codec.augment": "score_codec.training.augment",
    "score_codec.relabel": "score_codec.training.relabel",
    "score_codec.models": "score_codec.training.models",
    "score_codec.data": "score_codec.training.images",
    "score_codec.cli_encode": "score_codec.cli.encode",
    "score_codec.cli_inspect": "score_codec.cli.info",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        warnings.warn(f"{spec.name} moved to {self.new}; the old path works until score 0.2",
                      DeprecationWarning, stacklevel=4)
        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:
        pass  # the target module is already executed


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
