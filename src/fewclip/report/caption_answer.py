"""Which captioning method wins, and the numbers behind it (``results/caption_answer.json``).

The methods table is mean ± sample std over seeds of the rows of ``results/caption_summary.csv``, read
as written. The winner rule: the method with the highest mean CIDEr is named the winner only if a paired
sign-flip test (``stats.paired_scores_test``) on per-image CIDEr finds it better than *every* other
method, the ``untrained`` baseline included, at ``ALPHA``. Per-image CIDEr is computed from each
predictions CSV (caption and references per image), averaged over a method's seeds per image; its mean
over images is the corpus CIDEr, so the test's statistic is exactly the difference in the table. With
one seed the test is over images alone. Otherwise the leading methods are called indistinguishable on
this test set, with its size.

Each method's CIDEr and CLIPScore also get a 95% interval over the test images (``stats.mean_interval`` on the
seed-averaged per-image scores), and the first screen's plain sentences (``plain``) are written beside the
headline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fewclip.caption.metrics import text_scores
from fewclip.fileio import atomic_write_text, read_csv
from fewclip.report.answer import and_list
from fewclip.report.answer import p_text as p_words
from fewclip.runner.caption_config import BASELINE
from fewclip.runner.layout import REFERENCE_SEPARATOR, CaptionLayout
from fewclip.stats import PairedTest, mean_interval, mean_std, paired_scores_test

ALPHA = 0.05
UNTRAINED = "the untrained decoder"
METRICS = ("cider", "clipscore", "refclipscore", "bleu4")
METRIC_NAMES = {"cider": "CIDEr", "clipscore": "CLIPScore", "refclipscore": "RefCLIPScore", "bleu4": "BLEU-4"}
INTERVAL_METRICS = ("cider", "clipscore")  # the per-image scores the predictions CSVs give
Interval = tuple[float, float]


def optional_float(text: str | None) -> float | None:
    return float(text) if text not in (None, "") else None


@dataclass(frozen=True)
class MethodRow:
    """One method on one split: mean and sample std over its seeds of every summary metric
    (None where the summary has no value), its seeds, trainable parameters and test size."""

    method: str
    split: str
    seeds: tuple[int, ...]
    mean: dict[str, float | None]
    std: dict[str, float | None]
    trainable_params: int
    n_eval: int


def method_rows(summary: Sequence[dict[str, str]], split: str) -> list[MethodRow]:
    """The summary rows of ``split`` grouped by method: the baseline first, then in the file's order."""
    methods = list(dict.fromkeys(r["method"] for r in summary if r["split"] == split))
    methods.sort(key=lambda m: m != BASELINE)
    rows = []
    for method in methods:
        mine = sorted(
            (r for r in summary if r["split"] == split and r["method"] == method), key=lambda r: int(r["seed"])
        )
        mean: dict[str, float | None] = {}
        std: dict[str, float | None] = {}
        for column in (*METRICS, "train_seconds"):
            values = [v for v in (optional_float(r.get(column)) for r in mine) if v is not None]
            mean[column], std[column] = mean_std(values) if values else (None, None)
        rows.append(
            MethodRow(
                method,
                split,
                tuple(int(r["seed"]) for r in mine),
                mean,
                std,
                max(int(float(r["trainable_params"] or 0)) for r in mine),
                max(int(float(r["n_eval"] or 0)) for r in mine),
            )
        )
    return rows


def headline_split(summary: Sequence[dict[str, str]]) -> str | None:
    """The test split when the summary has it, else the first split it names."""
    splits = list(dict.fromkeys(r["split"] for r in summary))
    return "test" if "test" in splits else (splits[0] if splits else None)


def per_image_cider(predictions: Path) -> dict[str, float]:
    """Image -> CIDEr-D of its caption against its references (document frequencies over this file's images)."""
    rows = read_csv(predictions)
    references = {r["image"]: r["references"].split(REFERENCE_SEPARATOR) for r in rows}
    return text_scores(references, {r["image"]: r["caption"] for r in rows}).cider_per_image


def cider_matrix(layout: CaptionLayout, row: MethodRow) -> dict[int, dict[str, float]]:
    """Seed -> per-image CIDEr, for the seeds whose predictions CSV exists."""
    return {
        seed: per_image_cider(layout.predictions(row.method, seed, row.split))
        for seed in row.seeds
        if layout.predictions(row.method, seed, row.split).is_file()
    }


def clipscore_matrix(layout: CaptionLayout, row: MethodRow) -> dict[int, dict[str, float]]:
    """Seed -> per-image CLIPScore as the predictions CSVs hold it; a seed with an empty cell is left out."""
    found = {}
    for seed in row.seeds:
        path = layout.predictions(row.method, seed, row.split)
        if path.is_file():
            scores = {r["image"]: optional_float(r.get("clipscore")) for r in read_csv(path)}
            if scores and all(v is not None for v in scores.values()):
                found[seed] = {image: float(v) for image, v in scores.items() if v is not None}
    return found


def seed_mean(matrix: dict[int, dict[str, float]]) -> np.ndarray | None:
    """Per-image scores averaged over seeds, on the images every seed scored (None when no seed did)."""
    if not matrix:
        return None
    images = sorted(set.intersection(*(set(scores) for scores in matrix.values())))
    return np.array([[scores[i] for i in images] for scores in matrix.values()]).mean(axis=0) if images else None


def score_intervals(
    ciders: dict[int, dict[str, float]], clipscores: dict[int, dict[str, float]]
) -> dict[str, Interval | None]:
    """The 95% interval over test images of a method's seed-averaged per-image CIDEr and CLIPScore."""
    intervals: dict[str, Interval | None] = {}
    for metric, matrix in (("cider", ciders), ("clipscore", clipscores)):
        scores = seed_mean(matrix)
        intervals[metric] = mean_interval(scores) if scores is not None else None
    return intervals


@dataclass(frozen=True)
class Comparison:
    """The leader against one other method on their common images; ``test`` None when either lacks predictions."""

    other: str
    test: PairedTest | None


@dataclass
class CaptionAnswer:
    headline: str
    split: str | None
    rows: list[MethodRow]
    leader: str | None = None
    winner: str | None = None
    tied: list[str] = field(default_factory=list)  # methods the test does not separate from the leader
    comparisons: list[Comparison] = field(default_factory=list)
    n_images: int = 0
    alpha: float = ALPHA
    intervals: dict[str, dict[str, Interval | None]] = field(default_factory=dict)  # method -> metric -> interval
    plain: list[str] = field(default_factory=list)  # the first screen's sentences (``caption_first_screen``)

    def row(self, method: str) -> MethodRow:
        return next(r for r in self.rows if r.method == method)


def compare(
    ciders: dict[str, dict[int, dict[str, float]]], leader: MethodRow, others: Sequence[MethodRow]
) -> tuple[list[Comparison], int]:
    """Paired tests of the leader against each other method on the images both were scored on (``ciders``:
    method -> ``cider_matrix``)."""
    leader_scores = ciders[leader.method]
    comparisons, n_images = [], 0
    for other in others:
        other_scores = ciders[other.method]
        if not leader_scores or not other_scores:
            comparisons.append(Comparison(other.method, None))
            continue
        images = sorted(set.intersection(*(set(s) for s in [*leader_scores.values(), *other_scores.values()])))
        a = np.array([[scores[i] for i in images] for scores in leader_scores.values()])
        b = np.array([[scores[i] for i in images] for scores in other_scores.values()])
        comparisons.append(Comparison(other.method, paired_scores_test(a, b)))
        n_images = max(n_images, len(images))
    return comparisons, n_images


def build_caption_answer(layout: CaptionLayout, summary: Sequence[dict[str, str]]) -> CaptionAnswer:
    split = headline_split(summary)
    rows = method_rows(summary, split) if split else []
    scored = [r for r in rows if r.mean["cider"] is not None]
    if not scored:
        return CaptionAnswer("No captioning results with a CIDEr score yet.", split, rows)
    ciders = {r.method: cider_matrix(layout, r) for r in rows}
    intervals = {r.method: score_intervals(ciders[r.method], clipscore_matrix(layout, r)) for r in rows}
    leader = max(scored, key=lambda r: r.mean["cider"])  # type: ignore[arg-type,return-value]
    others = [r for r in scored if r is not leader]
    comparisons, n_images = compare(ciders, leader, others)
    separated = [c for c in comparisons if c.test is not None and c.test.difference > 0 and c.test.significant(ALPHA)]
    answer = CaptionAnswer(
        "", split, rows, leader.method, comparisons=comparisons, n_images=n_images or leader.n_eval, intervals=intervals
    )
    answer.winner = leader.method if len(separated) == len(comparisons) else None
    answer.tied = [leader.method] + [c.other for c in comparisons if c not in separated]
    answer.headline = headline(answer)
    answer.plain = plain_caption_answer(answer)
    return answer


def cider(answer: CaptionAnswer, method: str) -> str:
    return f"{answer.row(method).mean['cider']:.3f}"


def p_text(test: PairedTest | None) -> str:
    return "no per-image predictions to compare" if test is None else f"p = {test.p_value:.2g}"


def headline(answer: CaptionAnswer) -> str:
    """One sentence on the winner (or why there is none), and one on the untrained baseline."""
    assert answer.leader is not None
    leader, seeds = answer.row(answer.leader), len(answer.row(answer.leader).seeds)
    where = (
        f"{answer.n_images} {answer.split} images, {seeds} seed{'s' if seeds != 1 else ''}; paired sign-flip "
        f"test on per-image CIDEr, alpha = {answer.alpha}"
    )
    baseline = (
        f" The untrained decoder (fresh cross-attention, no tuning) scores {cider(answer, BASELINE)}."
        if BASELINE in {r.method for r in answer.rows} and answer.leader != BASELINE
        else ""
    )
    if not answer.comparisons:
        return f"Only {leader.method} was evaluated: CIDEr {cider(answer, leader.method)} ({where})."
    if answer.winner is not None:
        runner = max((c for c in answer.comparisons), key=lambda c: answer.row(c.other).mean["cider"] or 0.0)
        weakest = max(c.test.p_value for c in answer.comparisons if c.test is not None)
        return (
            f"{leader.method} captions best: CIDEr {cider(answer, leader.method)}, ahead of {runner.other} "
            f"({cider(answer, runner.other)}) and every other method (largest p = {weakest:.2g}; {where})." + baseline
        )
    unseparated = [c for c in answer.comparisons if c.other in answer.tied]
    against = ", ".join(f"{c.other} ({cider(answer, c.other)}; {p_text(c.test)})" for c in unseparated)
    return (
        f"{' and '.join(answer.tied)} are indistinguishable by CIDEr on this test set ({where}): "
        f"{leader.method} leads with {cider(answer, leader.method)}, but the test does not separate it from "
        f"{against}." + baseline
    )


def score(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def interval_text(interval: Interval | None) -> str:
    return "interval unknown" if interval is None else f"{interval[0]:.2f}–{interval[1]:.2f}"


def comparison(answer: CaptionAnswer, other: str) -> Comparison | None:
    return next((c for c in answer.comparisons if c.other == other), None)


def test_text(found: Comparison | None) -> str:
    return "no per-image predictions to compare" if found is None or found.test is None else p_words(found.test.p_value)


def plain_caption_answer(answer: CaptionAnswer) -> list[str]:
    """At most three short sentences: what the leading method scores (CIDEr with its interval and test size) and
    its gain over the untrained decoder with the paired test; whom the test cannot separate it from (or that it
    is ahead of every method); what CLIPScore, which reads no reference caption, says."""
    if answer.leader is None:
        return [answer.headline]
    leader = answer.row(answer.leader)
    intervals = answer.intervals.get(leader.method, {})
    reach = (
        f"CIDEr {score(leader.mean['cider'])} (95% interval {interval_text(intervals.get('cider'))}, "
        f"{answer.n_images} {answer.split} images)"
    )
    rows = {r.method: r for r in answer.rows}
    baseline = rows.get(BASELINE)
    if baseline is not None and baseline is not leader and baseline.mean["cider"] is not None:
        gain = (leader.mean["cider"] or 0.0) - baseline.mean["cider"]
        reach += f", {gain:+.2f} over {UNTRAINED} ({test_text(comparison(answer, BASELINE))})"
    sentences = [
        f"{leader.method} captions best: {reach}."
        if answer.winner is not None
        else f"{leader.method} leads with {reach}."
    ]
    trained_others = [c for c in answer.comparisons if c.other != BASELINE]
    if answer.winner is not None and trained_others:
        largest = max(c.test.p_value for c in answer.comparisons if c.test is not None)
        sentences.append(
            f"The paired test on per-image CIDEr puts it ahead of every other method (largest {p_words(largest)})."
        )
    elif answer.winner is None:
        tied = [
            f"{c} ({score(rows[c].mean['cider'])}, {test_text(comparison(answer, c))})"
            for c in answer.tied
            if c != leader.method
        ]
        if tied:
            sentences.append(f"The paired test on per-image CIDEr cannot separate it from {and_list(tied)}.")
    clip_rows = [r for r in answer.rows if r.mean["clipscore"] is not None]
    if clip_rows:
        top = max(clip_rows, key=lambda r: r.mean["clipscore"] or 0.0)
        said = (
            f"{top.method} {score(top.mean['clipscore'])} "
            f"(95% interval {interval_text(answer.intervals.get(top.method, {}).get('clipscore'))})"
        )
        if baseline is not None and baseline is not top and baseline.mean["clipscore"] is not None:
            said += f", {UNTRAINED} {score(baseline.mean['clipscore'])}"
        sentences.append(
            f"CLIPScore, which reads no reference caption, agrees: {said}."
            if top is leader
            else f"By CLIPScore, which reads no reference caption, {said}; {leader.method} has "
            f"{score(leader.mean['clipscore'])}."
        )
    return sentences[:3]


def answer_json(answer: CaptionAnswer) -> dict[str, Any]:
    return {
        "headline": answer.headline,
        "split": answer.split,
        "metric": "cider",
        "alpha": answer.alpha,
        "winner": answer.winner,
        "leader": answer.leader,
        "indistinguishable": answer.tied if not answer.winner else [],
        "n_images": answer.n_images,
        "plain": answer.plain,
        "methods": {
            r.method: {
                "seeds": list(r.seeds),
                "n_eval": r.n_eval,
                "trainable_params": r.trainable_params,
                **{f"{k}_mean": v for k, v in r.mean.items()},
                **{f"{k}_std": v for k, v in r.std.items()},
                **{f"{k}_interval": answer.intervals.get(r.method, {}).get(k) for k in INTERVAL_METRICS},
            }
            for r in answer.rows
        },
        "comparisons": [
            {"leader": answer.leader, "other": c.other, **(asdict(c.test) if c.test is not None else {"p_value": None})}
            for c in answer.comparisons
        ],
    }


def write_caption_answer(layout: CaptionLayout, summary: Sequence[dict[str, str]]) -> CaptionAnswer:
    answer = build_caption_answer(layout, summary)
    text = json.dumps(answer_json(answer), indent=2) + "\n"
    path = layout.answer
    if not (path.is_file() and path.read_text(encoding="utf-8") == text):  # a re-run changes nothing
        atomic_write_text(path, text)
    return answer
