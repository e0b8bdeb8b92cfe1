"""Fidelity of a label store against the dump it was encoded from: KL at T = 1 and 20, top-1 agreement."""
from __future__ import annotations

from typing import Any, Dict, Union

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
        group = torch.from_numpy(group.reshape(-1).astype(np.int64))
        sums = {k: torch.zeros(len(values), dtype=torch.float64).index_add_(0, group, v.cpu()) for k, v in per_row.items()}
        counts = np.bincount(group.numpy(), minlength=len(values))
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


def fidelity(store: Any, src: str, reader_opts: Dict[str, Any], fmt: str = "auto", progress: bool = False,
             device: str = "cpu") -> Dict[str, Any]:
    """Compare a store with the dump it was encoded from, file by file (bounded memory)."""
    from .detect import open_reader

    attrs = store.aug.attrs
    reader = open_reader(src, attrs.get("format", "auto") if fmt == "auto" else fmt, **reader_opts)
    rows = store.aug.rows
    acc = FidelityAccumulator()
    at = 0
    # a pooled store holds the kept epochs only: the dump's other epochs have no rows to compare
    kept = getattr(store, "kept_epochs", None)
    # row j of every image of a pooled store is source epoch source_of[j]; other stores keep the dump's numbers
    source_of = None if kept is None else np.asarray(kept, dtype=np.int64)
    kept = None if kept is None else np.sort(source_of)
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
        if len(mine) == n:
            mine_epochs = mine["epoch"].astype(np.int64)
            if source_of is not None:
                inside = (mine_epochs >= 0) & (mine_epochs < len(source_of))
                mine_epochs = np.where(inside, source_of[np.where(inside, mine_epochs, 0)], -1)
        # images alone cannot tell the rows of a one-image file apart: their epochs must line up too
        if len(mine) != n or not np.array_equal(mine["image"], dump_rows["image"]) or \
                not np.array_equal(mine_epochs, epochs):
            raise FormatError(f"{rec.source}: rows do not match the store's metadata at dump row {at} "
                              f"(is this the dump the store was encoded from?)")
        yhat = store.rows(mine["image"].astype(np.int64), mine["aug"].astype(np.int64), device=device).cpu()
        # per-epoch figures: a file of a dense array spans several epochs
        acc.add(epochs, torch.from_numpy(np.asarray(logits, dtype=np.float32)), yhat)
        at += n
    if at != len(rows):
        raise FormatError(f"{src}: the dump has {at} rows, the store {len(rows)}")
    return acc.result()
