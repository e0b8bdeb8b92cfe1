"""Fidelity of a label store against the dump it was encoded from: KL at T = 1 and 20, top-1 agreement."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from ..progress import progress_bar

from ..errors import FormatError

__all__ = ["FidelityAccumulator", "fidelity"]


class FidelityAccumulator:
    """Running KL(softmax(Y/T) || softmax(Yhat/T)) at T=1 and T=20 and top-1 agreement, per epoch."""

    TEMPS = (1.0, 20.0)

    def __init__(self) -> None:
        self.per: Dict[int, Dict[str, float]] = {}

    def add(self, epoch: Union[int, np.ndarray], y: torch.Tensor, yhat: torch.Tensor) -> None:
        """y, yhat: (B, C) logits of the same rows (any shift per row); ``epoch``: their label epoch, one for
        all rows or a (B,) array."""
        y, yhat = y.double(), yhat.double()
        per_row = {"agree": (y.argmax(1) == yhat.argmax(1)).double()}
        for t, key in zip(self.TEMPS, ("kl_t1", "kl_t20")):
            lp, lq = torch.log_softmax(y / t, 1), torch.log_softmax(yhat / t, 1)
            per_row[key] = (lp.exp() * (lp - lq)).sum(1)
        epochs = np.broadcast_to(np.asarray(epoch, dtype=np.int64), (y.shape[0],))
        values, group = np.unique(epochs, return_inverse=True)
        group = group.reshape(-1)
        counts = np.bincount(group, minlength=len(values))
        sums = {k: np.bincount(group, weights=v.cpu().numpy(), minlength=len(values)) for k, v in per_row.items()}
        for j, e in enumerate(values.tolist()):
            d = self.per.setdefault(int(e), {"rows": 0, "agree": 0, "kl_t1": 0.0, "kl_t20": 0.0})
            d["rows"] += int(counts[j])
            d["agree"] += int(round(float(sums["agree"][j])))
            d["kl_t1"] += float(sums["kl_t1"][j])
            d["kl_t20"] += float(sums["kl_t20"][j])

    @staticmethod
    def _final(d: Dict[str, float]) -> Dict[str, float]:
        n = max(d["rows"], 1)
        return {"rows": int(d["rows"]), "kl_t1": d["kl_t1"] / n, "kl_t20": d["kl_t20"] / n, "top1_agreement": d["agree"] / n}

    def result(self) -> Dict[str, Any]:
        tot = {"rows": 0, "agree": 0, "kl_t1": 0.0, "kl_t20": 0.0}
        for d in self.per.values():
            for k in tot:
                tot[k] += d[k]
        return {"per_epoch": {str(e): self._final(d) for e, d in sorted(self.per.items())}, "overall": self._final(tot)}


def _source_epochs(stored: np.ndarray, kept: Optional[np.ndarray]) -> np.ndarray:
    """The dump's epoch numbers of store rows whose metadata epochs are ``stored`` (-1 where a pooled store's
    row number has no kept epoch)."""
    stored = stored.astype(np.int64)
    if kept is None:
        return stored
    inside = (stored >= 0) & (stored < len(kept))
    return np.where(inside, kept[np.where(inside, stored, 0)], -1)


def fidelity(store: Any, src: str, reader_opts: Dict[str, Any], fmt: str = "auto", progress: bool = False,
             device: str = "cpu") -> Dict[str, Any]:
    """Compare a store with the dump it was encoded from, file by file (bounded memory)."""
    from .detect import open_reader

    attrs = store.aug.attrs
    reader = open_reader(src, attrs.get("format", "auto") if fmt == "auto" else fmt, **reader_opts)
    rows = store.aug.rows
    acc = FidelityAccumulator()
    at = 0
    # a pooled store holds the kept epochs only: the dump's other epochs have no rows to compare, and row j of
    # every image is source epoch kept[j]; other stores keep the dump's epoch numbers
    kept = getattr(store, "kept_epochs", None)
    kept = None if kept is None else np.asarray(kept, dtype=np.int64)
    for rec in progress_bar(reader.batches(), total=reader.num_files() or None, desc="verify", unit=reader.unit, enabled=progress):
        dump_rows, logits = rec.rows, rec.logits
        if kept is not None:
            # a file may hold one epoch (batch dumps) or every epoch of an image (a dense array): keep the
            # rows of the kept epochs, in dump order, as the encode did
            on = np.isin(dump_rows["epoch"].astype(np.int64), kept)
            if not on.all():
                dump_rows, logits = dump_rows[on], logits[on]
        n = len(dump_rows)
        if n == 0:
            continue
        mine = rows[at:at + n]
        epochs = dump_rows["epoch"].astype(np.int64)
        # images alone cannot tell the rows of a one-image file apart: their epochs must line up too
        if len(mine) != n or not np.array_equal(mine["image"], dump_rows["image"]) or \
                not np.array_equal(_source_epochs(mine["epoch"], kept), epochs):
            raise FormatError(f"{rec.source}: rows do not match the store's metadata at dump row {at} "
                              f"(is this the dump the store was encoded from?)")
        yhat = store.rows(mine["image"].astype(np.int64), mine["aug"].astype(np.int64), device=device).cpu()
        # per-epoch figures: a file of a dense array spans several epochs
        acc.add(epochs, torch.from_numpy(np.asarray(logits, dtype=np.float32)), yhat)
        at += n
    if at != len(rows):
        raise FormatError(f"{src}: the dump has {at} rows, the store {len(rows)}")
    return acc.result()
