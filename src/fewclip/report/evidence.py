"""Per-image correctness of every unit, read back from ``predictions/`` for the paired tests of the answer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout

log = logging.getLogger(__name__)


@dataclass
class Evidence:
    """Per split, the test images' true labels (n,), and per (method, shots, split) a (seeds, n) boolean
    matrix of which images each seed got right, rows in ascending seed order, columns in the labels' order."""

    labels: dict[str, np.ndarray] = field(default_factory=dict)
    correct: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)

    def get(self, method: str, shots: int, split: str) -> np.ndarray | None:
        return self.correct.get((method, shots, split))


def read_evidence(layout: RunLayout, summary: list[dict[str, str]]) -> Evidence:
    """Correctness of the units in summary.csv (hm rows have no predictions of their own).

    A unit whose predictions file is missing, or lists other images than the split's first unit, is left
    out (with a warning): a paired test needs the same images on both sides.
    """
    evidence = Evidence()
    paths: dict[str, list[str]] = {}
    seen: dict[tuple[str, int, str], list[tuple[int, np.ndarray]]] = {}
    for row in summary:
        method, shots, seed, split = row["method"], int(row["shots"]), int(row["seed"]), row["split"]
        if split == "hm":
            continue
        file = layout.predictions / method / f"shot_{shots}-seed_{seed}-{split}.csv"
        if not file.is_file():
            log.warning("%s not found: %s %d shots seed %d is left out of the paired tests", file, method, shots, seed)
            continue
        rows = read_csv(file)
        order = paths.setdefault(split, [r["path"] for r in rows])
        if [r["path"] for r in rows] != order:
            log.warning(
                "%s lists other test images than the rest of the %s split; left out of the paired tests", file, split
            )
            continue
        evidence.labels.setdefault(split, np.array([int(r["label"]) for r in rows], dtype=np.int64))
        right = np.array([r["label"] == r["pred"] for r in rows], dtype=bool)
        seen.setdefault((method, shots, split), []).append((seed, right))
    for key, members in seen.items():
        evidence.correct[key] = np.stack([right for _, right in sorted(members, key=lambda m: m[0])])
    return evidence
