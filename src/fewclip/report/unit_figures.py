"""Per-unit figures of the evaluate stage: confusion matrix, reliability diagram, saliency overlays."""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fewclip.fileio import atomic_write_bytes


log = logging.getLogger(__name__)
_MISSING_GLYPH = re.compile(r"Glyph \d+ .*missing from font")
_glyphs_noted = False


def save_png(figure: Any, path: Path) -> None:
    """Write the figure as PNG (``png_bytes``) and close it."""
    atomic_write_bytes(path, png_bytes(figure))


def png_bytes(figure: Any) -> bytes:
    """The figure as PNG bytes, cropped to its content, and closed. Labels with characters the font lacks (e.g.
    CJK class names without a CJK font) draw as boxes: one INFO line says so, instead of a warning per glyph on
    every figure (also under -q)."""
    global _glyphs_noted
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")  # type: ignore[attr-defined]
    for warning in caught:
        if not _MISSING_GLYPH.search(str(warning.message)):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        elif not _glyphs_noted:
            log.info(
                "figures: some labels use characters the plotting font lacks (drawn as boxes); install a font "
                "with them (e.g. Noto Sans CJK) for readable labels"
            )
            _glyphs_noted = True
    pyplot().close(figure)
    return buffer.getvalue()


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (files, no display). matplotlib is imported here, when a figure is
    drawn, and not at module top: it takes about a second to import, which every ``import fewclip`` (the CLI's
    start included) would otherwise pay; the backend is chosen before pyplot loads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(matrix: np.ndarray, names: Sequence[str], path: Path, title: str) -> None:
    plt = pyplot()
    size = 2.5 + 0.35 * len(names)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    axis.set_yticks(range(len(names)), names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(title, fontsize=9)
    if len(names) <= 20:
        high = matrix.max() / 2 if matrix.size else 0
        for (i, j), count in np.ndenumerate(matrix):
            axis.text(
                j, i, str(count), ha="center", va="center", fontsize=7, color="white" if count > high else "black"
            )
    save_png(figure, path)


def reliability_png(bins: Sequence[dict[str, float]], ece: float, path: Path, title: str) -> None:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(3.6, 3.4))
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"] if bins else 0.1
    axis.bar(
        centers,
        [b["accuracy"] if b["count"] else 0 for b in bins],
        width=width * 0.95,
        color="#4c72b0",
        edgecolor="white",
        label="accuracy",
    )
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title(f"{title}\nECE {ece:.3f}", fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    save_png(figure, path)


def image_grid_png(images: Sequence[np.ndarray], captions: Sequence[str], path: Path, columns: int = 6) -> None:
    plt = pyplot()
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions):
        axis.imshow(image)
        axis.set_title(caption, fontsize=7)
    save_png(figure, path)
