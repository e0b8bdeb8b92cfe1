"""Storage and fidelity metrics of each label variant, computed once and cached beside its store.

A variant's metrics (label bytes, rows kept, KL at the student's T and at T = 1, top-1 agreement) cost two
passes over every stored row (minutes at 1M rows x 1000 classes) after its encode; cached in
``<cache>/variants/<selection>/metrics.json`` (and in the committed artifacts), a resumed run reports a
finished variant without encoding it again.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

import torch

from benchmarks.storage_vs_accuracy.claims import exclusive
from benchmarks.storage_vs_accuracy.label_sources import BatchTable, kd_metrics

__all__ = ["MetricsCache"]

_FLOATS = ("kl", "agree", "kl_t1")   # NaN is stored as null


class MetricsCache:
    """``vid -> metrics`` dict persisted as JSON at ``path`` (written after every new entry).

    Entries: ``name`` and either ``note`` (the variant is n/a at its budget) or ``label_bytes``,
    ``rows_kept``, ``kl``, ``agree``, ``kl_t1`` (NaN stored as null), and the variant's ``extra`` fields
    (an allocation's ``keep_epochs``, ``inner_ratio``, ``probe_kl_t1``)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data: Dict[str, Dict[str, Any]] = {}
        self._reload()

    def _reload(self) -> None:
        """Add the entries another run sharing the cache wrote since."""
        if os.path.isfile(self.path):
            with open(self.path) as fh:
                for vid, m in json.load(fh).items():
                    self.data.setdefault(vid, m)

    def get(self, vid: str, legacy: Optional[str] = None, name: Optional[str] = None) -> Optional[Dict[str, Any]]:
        """The cached metrics of ``vid``, else those an earlier version cached under ``legacy`` (the same
        targets under another id; reported under ``name``), else None."""
        m = self.data.get(vid)
        if m is None and legacy is not None and legacy in self.data:
            m = dict(self.data[legacy], **({"name": name} if name else {}))
        return None if m is None else {k: (float("nan") if v is None and k in _FLOATS else v) for k, v in m.items()}

    def compute(self, var: Any, Y: torch.Tensor, table: BatchTable, T: float) -> Dict[str, Any]:
        """The metrics of ``var`` (a LazyVariant; built here if needed), cached."""
        if var.vid not in self.data:
            with exclusive(self.path):   # one run at a time computes and writes the shared file
                self._reload()
                if var.vid not in self.data:
                    m = self._measure(var, Y, table, T)
                    if str(m.get("note", "")).startswith("error"):
                        return m   # a library bug is reported, not cached: a fixed library gets its row next time
                    self.data[var.vid] = m
                    self._write()
        return self.get(var.vid)

    @staticmethod
    def _measure(var: Any, Y: torch.Tensor, table: BatchTable, T: float) -> Dict[str, Any]:
        """The metrics of ``var``, building it."""
        src = var.source
        if src is None:
            m: Dict[str, Any] = dict(name=var.name, note=var.note)
        elif (var.same_as or var.vid) == "raw":   # the reference's own logits: exact by construction
            m = dict(name=var.name, label_bytes=src.label_bytes, rows_kept=src.rows_kept, kl=0.0, agree=1.0, kl_t1=0.0)
        else:
            m = dict(name=var.name, label_bytes=src.label_bytes, rows_kept=src.rows_kept, **kd_metrics(src, Y, table, T))
            try:
                m["kl_t1"] = kd_metrics(src, Y, table, 1.0)["kl"]
            except ValueError:   # FKD stores probabilities at the student's T only
                m["kl_t1"] = float("nan")
        m.update(getattr(var, "extra", None) or {})
        return m

    def _write(self) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        clean = {vid: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}
                 for vid, m in self.data.items()}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(clean, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
