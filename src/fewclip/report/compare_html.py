"""``compare.html``: the comparison tables as one self-contained page (inline CSS, no script, no external
resource); every piece of text from a run (dataset, method, paths, backbone) is escaped."""

from __future__ import annotations

from typing import Sequence

from fewclip.report.compare_tables import Cell, Table, reference_gap
from fewclip.report.html_kit import CSS, esc, table

SPLIT_LABELS = {"test": "", "base": "base", "new": "new", "hm": "HM"}
PROTOCOL_TITLES = {
    "few_shot": "Few-shot classification (all classes)",
    "base2new": "Base-to-new generalisation",
    "domain_generalisation": "Domain generalisation (source and targets)",
    "cross_dataset": "Cross-dataset transfer (source and targets)",
}
TARGET_NOTE = (
    "Accuracy in percent, mean ± sample standard deviation over seeds: the heads trained on the first column's "
    "dataset (source), scored on each dataset.eval_on target. {average} is the mean over the targets only. A head "
    'that cannot classify a target\'s new class names says "cannot transfer".'
)
COMPARE_CSS = (
    CSS
    + """
.ref { color: #6a3d9a; font-size: .85em; }
.gap { color: #555; font-size: .85em; }
.gap-beyond { color: #b2182b; font-size: .85em; font-weight: 600; }
body { max-width: 1400px; }
"""
)

METHOD_NOTE = (
    "Accuracy in percent on each run's test set, mean ± sample standard deviation over seeds (the seed count in "
    "brackets). HM is the harmonic mean of the mean base and the mean new accuracy, as CoCoOp's Table 1 computes "
    "it, not the mean of per-seed harmonic means, so it has no ± std. {average} is the unweighted mean over the "
    "table's datasets of the per-dataset means (for HM: the harmonic mean of the averaged base and new), shown "
    "only for rows with a value in every dataset. A published number (purple, numbered citation) appears beside "
    "a value only when the run read the dataset in CoOp's layout, drew CoOp's few-shot sets (splits.sampler: "
    "coop) and used the backbone, method and shot budget the paper reports; after it, how that number's "
    "hyper-parameters were chosen. The selection column says how each method's paper chose them (validation-free, "
    "a few-shot validation set, the full validation split, or the test set in the released code) and what "
    "fewclip's run chose on (never the test set)."
)


def cell_html(cell: Cell | None, citations: dict[str, int], note: str | None = None) -> str:
    if cell is None:
        return esc(note) if note else "—"
    value = f"{100 * cell.mean:.2f}" + ("" if cell.std is None else f" ± {100 * cell.std:.2f}")
    parts = [
        f'<span class="acc" data-dataset="{esc(cell.dataset)}" data-method="{esc(cell.method)}" '
        f'data-shots="{cell.shots}" data-split="{esc(cell.split)}">{value}</span>'
    ]
    if cell.n_seeds is not None:
        parts.append(f' <span class="note">({cell.n_seeds} seed{"s" * (cell.n_seeds != 1)})</span>')
    if cell.reference is not None:
        number = citations.setdefault(cell.reference.citation, len(citations) + 1)
        parts.append(
            f'<br><span class="ref" data-dataset="{esc(cell.dataset)}" data-method="{esc(cell.method)}" '
            f'data-shots="{cell.shots}" data-split="{esc(cell.split)}">paper {cell.reference.value:.2f} '
            f"[{number}], {esc(cell.reference.selection)}</span>"
        )
        gap, beyond = reference_gap(cell) or (0.0, None)
        flag = {True: "gap-beyond", False: "gap", None: "gap"}[beyond]
        why = {True: ": beyond the seeds' spread", False: ", within the seeds' spread", None: ""}[beyond]
        parts.append(f'<br><span class="{flag}">gap {gap:+.2f}{why}</span>')
    return "".join(parts)


def table_section(tab: Table, citations: dict[str, int]) -> str:
    title = PROTOCOL_TITLES.get(tab.protocol, f"Few-shot classification ({tab.protocol.replace('_', ' ')})")
    columns = [*tab.datasets, tab.average] if len(tab.datasets) > 1 else list(tab.datasets)
    with_split = any(split != "test" for _, _, split in tab.rows())
    is_target_table = tab.protocol in ("domain_generalisation", "cross_dataset")
    names = [f"{column} (source)" if is_target_table and i == 0 else column for i, column in enumerate(columns)]
    header = ["method", "selection", "shots", *(["split"] if with_split else []), *map(esc, names)]
    rows = []
    for method, shots, split in tab.rows():
        row = [esc(method), esc(tab.selection(method)), "0 (zero-shot)" if shots == 0 else str(shots)]
        if with_split:
            row.append(esc(SPLIT_LABELS.get(split, split)))
        row += [
            cell_html(tab.cell(dataset, method, shots, split), citations, tab.notes.get((dataset, method)))
            for dataset in columns
        ]
        rows.append(row)
    text_columns = (0, 1, 3) if with_split else (0, 1)
    return (
        f"<h2>{esc(title)}: {esc(tab.backbone)}</h2>"
        f'<p class="note">{esc((TARGET_NOTE if is_target_table else METHOD_NOTE).format(average=tab.average))}</p>'
        + table(header, rows, f"compare {esc(tab.protocol)}", text_columns)
    )


def runs_section(tables: Sequence[Table]) -> str:
    rows = []
    listed = set()
    for tab in tables:
        for run in tab.runs:
            if run.root in listed:  # a run with eval_on targets is also in its target tables
                continue
            listed.add(run.root)
            follows = (
                f"yes ({run.paper_backbone})"
                if run.paper_backbone
                else "no (needs dataset.source: coop, splits.sampler: coop and a backbone a paper used)"
            )
            rows.append([esc(run.root), esc(run.dataset), esc(run.protocol), esc(run.backbone), esc(follows)])
    return "<h2>Runs</h2>" + table(
        ["run directory", "dataset", "protocol", "backbone", "papers' data protocol"], rows, "runs", (0, 1, 2, 3, 4)
    )


def citations_section(citations: dict[str, int]) -> str:
    if not citations:
        return (
            '<p class="note">No run matched a published number (see the last column of Runs above; the shipped '
            "numbers are in fewclip/report/published.csv).</p>"
        )
    items = "".join(f"<li>[{number}] {esc(citation)}</li>" for citation, number in citations.items())
    return f"<h2>Published numbers</h2><ul>{items}</ul>"


def compare_page(tables: Sequence[Table]) -> str:
    citations: dict[str, int] = {}
    sections = "".join(table_section(tab, citations) for tab in tables)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>fewclip compare</title>'
        f"<style>{COMPARE_CSS}</style></head><body><h1>fewclip compare</h1>{sections}"
        f"{citations_section(citations)}{runs_section(tables)}</body></html>\n"
    )
