"""What a run asked for but summary.csv lacks: the config's methods x shots x seeds (and evaluation splits)."""

from __future__ import annotations

from typing import Sequence

from fewclip.runner.config import Config
from fewclip.data.subsample import eval_views
from fewclip.runner.config import split_variant
from fewclip.heads import HEADS
from fewclip.runner.run_context import head_class, units


def expected_splits(config: Config) -> list[str]:
    """The summary's split values a full run writes: test; or base, new and hm in the base-to-new mode."""
    splits = [view.split for view in eval_views(2, config.splits.subsample)]  # split names do not depend on n
    return splits + (["hm"] if "base" in splits and "new" in splits else [])


def _seeds(seeds: Sequence[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, sorted(seeds)))


def missing_units(config: Config, summary: Sequence[dict[str, str]]) -> list[str]:
    """One line per method with units (method, shots, seed) the config asks for and summary.csv lacks."""
    present = {(r["method"], int(r["shots"]), int(r["seed"])) for r in summary}
    lines = []
    for method in config.methods:
        expected = [u for u in units(config) if u[0] == method]
        absent = [u for u in expected if u not in present]
        if not absent:
            continue
        if len(absent) == len(expected):
            lines.append(f"{method}: no results at all ({len(expected)} unit{'s' * (len(expected) != 1)} expected)")
            continue
        by_shots: dict[int, list[int]] = {}
        for _, shots, seed in absent:
            by_shots.setdefault(shots, []).append(seed)
        parts = [f"{shots} shots ({_seeds(s)})" for shots, s in sorted(by_shots.items())]
        lines.append(f"{method}: no results for " + "; ".join(parts))
    return lines


def missing_splits(config: Config, summary: Sequence[dict[str, str]]) -> tuple[list[str], list[str]]:
    """Units that have rows but not for every evaluation split: (missing, by design).

    By design: a head without ``transfer`` (a linear probe) cannot name the new classes, so it has no
    new or hm rows; anything else absent is missing.
    """
    splits = expected_splits(config)
    rows: dict[tuple[str, int, int], set[str]] = {}
    for r in summary:
        rows.setdefault((r["method"], int(r["shots"]), int(r["seed"])), set()).add(r["split"])
    missing, by_design = [], []
    for method in dict.fromkeys(m for m, _, _ in rows):
        method_units = [u for u in rows if u[0] == method]
        lacking = [s for s in splits if any(s not in rows[u] for u in method_units)]
        closed = split_variant(method)[0] in HEADS and not head_class(method).transfers
        designed = [s for s in lacking if closed and s in ("new", "hm")]
        absent = [s for s in lacking if s not in designed]
        for found, target, why in (
            (absent, missing, ""),
            (designed, by_design, "; it cannot classify classes it was not trained on"),
        ):
            if found:
                n = sum(any(s not in rows[u] for s in found) for u in method_units)
                target.append(f"{method}: no {', '.join(found)} rows for {n} of {len(method_units)} units{why}")
    return missing, by_design
