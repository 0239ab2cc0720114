"""Tables over seeds and methods, computed from ``results/summary.csv`` and written to ``results/aggregate/``.

accuracy_table.csv  method, shots, split, n_seeds, n_test, accuracy / balanced_accuracy / macro_f1 mean and
                    std, and the split's chance (1 / classes) and majority-class accuracy
trainable_params.csv  method, shots, trainable_params
base_new.csv  method, shots, base/new/hm mean and std of accuracy (only in the base-to-new mode)

Means are over seeds; std is the sample standard deviation (n - 1), 0 for a single seed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from fewclip.fileio import read_csv, write_csv
from fewclip.runner.layout import RunLayout
from fewclip.stats import chance_accuracy, harmonic_mean, majority_accuracy, mean_std, wilson_interval

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
ACCURACY_COLUMNS = (
    "method",
    "shots",
    "split",
    "n_seeds",
    "n_test",
    "accuracy_mean",
    "accuracy_std",
    "balanced_accuracy_mean",
    "balanced_accuracy_std",
    "macro_f1_mean",
    "macro_f1_std",
    "chance",
    "majority",
)
PARAMS_COLUMNS = ("method", "shots", "trainable_params")
BASE_NEW_COLUMNS = ("method", "shots", "base_mean", "base_std", "new_mean", "new_std", "hm_mean", "hm_std")
SPLIT_ORDER = ("test", "base", "new", "hm")


def split_key(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split) if split in SPLIT_ORDER else len(SPLIT_ORDER), split)


def _first_seen(values: Sequence[str]) -> dict[str, int]:
    order: dict[str, int] = {}
    for value in values:
        order.setdefault(value, len(order))
    return order


def class_supports(per_class: Sequence[dict[str, str]]) -> dict[str, list[int]]:
    """Test images per class of each split, from per_class.csv (every unit of a split sees the same images)."""
    first: dict[str, tuple[str, str, str]] = {}
    supports: dict[str, list[int]] = {}
    for row in per_class:
        unit = (row["method"], row["shots"], row["seed"])
        if first.setdefault(row["split"], unit) == unit:
            supports.setdefault(row["split"], []).append(int(row["support"]))
    return supports


def _number(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def accuracy_table(
    summary: Sequence[dict[str, str]], supports: dict[str, list[int]] | None = None
) -> list[dict[str, Any]]:
    """One row per (method, shots, split): mean and sample std over seeds of each metric, the seed and test
    image counts, and the split's chance and majority-class accuracy (None where unknown, e.g. hm).

    Methods keep their order in summary.csv (the config's order); shots ascend; splits test, base, new, hm.
    """
    supports = supports or {}
    groups: dict[tuple[str, int, str], list[dict[str, str]]] = {}
    for row in summary:
        groups.setdefault((row["method"], int(row["shots"]), row["split"]), []).append(row)
    method_order = _first_seen([row["method"] for row in summary])
    rows = []
    for (method, shots, split), members in sorted(
        groups.items(), key=lambda kv: (method_order[kv[0][0]], kv[0][1], split_key(kv[0][2]))
    ):
        row: dict[str, Any] = {
            "method": method,
            "shots": shots,
            "split": split,
            "n_seeds": len(members),
            "n_test": int(members[0]["n_eval"]) if members[0].get("n_eval") else None,
        }
        for metric in METRICS:
            values = [_number(r.get(metric)) for r in members]
            known = [v for v in values if v is not None]  # summaries written before a metric existed lack it
            mean, std = mean_std(known) if known else (None, None)
            row[f"{metric}_mean"], row[f"{metric}_std"] = mean, std
        support = supports.get(split)
        row["chance"] = chance_accuracy(len(support)) if support else None
        row["majority"] = majority_accuracy(support) if support else None
        rows.append(row)
    return rows


def trainable_params(summary: Sequence[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per (method, shots) and distinct parameter count (the count never varies with the seed)."""
    seen: dict[tuple[str, int, int], None] = {}
    for row in summary:
        seen.setdefault((row["method"], int(row["shots"]), int(row["trainable_params"])), None)
    return [{"method": m, "shots": k, "trainable_params": p} for m, k, p in seen]


def base_new_table(accuracy: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Accuracy on base, new and their harmonic mean per (method, shots); [] outside the base-to-new mode.

    A head that cannot name unseen classes (a linear probe) has base values and empty new / hm.
    """
    cells: dict[tuple[str, int], dict[str, Any]] = {}
    for row in accuracy:
        if row["split"] in ("base", "new", "hm"):
            cell = cells.setdefault((row["method"], row["shots"]), {"method": row["method"], "shots": row["shots"]})
            cell[f"{row['split']}_mean"] = row["accuracy_mean"]
            cell[f"{row['split']}_std"] = row["accuracy_std"]
    return [{column: cell.get(column) for column in BASE_NEW_COLUMNS} for cell in cells.values()]


def mean_curves(histories: dict[tuple[int, int], Sequence[dict[str, str]]]) -> dict[int, list[dict[str, float]]]:
    """Per shot budget, the per-epoch mean over seeds of train_loss and val_macro_f1.

    ``histories`` maps (shots, seed) to the rows of one history CSV. An epoch averages the seeds that reached
    it (early stopping may end some sooner); a blank cell is left out of its mean.
    """
    per_epoch: dict[int, dict[int, dict[str, list[float]]]] = {}
    for (shots, _seed), rows in histories.items():
        for row in rows:
            epoch = per_epoch.setdefault(shots, {}).setdefault(
                int(float(row["epoch"])), {"train_loss": [], "val_macro_f1": []}
            )
            for column in epoch:
                if row.get(column, "") not in ("", None):
                    epoch[column].append(float(row[column]))
    return {
        shots: [
            {"epoch": e, **{c: (sum(v) / len(v) if v else math.nan) for c, v in values.items()}}
            for e, values in sorted(epochs.items())
        ]
        for shots, epochs in sorted(per_epoch.items())
    }


def read_histories(
    layout: RunLayout, summary: Sequence[dict[str, str]], method: str
) -> dict[tuple[int, int], list[dict[str, str]]]:
    """The history CSVs of ``method``'s units in summary.csv (stale files of other budgets are ignored)."""
    histories = {}
    for shots, seed in sorted({(int(r["shots"]), int(r["seed"])) for r in summary if r["method"] == method}):
        path = layout.results / "history" / method / f"shot_{shots}-seed_{seed}.csv"
        if path.is_file():
            histories[(shots, seed)] = read_csv(path)
    return histories


def read_accuracy_table(path: Path) -> list[dict[str, Any]]:
    """accuracy_table.csv back as typed rows (the report and the plots read the file, not a recomputation)."""
    return [
        {
            "method": r["method"],
            "shots": int(r["shots"]),
            "split": r["split"],
            "n_seeds": int(r["n_seeds"]),
            "n_test": int(r["n_test"]) if r.get("n_test") else None,
            **{c: _number(r.get(c)) for c in ACCURACY_COLUMNS[5:]},
        }
        for r in read_csv(path)
    ]


def find_row(accuracy: Sequence[dict[str, Any]], method: str, shots: int, split: str) -> dict[str, Any] | None:
    return next((r for r in accuracy if (r["method"], r["shots"], r["split"]) == (method, shots, split)), None)


def metric_interval(
    accuracy: Sequence[dict[str, Any]], row: dict[str, Any], metric: str, level: float = 0.95
) -> tuple[float, float] | None:
    """The ``level`` interval of ``row``'s mean ``metric`` over its split's test images (Wilson; the seeds'
    spread is the std beside it in the tables). On hm, the harmonic mean of the ends of the base and new
    intervals at half the miss rate each: hm rises with both sides, so when both cover (probability at least
    ``level``, Bonferroni) it covers. None where the test size or a side is unknown."""
    if row["split"] == "hm":
        sides = [find_row(accuracy, row["method"], row["shots"], s) for s in ("base", "new")]
        ends = [metric_interval(accuracy, s, metric, 1 - (1 - level) / 2) if s else None for s in sides]
        if ends[0] is None or ends[1] is None:
            return None
        return float(harmonic_mean(ends[0][0], ends[1][0])), float(harmonic_mean(ends[0][1], ends[1][1]))
    mean, n = row.get(f"{metric}_mean"), row.get("n_test")
    return wilson_interval(mean * n, n, level) if mean is not None and n else None


def constant_baseline(accuracy: Sequence[dict[str, Any]], split: str, metric: str) -> float | None:
    """What always answering the majority class scores on ``split``: its accuracy, or chance for balanced
    accuracy (every class but one has recall 0); on hm, the harmonic mean of base's and new's."""
    if split == "hm":
        sides = [constant_baseline(accuracy, s, metric) for s in ("base", "new")]
        return float(harmonic_mean(sides[0], sides[1])) if sides[0] is not None and sides[1] is not None else None
    row = next((r for r in accuracy if r["split"] == split and r.get("majority") is not None), None)
    if row is None:
        return None
    return float(row["majority"] if metric == "accuracy" else row["chance"])


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def _write(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    write_csv(path, columns, ([_cell(row[c]) for c in columns] for row in rows))


def write_aggregates(layout: RunLayout) -> dict[str, Path]:
    """Write the aggregate tables from summary.csv; returns {name: path} of what was written.

    A base_new.csv from an earlier run in another mode is removed, so the folder mirrors summary.csv.
    """
    summary = read_csv(layout.summary)
    per_class = layout.results / "per_class.csv"
    accuracy = accuracy_table(summary, class_supports(read_csv(per_class)) if per_class.is_file() else None)
    written = {
        "accuracy_table": layout.aggregate / "accuracy_table.csv",
        "trainable_params": layout.aggregate / "trainable_params.csv",
    }
    _write(written["accuracy_table"], ACCURACY_COLUMNS, accuracy)
    _write(written["trainable_params"], PARAMS_COLUMNS, trainable_params(summary))
    base_new = base_new_table(accuracy)
    base_new_path = layout.aggregate / "base_new.csv"
    if base_new:
        _write(base_new_path, BASE_NEW_COLUMNS, base_new)
        written["base_new"] = base_new_path
    else:
        base_new_path.unlink(missing_ok=True)
    return written
