"""The report's first screen: the answer in at most three plain sentences, the headline figure, and a
leaderboard of one row per method, all from the one ``Answer`` (``fewclip.report.answer``) and the accuracy
table, on the answer's split and metric. The statistics behind them are in the sections below it.
"""

from __future__ import annotations

from typing import Any, Sequence

from fewclip.report.aggregate import find_row, metric_interval
from fewclip.report.answer import (
    METRIC_NAMES,
    SPLIT_NAMES,
    Answer,
    UnitKey,
    and_list,
    compare,
    p_text,
    significantly_better,
)
from fewclip.report.evidence import Evidence
from fewclip.report.figures import shot_free_methods
from fewclip.report.html_kit import esc, table


def unit_train_seconds(summary: Sequence[dict[str, str]]) -> dict[UnitKey, float]:
    """(method, shots) -> mean train time over its seeds, from summary.csv (one row per split repeats it)."""
    seen: dict[UnitKey, dict[str, float]] = {}
    for row in summary:
        if row.get("train_seconds"):
            seen.setdefault((row["method"], int(row["shots"])), {})[row["seed"]] = float(row["train_seconds"])
    return {key: sum(by_seed.values()) / len(by_seed) for key, by_seed in seen.items()}


def pct1(value: float) -> str:
    return f"{100 * value:.1f}%"


def points(difference: float) -> str:
    return f"{100 * difference:+.1f} points"


def interval_text(interval: tuple[float, float] | None) -> str:
    return f"{100 * interval[0]:.1f}–{100 * interval[1]:.1f}%" if interval else "interval unknown"


def zero_shot_method(accuracy: Sequence[dict[str, Any]]) -> str | None:
    """The baseline the gains are counted from: the method called zero_shot, else the first shot-free one."""
    free = shot_free_methods(accuracy)
    return "zero_shot" if "zero_shot" in free else (free[0] if free else None)


def best_rows(accuracy: Sequence[dict[str, Any]], split: str, metric: str) -> list[dict[str, Any]]:
    """Each method's best budget on ``split`` (highest mean; fewer shots on a tie), best first."""
    best: dict[str, dict[str, Any]] = {}
    for row in accuracy:
        if row["split"] != split or row.get(f"{metric}_mean") is None:
            continue
        held = best.get(row["method"])
        if held is None or row[f"{metric}_mean"] > held[f"{metric}_mean"]:
            best[row["method"]] = row
    return sorted(best.values(), key=lambda r: -r[f"{metric}_mean"])


def leaderboard(
    answer: Answer,
    accuracy: Sequence[dict[str, Any]],
    evidence: Evidence,
    params: dict[UnitKey, int],
    train_seconds: dict[UnitKey, float],
) -> list[dict[str, Any]]:
    """One row per method at its best budget on the answer's split, best mean first: the mean and its 95%
    interval, the gain over zero-shot, trainable parameters, train time, and the paired test of the top row
    against it (so rows the test cannot separate from the top say so)."""
    split, metric = answer.split, answer.metric
    if split is None:
        return []
    rows = best_rows(accuracy, split, metric)
    baseline = zero_shot_method(accuracy)
    zero = find_row(accuracy, baseline, 0, split) if baseline else None
    rec = answer.recommendation or {}
    board = []
    for rank, row in enumerate(rows):
        key = (row["method"], row["shots"])
        test = compare(evidence, rows[0], row, split, metric) if rank else None
        board.append(
            {
                "method": row["method"],
                "shots": row["shots"],
                "mean": row[f"{metric}_mean"],
                "interval": metric_interval(accuracy, row, metric),
                "n_seeds": row["n_seeds"],
                "gain": None if zero is None or row is zero else row[f"{metric}_mean"] - zero[f"{metric}_mean"],
                "trainable_params": params.get(key),
                "train_seconds": train_seconds.get(key),
                "vs_top": None if test is None else {"difference": test.difference, "p_value": test.p_value},
                "below_top": significantly_better(test, answer.alpha),
                "recommended": (rec.get("method"), rec.get("shots")) == key,
            }
        )
    return board


def plain_answer(answer: Answer, accuracy: Sequence[dict[str, Any]], evidence: Evidence) -> list[str]:
    """At most three short sentences: what the recommended head reaches and its gain over zero-shot (with the
    paired test), whether more shots help significantly, and who the test cannot separate at the largest budget."""
    rec, split, metric = answer.recommendation, answer.split, answer.metric
    if rec is None or split is None:
        return [answer.headline]
    name, where = METRIC_NAMES[metric], SPLIT_NAMES.get(split, split)
    chosen = find_row(accuracy, rec["method"], rec["shots"], split)
    assert chosen is not None  # the recommendation is one of the table's rows
    size = f"{answer.n_images} test images" if answer.n_images else "the test images"
    reach = (
        f"{rec['method']} reaches {pct1(chosen[f'{metric}_mean'])} {name} on the {where} "
        f"(95% interval {interval_text(metric_interval(accuracy, chosen, metric))}, {size})"
    )
    opening = (
        f"With {rec['shots']} labelled image{'s' if rec['shots'] != 1 else ''} per class, "
        if rec["shots"]
        else "With no labelled image, "
    )
    baseline = zero_shot_method(accuracy)
    zero = find_row(accuracy, baseline, 0, split) if baseline else None
    if zero is not None and zero is not chosen:
        test = compare(evidence, chosen, zero, split, metric)
        gain = f"{points(chosen[f'{metric}_mean'] - zero[f'{metric}_mean'])} over {baseline}"
        verdict = "" if test is None else (", " + p_text(test.p_value))
        if test is not None and not significantly_better(test, answer.alpha):
            verdict += ", not a significant gain"
        reach += f", {gain}{verdict}"
    sentences = [opening + reach + "."]
    verdicts = answer.primary()
    top = max(verdicts, key=lambda v: v.shots) if verdicts else None
    if top is not None and top.best is not None and any(v.shots < top.shots for v in verdicts):
        best = top.best
        if rec["shots"] == top.shots:
            sentences.append(
                f"Fewer shots do worse: no cheaper head is statistically as good (paired test, alpha = {answer.alpha})."
            )
        elif (best["method"], best["shots"]) == (rec["method"], rec["shots"]):
            sentences.append(f"No head trained on up to {top.shots} shots has a higher mean.")
        else:
            test = compare(evidence, best, chosen, split, metric)
            tested = f" ({p_text(test.p_value)})" if test is not None else ""
            sentences.append(
                f"More shots do not help significantly on these {size}: the best at {top.shots} shots, "
                f"{best['method']} with {pct1(best[f'{metric}_mean'])}, is not significantly higher{tested}."
            )
    if top is not None and top.best is not None and len(top.ranked) > 1:
        tied = [r["method"] for r in top.indistinguishable()]
        sentences.append(
            f"At {top.shots} shots, {top.winner} is significantly better than every other head."
            if top.winner is not None
            else f"At {top.shots} shots, the test cannot separate {and_list(tied)}."
            if len(tied) > 1
            else ""
        )
    return [s for s in sentences if s][:3]


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 0.1:
        return f"{seconds:.2f} s"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def leaderboard_html(answer: Answer, colours: dict[str, str]) -> str:
    """The leaderboard table (``#leaderboard``), each method with its figure colour, the recommended row marked."""
    metric = METRIC_NAMES[answer.metric]

    def vs_top(row: dict[str, Any]) -> str:
        if row["vs_top"] is None:
            return "top" if row is answer.leaderboard[0] else "not tested"
        p = p_text(row["vs_top"]["p_value"])
        return f"below ({p})" if row["below_top"] else f"not separable ({p})"

    rows = [
        [
            f'<span class="swatch" style="background:{esc(colours.get(r["method"], "#999"))}"></span>{esc(r["method"])}'
            + (' <b class="winner">recommended</b>' if r["recommended"] else ""),
            "zero-shot" if r["shots"] == 0 else esc(r["shots"]),
            f'<b>{pct1(r["mean"])}</b> <span class="note">{esc(interval_text(r["interval"]))}</span>',
            "—" if r["gain"] is None else esc(points(r["gain"]).replace(" points", "")),
            "—" if r["trainable_params"] is None else f"{r['trainable_params']:,}",
            esc(seconds_text(r["train_seconds"])),
            esc(vs_top(r)),
        ]
        for r in answer.leaderboard
    ]
    header = [
        "method",
        "best budget (shots)",
        f"{metric} (95% interval)",
        "vs zero-shot (points)",
        "trainable params",
        "train time",
        "paired test vs the top",
    ]
    return table(header, rows, "leaderboard", (0, 6), element_id="leaderboard")


def absent_note(answer: Answer, methods: Sequence[str]) -> str:
    """Which methods the leaderboard lacks (no result on its split: a linear probe has no new classes, so no hm)."""
    ranked = {r["method"] for r in answer.leaderboard}
    absent = [m for m in methods if m not in ranked]
    if not absent or answer.split is None:
        return ""
    where = SPLIT_NAMES.get(answer.split, answer.split)
    return f'<p class="note">No result on the {esc(where)}, so not ranked: {esc(", ".join(absent))} (see below).</p>'


def first_screen_html(answer: Answer, figure: str, colours: dict[str, str]) -> str:
    """The answer, the headline figure (``figure``: its <img> or a note) and the leaderboard, with the methods
    that have no result on the answer's split named under it (``colours`` holds every method of the run)."""
    sentences = "".join(f"<p>{esc(s)}</p>" for s in answer.plain)
    where = SPLIT_NAMES.get(answer.split or "", answer.split or "")
    caption = (
        f"{METRIC_NAMES[answer.metric].capitalize()} on the {where} against labelled images per class: mean over seeds "
        f"with its 95% interval over the {answer.n_images or 'unknown number of'} test images; one panel per trained "
        "method, the others in grey behind it."
    )
    return (
        f'<section id="glance"><div id="answer">{sentences}</div>'
        f'<figure id="headline-figure">{figure}<figcaption class="note">{esc(caption)}</figcaption></figure>'
        + (leaderboard_html(answer, colours) if answer.leaderboard else "")
        + absent_note(answer, list(colours))
        + "</section>"
    )
