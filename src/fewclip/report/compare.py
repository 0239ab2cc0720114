"""``fewclip compare RUN_DIR...``: ``compare.csv`` and ``compare.html`` across finished runs, written from the tables
of ``compare_tables`` (what they hold and how they are computed) and the page of ``compare_html``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from fewclip.fileio import atomic_write_text, write_csv
from fewclip.report.compare_html import compare_page
from fewclip.report.compare_tables import CSV_COLUMNS, CompareError, build_tables, csv_rows


def write_compare(run_dirs: Sequence[Path | str], out: Path | str) -> dict[str, Path]:
    """Write ``compare.csv`` and ``compare.html`` under ``out``; returns their paths."""
    tables = build_tables(run_dirs)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"csv": folder / "compare.csv", "html": folder / "compare.html"}
    write_csv(written["csv"], CSV_COLUMNS, csv_rows(tables))
    atomic_write_text(written["html"], compare_page(tables))
    return written


def compare_command(run_dirs: Sequence[str], out: str) -> int:
    """``fewclip compare``: exit 0 with both files written; 2 when a run cannot be compared or ``out`` not written."""
    try:
        written = write_compare(run_dirs, out)
    except CompareError as err:
        print(f"fewclip: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(
            f"fewclip: error: --out {out}: could not write the comparison ({err.strerror or err}); choose a "
            "writable folder",
            file=sys.stderr,
        )
        return 2
    print(f"table: {written['csv']}")
    print(f"page: {written['html']}")
    return 0
