"""Calibration bins and ECE against hand-computed values (fewclip.runner.analysis)."""

from __future__ import annotations

import numpy as np
import pytest

from fewclip.runner.analysis import calibration_bins, expected_calibration_error

# Ten predictions placed inside five of the 15 equal-width bins (width 1/15 = 0.0667), by hand:
#   bin  0 (0.0000, 0.0667]: 0.05 wrong                 -> accuracy 0,   confidence 0.05, gap 0.05
#   bin  4 (0.2667, 0.3333]: 0.30 right                 -> accuracy 1,   confidence 0.30, gap 0.70
#   bin  7 (0.4667, 0.5333]: 0.50 right, 0.52 wrong     -> accuracy 1/2, confidence 0.51, gap 0.01
#   bin 10 (0.6667, 0.7333]: 0.70, 0.72 right, 0.71 wrong -> accuracy 2/3, confidence 0.71, gap 0.04333
#   bin 14 (0.9333, 1.0000]: 0.95, 0.99, 1.00 right     -> accuracy 1,   confidence 0.98, gap 0.02
# ECE = (1 * 0.05 + 1 * 0.70 + 2 * 0.01 + 3 * 0.04333 + 3 * 0.02) / 10 = 0.96 / 10 = 0.096
CONFIDENCE = np.array([0.05, 0.30, 0.50, 0.52, 0.70, 0.72, 0.71, 0.95, 0.99, 1.00])
CORRECT = np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 1], dtype=bool)


def test_bins_hold_the_hand_counted_members() -> None:
    bins = calibration_bins(CONFIDENCE, CORRECT)
    assert len(bins) == 15
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 1, 0, 0, 2, 0, 0, 3, 0, 0, 0, 3]
    filled = {i: (b["accuracy"], b["confidence"]) for i, b in enumerate(bins) if b["count"]}
    expected = {0: (0.0, 0.05), 4: (1.0, 0.30), 7: (0.5, 0.51), 10: (2 / 3, 0.71), 14: (1.0, 0.98)}
    assert filled.keys() == expected.keys()
    for index, (accuracy, confidence) in expected.items():
        assert filled[index] == pytest.approx((accuracy, confidence), abs=1e-12)
    assert bins[7]["lower"] == pytest.approx(7 / 15) and bins[7]["upper"] == pytest.approx(8 / 15)


def test_ece_matches_the_hand_computation() -> None:
    assert expected_calibration_error(calibration_bins(CONFIDENCE, CORRECT)) == pytest.approx(0.096, abs=1e-12)


def test_a_confidence_on_an_edge_belongs_to_the_bin_below() -> None:
    """Bins are (lower, upper] as in Guo et al. 2017; 0 goes to the first bin."""
    edges = np.linspace(0.0, 1.0, 16)
    bins = calibration_bins(np.array([edges[5], 0.0]), np.array([True, False]))
    assert bins[4]["count"] == 1 and bins[5]["count"] == 0 and bins[0]["count"] == 1


def test_perfect_calibration_has_zero_ece_and_empty_input_is_zero() -> None:
    confidence = np.array([0.9] * 10)
    correct = np.array([True] * 9 + [False])
    assert expected_calibration_error(calibration_bins(confidence, correct)) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(calibration_bins(np.array([]), np.array([], dtype=bool))) == 0.0
