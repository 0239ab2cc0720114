"""Evaluation analyses beyond accuracy: calibration, the most-confused class pairs, confident mistakes.

Pure numpy on saved predictions; the evaluate stage writes them as CSVs and the report reads those.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> list[dict[str, float]]:
    """Equal-width confidence bins (lower, upper] (0 in the first): count, accuracy and mean confidence of each."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "accuracy": float(correct[members].mean()) if count else 0.0,
                "confidence": float(confidence[members].mean()) if count else 0.0,
            }
        )
    return rows


def expected_calibration_error(bins: Sequence[dict[str, float]]) -> float:
    """ECE = sum over bins of (bin share) * |accuracy - confidence|."""
    total = sum(b["count"] for b in bins)
    if not total:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins))


def confused_pairs(matrix: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """(true, predicted, count) of the largest off-diagonal confusion-matrix cells."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = [(int(i // off.shape[1]), int(i % off.shape[1]), int(off.flat[i])) for i in order]
    return [p for p in pairs if p[2] > 0]


def confident_mistakes(labels: np.ndarray, pred: np.ndarray, confidence: np.ndarray, top: int = 12) -> list[int]:
    """Indices of the wrong predictions with the highest confidence."""
    wrong = np.flatnonzero(labels != pred)
    return [int(i) for i in wrong[np.argsort(-confidence[wrong], kind="stable")][:top]]
