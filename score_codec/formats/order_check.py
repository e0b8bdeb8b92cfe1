"""Does a replayed row -> image mapping fit the dump?  A check that needs no accurate teacher.

SRe2L dumps store no image ids, so the reader replays the relabel sampler.  A wrong seed, or a dump
made by a torch release that draws a different number of sampler permutations per epoch, maps rows to
the wrong images.  The check compares epochs: under the right mapping, an image's epoch-0 row and its
rows of later epochs are augmented views of the same picture, so their (centred) logits are more alike
than those of two different images, for any teacher whose output depends on its input, trained or not.
Later epochs are averaged per image (which also averages out CutMix / Mixup partners).  The statistic is
the probability (AUC) that an image's epoch-0 row is closer to its own later rows than to another
image's, over a probe set of up to ``MAX_PROBE`` images; a mapping passes when the AUC exceeds 1/2 by
``Z_MIN`` standard deviations of its null distribution and by at least ``MIN_GAP``.
With one epoch only, the share of rows whose argmax is the mapped image's class is tested against
chance instead (that needs classes and a teacher better than chance).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

__all__ = ["MappingCheck", "pair_auc", "argmax_test", "Z_MIN", "MIN_GAP", "MAX_PROBE"]

Z_MIN = 4.0
MIN_GAP = 0.08
MAX_PROBE = 2048


def _unit(rows: np.ndarray) -> np.ndarray:
    """Row-centred, mean-row-removed, L2-normalised copies of ``rows`` (n, C) float64."""
    x = rows.astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    x = x - x.mean(0, keepdims=True)       # the component every row shares (bias, untrained nets) says nothing
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pair_auc(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """AUC that row i of ``a`` is closer to row i of ``b`` than to another row of ``b``, and its z-score.

    ``a``, ``b``: (n, C) logits of the same n images in two epochs (n >= 3).  For each i, the share of the
    other n - 1 rows of ``b`` less similar to ``a[i]`` than ``b[i]`` is (ties count half); the AUC is its
    mean.  Under an unrelated mapping each share is uniform on [0, 1], so z = (auc - 1/2) / sqrt(1 / (12 n))."""
    n = len(a)
    sim = _unit(a) @ _unit(b).T                         # (n, n) cosine similarities
    # rows below the diagonal's similarity, ties (other than itself) counting half: its average rank less one
    # (counted directly: a rank function would import a statistics library on every encode)
    d = sim[np.arange(n), np.arange(n)][:, None]
    below = (sim < d).sum(1) + 0.5 * ((sim == d).sum(1) - 1.0)
    auc = float(np.mean(below / (n - 1)))
    return auc, float((auc - 0.5) / math.sqrt(1.0 / (12.0 * n)))


class MappingCheck:
    """Collects epoch-0 rows and per-image sums of later rows of a probe set, per candidate mapping.

    Args:
        num_images: N.
        candidates: the keys of the candidate mappings (e.g. sampler draw counts ``(2, 1)``).
    """

    def __init__(self, num_images: int, candidates, seed: int = 0) -> None:
        probe = np.sort(np.random.default_rng(seed).permutation(num_images)[:MAX_PROBE])
        self.slot = np.full(num_images, -1, dtype=np.int64)
        self.slot[probe] = np.arange(len(probe))
        self.m = len(probe)
        self.epoch0: Optional[np.ndarray] = None
        self.seen0 = np.zeros(self.m, dtype=bool)
        self.sums: Dict[int, np.ndarray] = {}
        self.counts = {k: np.zeros(self.m, dtype=np.int64) for k in candidates}
        self.epochs = 0

    def add(self, epoch: int, images: Dict[int, np.ndarray], logits: np.ndarray) -> None:
        """One batch: for each candidate mapping, the image id of every row; ``logits`` (B, C)."""
        x = (logits - logits.mean(1, keepdims=True)).astype(np.float32)
        if self.epoch0 is None:
            self.epoch0 = np.zeros((self.m, x.shape[1]), dtype=np.float32)
            self.sums = {k: np.zeros((self.m, x.shape[1]), dtype=np.float32) for k in self.counts}
        self.epochs = max(self.epochs, epoch + 1)
        for k, img in images.items():
            sl = self.slot[img]
            hit = sl >= 0
            if epoch == 0:   # every candidate agrees on epoch 0 (one permutation drawn so far)
                self.epoch0[sl[hit]] = x[hit]
                self.seen0[sl[hit]] = True
                return
            np.add.at(self.sums[k], sl[hit], x[hit])
            np.add.at(self.counts[k], sl[hit], 1)

    def test(self, key) -> Tuple[float, float, int]:
        """(auc, z, images compared) of candidate mapping ``key``."""
        ok = self.seen0 & (self.counts[key] > 0)
        if ok.sum() < 3:
            return float("nan"), float("nan"), int(ok.sum())
        later = self.sums[key][ok] / self.counts[key][ok, None]
        auc, z = pair_auc(self.epoch0[ok], later)
        return auc, z, int(ok.sum())

    @staticmethod
    def passes(auc: float, z: float) -> bool:
        return z >= Z_MIN and auc >= 0.5 + MIN_GAP


def argmax_test(share: float, rows: int, num_classes: int) -> Tuple[float, bool]:
    """z-score of an argmax-equals-class share against chance 1/C, and whether it passes (z >= Z_MIN)."""
    p = 1.0 / num_classes
    z = (share - p) / math.sqrt(p * (1 - p) / max(rows, 1))
    return z, z >= Z_MIN

