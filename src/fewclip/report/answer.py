"""The report's opening: which method wins at which shot budget, in plain sentences (text, not HTML).

Everything here reads rows of accuracy_table.csv (``aggregate.read_accuracy_table``); shot-free methods
(zero-shot) are the baseline every budget is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .aggregate import split_key

SPLIT_NAMES = {"test": "test split", "base": "base classes", "new": "new classes",
               "hm": "harmonic mean of base and new"}


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def points(difference: float) -> str:
    return f"{100 * abs(difference):.2f} points"


def gap(a: dict[str, Any], b: dict[str, Any]) -> float:
    """Accuracy of ``a`` minus ``b`` at the precision the report prints (0 when they print the same)."""
    return round(100 * a["accuracy_mean"], 2) / 100 - round(100 * b["accuracy_mean"], 2) / 100


def relation(lead: float) -> str:
    """``8.33 points above`` / ``level with`` / ``2.10 points below``."""
    return "level with" if lead == 0 else f"{points(lead)} {'above' if lead > 0 else 'below'}"


def budgets_text(shots: Sequence[int]) -> str:
    return f"{', '.join(map(str, shots))} shot" + ("" if list(shots) == [1] else "s")


def seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Verdict:
    """The ranking of the few-shot methods at one (split, shots), best first, and the shot-free baseline."""

    split: str
    shots: int
    ranked: list[dict[str, Any]]
    baseline: dict[str, Any] | None

    @property
    def winner(self) -> dict[str, Any] | None:
        return self.ranked[0] if self.ranked else None


def verdicts(accuracy: Sequence[dict[str, Any]], budgets: Sequence[int]) -> list[Verdict]:
    """One verdict per split present and per shot budget (those asked for and those with results)."""
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in accuracy))}
    shot_free = {r["method"] for r in accuracy} - {r["method"] for r in accuracy if r["shots"] > 0}
    out = []
    for split in sorted({r["split"] for r in accuracy}, key=split_key):
        rows = [r for r in accuracy if r["split"] == split]
        baselines = sorted((r for r in rows if r["method"] in shot_free), key=lambda r: -r["accuracy_mean"])
        for shots in sorted(set(budgets) | {r["shots"] for r in rows if r["shots"] > 0}):
            ranked = sorted((r for r in rows if r["shots"] == shots and r["method"] not in shot_free),
                            key=lambda r: (-r["accuracy_mean"], order[r["method"]]))
            out.append(Verdict(split, shots, ranked, baselines[0] if baselines else None))
    return out


def leaders(verdict: Verdict) -> list[str]:
    """The methods tied for the best mean accuracy at the printed precision (usually one)."""
    best = verdict.winner
    return [r["method"] for r in verdict.ranked if best is not None and gap(best, r) == 0]


def shots_text(shots: int) -> str:
    return budgets_text([shots])


def sentence(verdict: Verdict) -> str:
    """``At 2 shots, linear_probe has the best mean accuracy, 47.22% ± 11.79 (2 seeds), ...``."""
    best = verdict.winner
    if best is None:
        return f"At {shots_text(verdict.shots)}: no results (see what is missing below)."
    tied = leaders(verdict)[1:]
    score = f"{pct(best['accuracy_mean'])} ± {100 * best['accuracy_std']:.2f} ({seeds(best['n_seeds'])})"
    if tied:
        text = f"At {shots_text(verdict.shots)}, {' and '.join([best['method'], *tied])} tie for the best mean accuracy, {score}"
    else:
        text = f"At {shots_text(verdict.shots)}, {best['method']} has the best mean accuracy, {score}"
    rest = verdict.ranked[1 + len(tied):]
    if rest:
        text += f", {points(gap(best, rest[0]))} ahead of {rest[0]['method']} ({pct(rest[0]['accuracy_mean'])})"
    elif len(verdict.ranked) == 1:
        text += ", the only trained method with results at this budget"
    base = verdict.baseline
    if base is not None:
        text += f", {relation(gap(best, base))} {base['method']} ({pct(base['accuracy_mean'])})"
    return text + "."


def primary_split(accuracy: Sequence[dict[str, Any]]) -> str | None:
    """The split the headline speaks of: test, else the harmonic mean of base and new, else the first."""
    splits = sorted({r["split"] for r in accuracy}, key=split_key)
    for preferred in ("test", "hm"):
        if preferred in splits:
            return preferred
    return splits[0] if splits else None


def headline(all_verdicts: Sequence[Verdict], accuracy: Sequence[dict[str, Any]]) -> str:
    """One line: who wins at which budgets on the primary split, the best result, and the baseline."""
    split = primary_split(accuracy)
    if split is None:
        return "No results yet: summary.csv has no rows."
    mine = [v for v in all_verdicts if v.split == split and v.winner is not None]
    where = SPLIT_NAMES.get(split, split)
    if not mine:
        base = next((r for r in accuracy if r["split"] == split), None)
        return f"Only {base['method']} has results: {pct(base['accuracy_mean'])} on the {where}." if base else "No results."
    wins: dict[str, list[int]] = {}
    for v in mine:
        wins.setdefault(" and ".join(leaders(v)), []).append(v.shots)
    if len(wins) == 1:
        method = next(iter(wins))
        verb = "tie for" if " and " in method else "has"
        text = f"{method} {verb} the best mean accuracy at every shot budget ({', '.join(map(str, wins[method]))}) on the {where}"
    else:
        parts = [f"{m} at {budgets_text(k)}" for m, k in wins.items()]
        text = f"On the {where}, the best mean accuracy goes to " + "; ".join(parts)
    top = max(mine, key=lambda v: v.winner["accuracy_mean"])  # type: ignore[index]
    text += f". Best: {' and '.join(leaders(top))} at {shots_text(top.shots)}, {pct(top.winner['accuracy_mean'])}"  # type: ignore[index]
    base = top.baseline
    if base is not None:
        text += f", {relation(gap(top.winner, base))} {base['method']} ({pct(base['accuracy_mean'])})"  # type: ignore[arg-type]
        beaten = [v.shots for v in mine if v.baseline and gap(v.winner, v.baseline) < 0]  # type: ignore[arg-type]
        if beaten:
            text += f"; {base['method']} beats every trained method at {budgets_text(beaten)}"
    return text + "."
