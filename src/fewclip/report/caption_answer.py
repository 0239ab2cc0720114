"""Which captioning method wins, and the numbers behind it (``results/caption_answer.json``).

The methods table is mean ± sample std over seeds of the rows of ``results/caption_summary.csv``, read
as written. The winner rule: the method with the highest mean CIDEr is named the winner only if a paired
sign-flip test (``stats.paired_scores_test``) on per-image CIDEr finds it better than *every* other
method, the ``untrained`` baseline included, at ``ALPHA``. Per-image CIDEr is computed from each
predictions CSV (caption and references per image), averaged over a method's seeds per image; its mean
over images is the corpus CIDEr, so the test's statistic is exactly the difference in the table. With
one seed the test is over images alone. Otherwise the leading methods are called indistinguishable on
this test set, with its size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fewclip.caption.metrics import text_scores
from fewclip.fileio import atomic_write_text, read_csv
from fewclip.runner.caption_config import BASELINE
from fewclip.runner.layout import REFERENCE_SEPARATOR, CaptionLayout
from fewclip.stats import PairedTest, mean_std, paired_scores_test

ALPHA = 0.05
METRICS = ("cider", "clipscore", "refclipscore", "bleu4")
METRIC_NAMES = {"cider": "CIDEr", "clipscore": "CLIPScore", "refclipscore": "RefCLIPScore", "bleu4": "BLEU-4"}


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

    def row(self, method: str) -> MethodRow:
        return next(r for r in self.rows if r.method == method)


def compare(layout: CaptionLayout, leader: MethodRow, others: Sequence[MethodRow]) -> tuple[list[Comparison], int]:
    """Paired tests of the leader against each other method on the images both were scored on."""
    leader_scores = cider_matrix(layout, leader)
    comparisons, n_images = [], 0
    for other in others:
        other_scores = cider_matrix(layout, other)
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
    leader = max(scored, key=lambda r: r.mean["cider"])  # type: ignore[arg-type,return-value]
    others = [r for r in scored if r is not leader]
    comparisons, n_images = compare(layout, leader, others)
    separated = [c for c in comparisons if c.test is not None and c.test.difference > 0 and c.test.significant(ALPHA)]
    answer = CaptionAnswer("", split, rows, leader.method, comparisons=comparisons, n_images=n_images or leader.n_eval)
    answer.winner = leader.method if len(separated) == len(comparisons) else None
    answer.tied = [leader.method] + [c.other for c in comparisons if c not in separated]
    answer.headline = headline(answer)
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
        "methods": {
            r.method: {
                "seeds": list(r.seeds),
                "n_eval": r.n_eval,
                "trainable_params": r.trainable_params,
                **{f"{k}_mean": v for k, v in r.mean.items()},
                **{f"{k}_std": v for k, v in r.std.items()},
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
