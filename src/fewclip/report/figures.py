"""Run-level plots in ``results/aggregate/``: the headline figure (the answer's metric against shots, one small
panel per method), the same on the other splits, and training curves per method; one colour per method in all.

Both are drawn from the CSVs (accuracy_table.csv, results/history/...), never from in-memory results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout
from fewclip.report.aggregate import (
    constant_baseline,
    mean_curves,
    metric_interval,
    read_accuracy_table,
    read_histories,
    split_key,
)
from fewclip.report.answer import shots_text
from fewclip.report.unit_figures import pyplot, save_png

# seaborn's "deep" colours, then darker ones for runs of more than ten methods; no grey (see method_colours)
PALETTE = (
    "#4c72b0",
    "#dd8452",
    "#55a868",
    "#c44e52",
    "#8172b3",
    "#937860",
    "#da8bc3",
    "#ccb974",
    "#64b5cd",
    "#1b3a6b",
    "#8c3b00",
    "#1e5e32",
    "#6b1f47",
    "#4d4d00",
)
BASELINE_GREY = "#555555"
CONTEXT_GREY = "#c8c8c8"
MAX_COLUMNS = 5  # panels per row: five 2.6-inch panels fill the report's column at 80 dpi without shrinking
PANEL_INCHES = (2.6, 2.5)
WIDTH_INCHES = MAX_COLUMNS * PANEL_INCHES[0]
LEGEND_INCHES = 0.4
SPLIT_LABELS = {"test": "test", "base": "base", "new": "new", "hm": "hm of base, new"}
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}
SPLIT_TITLES = {
    "test": "test (all classes)",
    "base": "base classes",
    "new": "new classes",
    "hm": "harmonic mean of base and new",
}


def y_limits(values: Sequence[float], margin: float = 0.1, least: float = 0.02) -> tuple[float, float]:
    """An axis around the data (error bars and baselines included): its range plus ``margin`` of it on each
    side (at least ``least``), clipped to [0, 1]. Differences of a few points stay visible."""
    low, high = min(values), max(values)
    pad = max(margin * (high - low), least)
    return max(0.0, low - pad), min(1.0, high + pad)


def panel_limits(values: Sequence[float], baseline: float | None = None) -> tuple[tuple[float, float], bool]:
    """One panel's y-axis, and whether the baseline is drawn on it: only when it at most doubles the data's
    span; a baseline far below (12.5% chance under methods at 90%) would squash their differences flat,
    so it is named in the legend instead."""
    if baseline is None:
        return y_limits(values), False
    span = max(max(values) - min(values), 0.02)
    widened = max(max(values), baseline) - min(min(values), baseline)
    if widened <= 2 * span:
        return y_limits([*values, baseline]), True
    return y_limits(values), False


def method_colours(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, by its place in the run's method order, shared by every figure and the
    leaderboard's swatches (grey is left to the majority-class baseline and the other methods' context lines)."""
    return {method: PALETTE[i % len(PALETTE)] for i, method in enumerate(dict.fromkeys(methods))}


def shot_free_methods(accuracy: Sequence[dict[str, Any]]) -> list[str]:
    """Methods with results at 0 shots only (zero-shot): baselines, drawn as lines across the budgets."""
    trained = {r["method"] for r in accuracy if r["shots"] > 0}
    return [m for m in dict.fromkeys(r["method"] for r in accuracy) if m not in trained]


def method_series(
    accuracy: Sequence[dict[str, Any]], method: str, split: str, metric: str
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Shots, mean, and the 95% interval's low and high ends (the mean where unknown) of one method on a split."""
    rows = sorted(
        (r for r in accuracy if (r["method"], r["split"]) == (method, split) and r.get(f"{metric}_mean") is not None),
        key=lambda r: r["shots"],
    )
    means = [r[f"{metric}_mean"] for r in rows]
    ends = [metric_interval(accuracy, r, metric) or (m, m) for r, m in zip(rows, means)]
    return [r["shots"] for r in rows], means, [e[0] for e in ends], [e[1] for e in ends]


def shots_panels_png(
    accuracy: Sequence[dict[str, Any]],
    splits: Sequence[str],
    metrics: dict[str, str],
    path: Path,
    colours: dict[str, str],
    recommended: tuple[str, int, str] | None = None,
) -> None:
    """Small multiples: per split, one panel per trained method (its mean over seeds against shots with the 95%
    interval as a band, the other methods as thin grey lines for context), the shot-free heads (zero-shot) as
    dashed lines and the majority-class baseline dotted in every panel; panels of a split share the y-axis.
    ``recommended`` (method, shots, split) is starred and its panel titled so."""
    plt = pyplot()
    free = shot_free_methods(accuracy)
    trained = [m for m in dict.fromkeys(r["method"] for r in accuracy if r["split"] in splits) if m not in free]
    panels = trained or [None]  # a zero-shot-only run: one panel with its baselines
    columns = min(len(panels), MAX_COLUMNS)
    rows_per_split = math.ceil(len(panels) / columns)
    height = PANEL_INCHES[1] * rows_per_split * len(splits) + LEGEND_INCHES
    width = min(WIDTH_INCHES / columns, 1.5 * PANEL_INCHES[0]) * columns  # few panels: wider, as readable
    figure, axes = plt.subplots(
        rows_per_split * len(splits), columns, figsize=(width, height), squeeze=False, sharex=True
    )
    budgets = sorted({r["shots"] for r in accuracy if r["shots"] > 0}) or [1]
    for index, split in enumerate(splits):
        split_axes = list(axes[index * rows_per_split : (index + 1) * rows_per_split].flat)
        metric = metrics.get(split, "accuracy")
        series = {m: method_series(accuracy, m, split, metric) for m in dict.fromkeys(r["method"] for r in accuracy)}
        shown = [v for s in series.values() for v in s[2] + s[3]]
        level = constant_baseline(accuracy, split, metric)
        limits, level_on_axis = panel_limits(shown or [0.0, 1.0], level)
        starred = recommended[:2] if recommended is not None and recommended[2] == split else None
        for axis, method in zip(split_axes, panels):
            draw_panel(axis, method, series, budgets, colours, starred)
            if level is not None and level_on_axis:
                axis.axhline(level, color=BASELINE_GREY, linestyle=":", linewidth=1.2)
            axis.set_ylim(*limits)
        if level is not None and not level_on_axis:  # far below: drawing it would squash the differences flat
            split_axes[0].text(
                0.03,
                0.03,
                f"majority class {level:.1%}: below",
                transform=split_axes[0].transAxes,
                fontsize=9,
                color=BASELINE_GREY,
            )
        for axis in split_axes[len(panels) :]:
            axis.axis("off")
        for row_start in range(0, len(split_axes), columns):
            split_axes[row_start].set_ylabel(
                f"{SPLIT_LABELS.get(split, split)}: {METRIC_LABELS.get(metric, metric)}", fontsize=10
            )
    figure.legend(
        handles=legend_handles(plt, free, colours, recommended is not None),
        loc="upper center",
        ncol=6,
        fontsize=10,
        frameon=False,
        bbox_to_anchor=(0.5, 1.0),
    )
    # fixed spacing, not tight_layout (which measures every label and doubled the figure's cost); the PNG is
    # cropped to its content when saved
    figure.subplots_adjust(top=1 - (LEGEND_INCHES + 0.3) / height, hspace=0.5, wspace=0.28)
    save_png(figure, path)


def draw_panel(
    axis: Any,
    method: str | None,
    series: dict[str, tuple[list[int], list[float], list[float], list[float]]],
    budgets: Sequence[int],
    colours: dict[str, str],
    starred: tuple[str, int] | None,
) -> None:
    """One small multiple: ``method`` in its colour with its band, the other trained methods in thin grey, the
    shot-free heads dashed across the budgets; ``method`` None draws the shot-free heads alone."""
    for other, (shots, means, _, _) in series.items():
        if other != method and shots and shots[0] > 0:
            axis.plot(shots, means, color=CONTEXT_GREY, linewidth=0.9, zorder=1)
    for free, (shots, means, lows, highs) in series.items():
        if shots == [0]:
            axis.axhline(means[0], color=colours[free], linestyle="--", linewidth=1.4, zorder=2)
            axis.axhspan(lows[0], highs[0], color=colours[free], alpha=0.08, linewidth=0, zorder=0)
    if method is not None and series[method][0]:
        shots, means, lows, highs = series[method]
        axis.fill_between(shots, lows, highs, color=colours[method], alpha=0.22, linewidth=0, zorder=3)
        axis.plot(shots, means, color=colours[method], marker="o", markersize=4, linewidth=2.2, zorder=4)
        if starred is not None and starred[0] == method and starred[1] in shots:
            y = means[shots.index(starred[1])]
            axis.plot(
                [starred[1]], [y], marker="*", markersize=16, color=colours[method], markeredgecolor="black", zorder=5
            )
    elif method is not None:
        axis.text(
            0.5, 0.5, "no results on this split", transform=axis.transAxes, ha="center", fontsize=9, color=BASELINE_GREY
        )
    title = method if method is not None else "no trained head ran"
    recommended = starred is not None and starred[0] == method
    axis.set_title(
        title + (" (recommended)" if recommended else ""),
        fontsize=12,
        fontweight="bold" if recommended else "normal",
        color=colours.get(method or "", "black"),
    )
    axis.set_xscale("log", base=2)
    axis.set_xticks(list(budgets), [str(b) for b in budgets])
    axis.minorticks_off()
    axis.tick_params(labelsize=10)
    axis.yaxis.set_major_formatter(lambda y, _: f"{100 * y:.0f}%")
    axis.set_xlabel("shots per class", fontsize=10)
    axis.grid(alpha=0.3)


def legend_handles(plt: Any, shot_free: Sequence[str], colours: dict[str, str], starred: bool) -> list[Any]:
    """The figure's one legend: what the line styles mean (the panel titles name the methods)."""
    lines = plt.matplotlib.lines
    handles = [lines.Line2D([], [], color=colours[m], linestyle="--", label=m) for m in shot_free]
    handles += [
        lines.Line2D([], [], color=BASELINE_GREY, linestyle=":", label="majority class"),
        lines.Line2D([], [], color=CONTEXT_GREY, label="the other methods"),
        plt.matplotlib.patches.Patch(color="#4c72b0", alpha=0.25, label="95% interval (test images)"),
    ]
    if starred:
        handles.append(
            lines.Line2D([], [], color="black", marker="*", markersize=12, linestyle="", label="recommended")
        )
    return handles


def shade(colour: str, fraction: float) -> str:
    """``colour`` blended towards white by ``fraction`` (0: itself)."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(c + (255 - c) * fraction):02x}" for c in (red, green, blue))


def training_curves_png(
    method: str, curves: dict[int, list[dict[str, float]]], path: Path, colour: str = PALETTE[0]
) -> None:
    """Train loss and validation macro-F1 per epoch, one line per shot budget (mean over seeds), in the method's
    colour, lighter for fewer shots."""
    plt = pyplot()
    figure, (loss_axis, f1_axis) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for rank, (shots, rows) in enumerate(sorted(curves.items(), reverse=True)):
        epochs = [r["epoch"] for r in rows]
        style = {"marker": ".", "label": shots_text(shots), "color": shade(colour, min(0.25 * rank, 0.75))}
        loss_axis.plot(epochs, [r["train_loss"] for r in rows], **style)
        if any(not math.isnan(r["val_macro_f1"]) for r in rows):
            f1_axis.plot(epochs, [r["val_macro_f1"] for r in rows], **style)
    loss_axis.set_title(f"{method}: train loss", fontsize=9)
    f1_axis.set_title(f"{method}: validation macro-F1", fontsize=9)
    f1_axis.set_ylim(0, 1.02)
    for axis in (loss_axis, f1_axis):
        axis.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # a unit without validation curves has nothing to label
            axis.legend(fontsize=7)
    save_png(figure, path)


def curves_path(layout: RunLayout, method: str) -> Path:
    return layout.aggregate / f"training_curves-{method}.png"


def accuracy_plot_path(layout: RunLayout) -> Path:
    return layout.aggregate / "accuracy_vs_shots.png"


def headline_plot_path(layout: RunLayout) -> Path:
    return layout.aggregate / "headline.png"


def write_figures(
    layout: RunLayout,
    metrics: dict[str, str] | None = None,
    split: str | None = None,
    recommended: tuple[str, int] | None = None,
) -> list[Path]:
    """The headline figure (the answer's ``split``, ``recommended`` (method, shots) starred), accuracy vs shots
    on the other splits when there are any (base and new beside hm), and one training-curves plot per method with history; returns the
    paths. Needs accuracy_table.csv (``aggregate.write_aggregates``); ``metrics`` maps a split to the metric its
    panels show (the answer's choice; accuracy by default).
    """
    written = []
    metrics = metrics or {}
    accuracy = read_accuracy_table(layout.aggregate / "accuracy_table.csv")
    colours = method_colours([r["method"] for r in accuracy])
    splits = sorted({r["split"] for r in accuracy}, key=split_key)
    headline = split if split in splits else (splits[0] if splits else None)
    starred = (*recommended, headline) if recommended is not None and headline is not None else None
    others = [s for s in splits if s != headline]
    for path, shown in ((headline_plot_path(layout), [headline]), (accuracy_plot_path(layout), others)):
        if headline is None or not shown:  # one split: the headline figure is all there is
            path.unlink(missing_ok=True)
            continue
        shots_panels_png(accuracy, [s for s in shown if s is not None], metrics, path, colours, starred)
        written.append(path)
    summary = read_csv(layout.summary)
    for method in dict.fromkeys(row["method"] for row in summary):
        histories = read_histories(layout, summary, method)
        path = curves_path(layout, method)
        if histories:
            training_curves_png(method, mean_curves(histories), path, colours.get(method, PALETTE[0]))
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # a stale plot would no longer mirror the CSVs
    return written
