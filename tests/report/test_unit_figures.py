"""Figures with class names the font cannot draw: no warning per glyph (they printed even under -q)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from fewclip.report.unit_figures import confusion_png


def test_cjk_class_names_raise_no_glyph_warnings(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        confusion_png(np.array([[2, 1], [0, 3]]), ["猫", "犬"], tmp_path / "confusion.png", "猫 vs 犬")
    assert (tmp_path / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
