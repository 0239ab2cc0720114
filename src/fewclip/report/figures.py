"""Run-level plots in ``results/aggregate/``: accuracy vs shots, and training curves per method.

Both are drawn from the CSVs (accuracy_table.csv, results/history/...), never from in-memory results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from fewclip.fileio import read_csv
from fewclip.runner.layout import RunLayout
from fewclip.report.aggregate import mean_curves, read_accuracy_table, read_histories, split_key
from fewclip.report.answer import shots_text
from fewclip.report.unit_figures import pyplot, save_png

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


def accuracy_vs_shots_png(
    accuracy: Sequence[dict[str, Any]], path: Path, metrics: dict[str, str] | None = None
) -> None:
    """One panel per split: the split's headline metric (accuracy, or balanced accuracy on an imbalanced split),
    mean with error bars of ± one sample std over seeds per method; zero-shot and the majority-class baseline
    as horizontal lines; the y-axis fitted to the values (see ``panel_limits`` for the baseline)."""
    plt = pyplot()
    metrics = metrics or {}
    splits = sorted({row["split"] for row in accuracy}, key=split_key)
    figure, axes = plt.subplots(1, len(splits), figsize=(5.6 * len(splits), 4.2), squeeze=False)
    methods = list(dict.fromkeys(row["method"] for row in accuracy))
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    budgets = sorted({row["shots"] for row in accuracy if row["shots"] > 0})
    for axis, split in zip(axes[0], splits):
        metric = metrics.get(split, "accuracy")
        shown: list[float] = []
        for method in methods:
            rows = sorted(
                (
                    r
                    for r in accuracy
                    if r["method"] == method and r["split"] == split and r.get(f"{metric}_mean") is not None
                ),
                key=lambda r: r["shots"],
            )
            if not rows:
                continue
            if all(r["shots"] == 0 for r in rows):
                axis.axhline(rows[0][f"{metric}_mean"], color=colours[method], linestyle="--", label=method)
                shown.append(rows[0][f"{metric}_mean"])
                continue
            rows = [r for r in rows if r["shots"] > 0]
            means, stds = [r[f"{metric}_mean"] for r in rows], [r[f"{metric}_std"] for r in rows]
            axis.errorbar(
                [r["shots"] for r in rows],
                means,
                yerr=stds,
                color=colours[method],
                marker="o",
                capsize=3,
                label=f"{method} (n={max(r['n_seeds'] for r in rows)} seeds)",
            )
            shown += [m - s for m, s in zip(means, stds)] + [m + s for m, s in zip(means, stds)]
        baseline = next((r for r in accuracy if r["split"] == split and r.get("majority") is not None), None)
        level = None
        if baseline is not None:  # a constant answer's balanced accuracy is chance
            level = baseline["majority"] if metric == "accuracy" else baseline["chance"]
        if shown:
            limits, on_axis = panel_limits(shown, level)
            axis.set_ylim(*limits)
            if level is not None and on_axis:
                axis.axhline(level, color="grey", linestyle=":", label="majority class")
            elif level is not None:
                axis.plot([], [], color="grey", linestyle=":", label=f"majority class: {level:.1%} (below the axis)")
        if budgets:
            axis.set_xscale("log", base=2)
            axis.set_xticks(budgets, [str(b) for b in budgets])
            axis.minorticks_off()
        axis.set_xlabel("shots per class")
        axis.set_ylabel(f"{metric.replace('_', ' ')} (mean ± std over seeds)")
        n_test = next((r["n_test"] for r in accuracy if r["split"] == split and r.get("n_test")), None)
        axis.set_title(SPLIT_TITLES.get(split, split) + (f", n = {n_test} test images" if n_test else ""), fontsize=9)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:  # a unit without validation curves has nothing to label
            axis.legend(fontsize=7)
    save_png(figure, path)


def training_curves_png(method: str, curves: dict[int, list[dict[str, float]]], path: Path) -> None:
    """Train loss and validation macro-F1 per epoch, one line per shot budget (mean over seeds)."""
    plt = pyplot()
    figure, (loss_axis, f1_axis) = plt.subplots(1, 2, figsize=(8.4, 3.2))
    for shots, rows in curves.items():
        epochs = [r["epoch"] for r in rows]
        loss_axis.plot(epochs, [r["train_loss"] for r in rows], marker=".", label=shots_text(shots))
        if any(not math.isnan(r["val_macro_f1"]) for r in rows):
            f1_axis.plot(epochs, [r["val_macro_f1"] for r in rows], marker=".", label=shots_text(shots))
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


def write_figures(layout: RunLayout, metrics: dict[str, str] | None = None) -> list[Path]:
    """The accuracy-vs-shots plot and one training-curves plot per method with history; returns the paths.

    Needs accuracy_table.csv (``aggregate.write_aggregates``); ``metrics`` maps a split to the metric its
    panel shows (the answer's choice; accuracy by default).
    """
    written = []
    accuracy = read_accuracy_table(layout.aggregate / "accuracy_table.csv")
    if accuracy:
        accuracy_vs_shots_png(accuracy, accuracy_plot_path(layout), metrics)
        written.append(accuracy_plot_path(layout))
    summary = read_csv(layout.summary)
    for method in dict.fromkeys(row["method"] for row in summary):
        histories = read_histories(layout, summary, method)
        path = curves_path(layout, method)
        if histories:
            training_curves_png(method, mean_curves(histories), path)
            written.append(path)
        else:
            path.unlink(missing_ok=True)  # a stale plot would no longer mirror the CSVs
    return written
