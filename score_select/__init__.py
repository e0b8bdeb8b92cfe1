"""SCORE coding-rate selection of real images (paper Eq. 4) and its baselines.

``indices, gains = score_select.select(features, labels, ipc=50, method="score", alpha=1.0, beta=0.1)``
selects from features in memory; ``score_select.select_images(images, teacher, out, ipc=10)`` runs the teacher
over an image pool first and writes ``out/selection.json`` (what ``score-select`` does).
"""
from __future__ import annotations

from .api import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_LABEL_RATE, select
from .coding_rate import (DEFAULT_EPS_SQ, class_coding_rate, coding_rate, label_coding_rate, objective,
                          residual_label_coding_rate)
from .estimator import ScoreSelection
from .pipeline import select_images
from .greedy import GreedyResult, budgets_from_ipc, greedy_select, sequence_gains
from .presets import PRESETS, preset
from .registry import SelectionTask, available_methods, get_selector, register

__all__ = [
    "select", "select_images", "ScoreSelection", "DEFAULT_ALPHA", "DEFAULT_BETA", "DEFAULT_LABEL_RATE", "DEFAULT_EPS_SQ",
    "coding_rate", "class_coding_rate", "label_coding_rate", "residual_label_coding_rate", "objective",
    "GreedyResult", "budgets_from_ipc", "greedy_select", "sequence_gains",
    "PRESETS", "preset", "SelectionTask", "available_methods", "get_selector", "register",
]
