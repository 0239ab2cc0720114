"""The domain-generalisation and cross-dataset tables of a run with ``dataset.eval_on`` targets.

One table per protocol (``fewclip.data.eval_targets``): rows are methods and shot budgets; columns are the source
(the trained dataset's own test split) and each target of that protocol, then the unweighted average over
the targets (as the papers' "Average" over target datasets), given only when every target has a value.
Values are accuracy mean ± sample std over seeds, read from ``aggregate/accuracy_table.csv``. A method
listed under ``cannot_transfer`` in ``results/targets.json`` shows "cannot transfer" instead of a number.

``aggregate/targets_table.csv`` holds the same cells, long: protocol, method, shots, dataset, role (source,
target or average), n_seeds, accuracy_mean, accuracy_std, note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from fewclip.fileio import write_csv
from fewclip.runner.layout import RunLayout
from fewclip.data.eval_targets import PROTOCOL_TITLES, read_targets
from fewclip.report.html_kit import esc, table

CANNOT_TRANSFER = "cannot transfer"
TABLE_COLUMNS = ("protocol", "method", "shots", "dataset", "role", "n_seeds", "accuracy_mean", "accuracy_std", "note")
AVERAGE = "Average (targets)"


@dataclass(frozen=True)
class ProtocolCell:
    """One cell: a mean ± std over seeds, or a note (``cannot transfer``) where the head has no number."""

    dataset: str
    role: str  # source | target | average
    mean: float | None
    std: float | None
    n_seeds: int | None
    note: str = ""


@dataclass(frozen=True)
class ProtocolTable:
    protocol: str
    source: str
    targets: list[str]
    rows: list[tuple[str, int, list[ProtocolCell]]]  # (method, shots, cells in column order)

    @property
    def columns(self) -> list[str]:
        return [self.source, *self.targets, AVERAGE]


def source_split(accuracy: Sequence[dict[str, Any]]) -> str:
    """The trained dataset's own split: test, or base under base-to-new."""
    splits = {r["split"] for r in accuracy}
    return "test" if "test" in splits or "base" not in splits else "base"


def protocol_tables(accuracy: Sequence[dict[str, Any]], entries: Sequence[dict[str, Any]]) -> list[ProtocolTable]:
    """One table per protocol among ``entries`` (``results/targets.json``), in the order they first appear."""
    by_key = {(r["method"], r["shots"], r["split"]): r for r in accuracy}
    own = source_split(accuracy)
    keys = list(dict.fromkeys((r["method"], r["shots"]) for r in accuracy if r["split"] == own))
    tables = []
    for protocol in dict.fromkeys(e["protocol"] for e in entries):
        chosen = [e for e in entries if e["protocol"] == protocol]
        rows = []
        for method, shots in keys:
            cells = [cell_of(by_key.get((method, shots, own)), chosen[0]["source"], "source")]
            for entry in chosen:
                if method in entry["cannot_transfer"]:
                    cells.append(ProtocolCell(entry["target"], "target", None, None, None, CANNOT_TRANSFER))
                else:
                    cells.append(cell_of(by_key.get((method, shots, entry["target"])), entry["target"], "target"))
            means = [c.mean for c in cells[1:]]
            average = sum(means) / len(means) if all(m is not None for m in means) else None  # type: ignore[misc]
            cells.append(ProtocolCell(AVERAGE, "average", average, None, None))
            rows.append((method, shots, cells))
        tables.append(ProtocolTable(protocol, chosen[0]["source"], [e["target"] for e in chosen], rows))
    return tables


def cell_of(row: dict[str, Any] | None, dataset: str, role: str) -> ProtocolCell:
    if row is None or row.get("accuracy_mean") is None:
        return ProtocolCell(dataset, role, None, None, None)
    return ProtocolCell(dataset, role, row["accuracy_mean"], row.get("accuracy_std"), row["n_seeds"])


def write_protocol_tables(layout: RunLayout, accuracy: Sequence[dict[str, Any]]) -> list[ProtocolTable]:
    """``aggregate/targets_table.csv`` for a run with targets (removed for one without); returns the tables."""
    path = layout.aggregate / "targets_table.csv"
    tables = protocol_tables(accuracy, read_targets(layout))
    if not tables:
        path.unlink(missing_ok=True)
        return []

    def number(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    write_csv(
        path,
        TABLE_COLUMNS,
        (
            [t.protocol, method, shots, c.dataset, c.role, c.n_seeds or "", number(c.mean), number(c.std), c.note]
            for t in tables
            for method, shots, cells in t.rows
            for c in cells
        ),
    )
    return tables


def cell_text(cell: ProtocolCell) -> str:
    if cell.note:
        return cell.note
    if cell.mean is None:
        return "—"
    return f"{100 * cell.mean:.2f}" + ("" if cell.std is None else f" ± {100 * cell.std:.2f}")


def protocols_html(tables: Sequence[ProtocolTable], selections: Mapping[str, str]) -> str:
    """The report's section: one HTML table per protocol; ``selections``: each method's selection label."""
    parts = [
        '<p class="note">Accuracy in percent, mean ± std over seeds: the heads trained on the source, scored '
        "on each dataset.eval_on target's test images. Domain generalisation uses the head's own logits at "
        "the target's classes; cross-dataset transfer needs a head that can classify new class names "
        f'(others show "{CANNOT_TRANSFER}"). {AVERAGE} is the mean over the targets.</p>'
    ]
    for tab in tables:
        header = ["method", "selection", "shots", f"{esc(tab.source)} (source)", *map(esc, tab.targets), AVERAGE]
        rows = [
            [
                esc(method),
                esc(selections.get(method, "")),
                "0 (zero-shot)" if shots == 0 else str(shots),
                *(
                    f'<span class="acc" data-dataset="{esc(c.dataset)}" data-method="{esc(method)}" data-shots="{shots}">'
                    f"{esc(cell_text(c))}</span>"
                    for c in cells
                ),
            ]
            for method, shots, cells in tab.rows
        ]
        parts.append(
            f"<h3>{esc(PROTOCOL_TITLES.get(tab.protocol, tab.protocol))}</h3>"
            + table(header, rows, f"protocol {esc(tab.protocol)}", (0, 1))
        )
    return "".join(parts)
