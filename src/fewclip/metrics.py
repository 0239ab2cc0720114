"""Classification metrics from a confusion matrix (numpy only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true labels, columns predictions."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """precision, recall, f1 and support per class (0 where undefined)."""
    tp = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def summarize(
    y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int
) -> dict[str, float]:
    """accuracy, balanced accuracy (mean recall) and macro-F1, both means over the classes present in y_true."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    total = matrix.sum()
    stats = per_class(matrix)
    present = stats["support"] > 0
    return {
        "accuracy": float(np.trace(matrix) / total) if total else 0.0,
        "balanced_accuracy": float(stats["recall"][present].mean()) if present.any() else 0.0,
        "macro_f1": float(stats["f1"][present].mean()) if present.any() else 0.0,
    }


def harmonic_mean(a: float, b: float) -> float:
    """The base-to-new summary: 2ab / (a + b)."""
    return 2 * a * b / (a + b) if a + b > 0 else 0.0
