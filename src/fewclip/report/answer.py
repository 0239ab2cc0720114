"""The report's answer, computed once: which method wins at which shot budget, and which head to use.

Rules (stated in the text the report prints, so a reader can check them):
- The headline speaks of one split: test, else the harmonic mean of base and new (hm), else the first.
- Its metric is accuracy, or balanced accuracy (mean per-class recall) when the split is imbalanced:
  largest class support > ``IMBALANCE_RATIO`` x the smallest, where always answering the largest class
  already scores well and accuracy mostly measures the large classes.
- At each budget the candidates are the trained methods at that budget and the shot-free ones (zero-shot).
  Where no trained method has results on the split (a run of ``methods=[zero_shot]``), the shot-free ones are
  the candidates at one budget, 0 shots, and the recommendation is among them: a shot-free head is an answer too.
  The best mean is *named the winner* only if the paired test over seeds (``fewclip.stats.paired_test``)
  finds it better than every other candidate at level ``ALPHA`` (needing each comparison significant is
  an intersection-union test: no multiplicity correction is needed for "better than all"). Otherwise the
  candidates not significantly below the best are called indistinguishable on this test set of N images.
  On hm the test is a paired randomisation test of the harmonic mean itself (``fewclip.stats.paired_hm_test``:
  each image's predictions of A and B swapped at random, on base and new together), so a head far better on
  base and no worse on new is told apart from one that is only better on one side by chance.
- The recommendation: at the largest budget with results, take the best mean; among every (method, shots)
  not significantly worse than it, recommend the cheapest (fewest shots, then fewest trainable parameters,
  then highest mean), with its smallest seed (seeds are interchangeable draws: picking the best one on the
  test set would select on the test set).
Every section of the report and the CLI print this one answer (``results/answer.json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from fewclip.stats import IMBALANCE_RATIO, PairedTest, imbalance_ratio, paired_hm_test, paired_test
from fewclip.report.aggregate import split_key
from fewclip.report.evidence import Evidence

ALPHA = 0.05
SPLIT_NAMES = {
    "test": "test split",
    "base": "base classes",
    "new": "new classes",
    "hm": "harmonic mean of base and new",
}
METRIC_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy"}


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def budgets_text(shots: Sequence[int]) -> str:
    return f"{', '.join(map(str, shots))} shot" + ("" if list(shots) == [1] else "s")


def shots_text(shots: int) -> str:
    return budgets_text([shots])


def seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def and_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class Verdict:
    """The candidates at one (split, shots), best mean first, and the paired tests of the best against each."""

    split: str
    shots: int
    metric: str
    ranked: list[dict[str, Any]]
    tests: dict[str, PairedTest | None]  # other candidate's method -> best vs it (None: no predictions)
    alpha: float = ALPHA

    @property
    def best(self) -> dict[str, Any] | None:
        return self.ranked[0] if self.ranked else None

    @property
    def winner(self) -> str | None:
        """The best method if it is significantly better than every other candidate, else None."""
        if len(self.ranked) < 2 or not all(
            t is not None and t.difference > 0 and t.significant(self.alpha) for t in self.tests.values()
        ):
            return None
        return self.ranked[0]["method"]

    def indistinguishable(self) -> list[dict[str, Any]]:
        """The best and every candidate not significantly below it."""
        return [
            r
            for r in self.ranked
            if r is self.best or not significantly_better(self.tests.get(r["method"]), self.alpha)
        ]


def significantly_better(test: PairedTest | None, alpha: float) -> bool:
    """Whether the paired test of A against B finds A significantly better (untested: no)."""
    return test is not None and test.difference > 0 and test.significant(alpha)


def headline_metric(support: Sequence[int] | None) -> str:
    """balanced_accuracy on an imbalanced split (see the module doc), else accuracy."""
    return "balanced_accuracy" if support and imbalance_ratio(support) > IMBALANCE_RATIO else "accuracy"


def primary_split(accuracy: Sequence[dict[str, Any]]) -> str | None:
    splits = sorted({r["split"] for r in accuracy}, key=split_key)
    for preferred in ("test", "hm"):
        if preferred in splits:
            return preferred
    return splits[0] if splits else None


def compare(evidence: Evidence, a: dict[str, Any], b: dict[str, Any], split: str, metric: str) -> PairedTest | None:
    """Paired test of row ``a`` against row ``b`` on ``split``; hm needs both base and new (intersection)."""
    if split == "hm":
        sides = [
            (evidence.get(a["method"], a["shots"], s), evidence.get(b["method"], b["shots"], s), evidence.labels[s])
            for s in ("base", "new")
            if s in evidence.labels
        ]
        if len(sides) != 2 or any(x is None for side in sides for x in side[:2]):
            return None
        test = paired_hm_test(sides[0], sides[1], balanced=metric == "balanced_accuracy")  # type: ignore[arg-type]
        # the difference shown is the table's (mean over seeds of each seed's HM); the test's statistic is the
        # HM of the seed-averaged accuracies, the same direction
        return PairedTest(
            a[f"{metric}_mean"] - b[f"{metric}_mean"], test.p_value, test.better, test.worse, test.n_images, test.exact
        )
    correct_a, correct_b = evidence.get(a["method"], a["shots"], split), evidence.get(b["method"], b["shots"], split)
    if correct_a is None or correct_b is None:
        return None
    return paired_test(correct_a, correct_b, evidence.labels[split], balanced=metric == "balanced_accuracy")


def verdicts(
    accuracy: Sequence[dict[str, Any]],
    budgets: Sequence[int],
    evidence: Evidence,
    metrics: dict[str, str],
    alpha: float = ALPHA,
) -> list[Verdict]:
    """One verdict per split and per shot budget (those asked for and those with results)."""
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in accuracy))}
    shot_free = {r["method"] for r in accuracy} - {r["method"] for r in accuracy if r["shots"] > 0}
    out = []
    for split in sorted({r["split"] for r in accuracy}, key=split_key):
        metric = metrics.get(split, "accuracy")
        rows = [r for r in accuracy if r["split"] == split and r.get(f"{metric}_mean") is not None]
        free_rows = [r for r in rows if r["method"] in shot_free]
        if free_rows and not any(r["method"] not in shot_free for r in rows):
            # only shot-free heads have results (a zero-shot-only run): they are the answer, at 0 shots
            out.append(_verdict(split, 0, metric, free_rows, evidence, order, alpha))
            continue
        for shots in sorted(set(budgets) | {r["shots"] for r in rows if r["shots"] > 0}):
            trained = [r for r in rows if r["shots"] == shots and r["method"] not in shot_free]
            out.append(_verdict(split, shots, metric, trained + (free_rows if trained else []), evidence, order, alpha))
    return out


def _verdict(
    split: str,
    shots: int,
    metric: str,
    candidates: Sequence[dict[str, Any]],
    evidence: Evidence,
    order: dict[str, int],
    alpha: float,
) -> Verdict:
    """The candidates at one budget, best mean first, with the paired test of the best against each other."""
    ranked = sorted(candidates, key=lambda r: (-r[f"{metric}_mean"], order[r["method"]]))
    tests = {r["method"]: compare(evidence, ranked[0], r, split, metric) for r in ranked[1:]}
    return Verdict(split, shots, metric, ranked, tests, alpha)


def score(row: dict[str, Any], metric: str) -> str:
    return f"{pct(row[f'{metric}_mean'])} ± {100 * row[f'{metric}_std']:.2f} ({seeds(row['n_seeds'])})"


def sentence(verdict: Verdict) -> str:
    """One budget in words: the winner and its tests, or which methods the test cannot tell apart."""
    best, metric = verdict.best, verdict.metric
    if best is None:
        return f"At {shots_text(verdict.shots)}: no results (see what is missing below)."
    name = METRIC_NAMES[metric]
    head = f"At {shots_text(verdict.shots)}"
    if len(verdict.ranked) == 1:
        return f"{head}, only {best['method']} has results: {name} {score(best, metric)}."

    def versus(row: dict[str, Any]) -> str:
        test = verdict.tests[row["method"]]
        return f"{row['method']} ({pct(row[f'{metric}_mean'])}, {p_text(test.p_value) if test else 'not tested'})"

    others = verdict.ranked[1:]
    if verdict.winner is not None:
        return (
            f"{head}, {best['method']} is best: {name} {score(best, metric)}, significantly above "
            f"{and_list([versus(r) for r in others])}."
        )
    tied = [r for r in verdict.indistinguishable() if r is not best]
    below = [r for r in others if r not in tied]
    text = (
        f"{head}, no method is significantly better than all others: {best['method']} has the highest mean "
        f"{name}, {score(best, metric)}, but is indistinguishable from {and_list([versus(r) for r in tied])}"
    )
    if below:
        text += f"; it is significantly above {and_list([versus(r) for r in below])}"
    return text + "."


@dataclass
class Answer:
    """The one answer of a run: its split, metric and why, the verdicts, the headline and the recommendation."""

    split: str | None
    metric: str
    metric_reason: str
    n_images: int | None
    verdicts: list[Verdict]
    recommendation: dict[str, Any] | None
    alpha: float = ALPHA
    headline: str = ""
    baselines: dict[str, float] = field(default_factory=dict)
    plain: list[str] = field(default_factory=list)  # the first screen's sentences (``first_screen.plain_answer``)
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # one row per method (``first_screen``)

    def primary(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.split == self.split and v.best is not None]


def metric_reason(support: Sequence[int] | None) -> tuple[str, str]:
    metric = headline_metric(support)
    if not support:
        return metric, "accuracy (class supports unknown)"
    ratio = imbalance_ratio(support)
    if metric == "balanced_accuracy":
        return metric, (
            f"balanced accuracy (mean per-class recall), because the test set is imbalanced: its "
            f"largest class has {ratio:.1f}x the images of its smallest (> {IMBALANCE_RATIO}), so "
            f"accuracy would mostly measure the large classes"
        )
    return metric, f"accuracy (classes are balanced: largest / smallest support {ratio:.1f} <= {IMBALANCE_RATIO})"


def recommend(
    answer_verdicts: Sequence[Verdict],
    accuracy: Sequence[dict[str, Any]],
    evidence: Evidence,
    split: str,
    metric: str,
    params: dict[tuple[str, int], int],
    unit_seeds: dict[tuple[str, int], list[int]],
    alpha: float = ALPHA,
) -> dict[str, Any] | None:
    """The cheapest (method, shots) not significantly worse than the best at the largest budget (module doc)."""
    mine = [v for v in answer_verdicts if v.split == split and v.best is not None]
    if not mine:
        return None
    top = max(mine, key=lambda v: v.shots)
    best = top.best
    assert best is not None
    rows = [r for r in accuracy if r["split"] == split and r.get(f"{metric}_mean") is not None]
    kept = [best] + [
        r
        for r in rows
        if r is not best
        and (
            r[f"{metric}_mean"] >= best[f"{metric}_mean"]
            or not _worse(compare(evidence, best, r, split, metric), alpha)
        )
    ]
    chosen = min(kept, key=lambda r: (r["shots"], params.get((r["method"], r["shots"]), 0), -r[f"{metric}_mean"]))
    seed = min(unit_seeds.get((chosen["method"], chosen["shots"]), [0]))
    name = METRIC_NAMES[metric]
    if top.shots == 0:
        why = (
            f"no head trained on labelled images has results on the {SPLIT_NAMES.get(split, split)}; "
            f"{chosen['method']} has the best mean {name} of the heads that need none, {score(chosen, metric)}"
        )
    elif chosen is best:
        why = (
            f"the best mean {name} at the largest budget ({shots_text(top.shots)}), "
            f"{score(best, metric)}, and no cheaper head is statistically as good"
        )
    else:
        why = (
            f"the cheapest head (fewest shots, then fewest trainable parameters) whose {name}, "
            f"{score(chosen, metric)}, is not significantly below the best at {shots_text(top.shots)}, "
            f"{best['method']} with {pct(best[f'{metric}_mean'])} (paired test over seeds, alpha = {alpha})"
        )
    return {
        "method": chosen["method"],
        "shots": chosen["shots"],
        "seed": seed,
        "split": split,
        "metric": metric,
        f"{metric}_mean": chosen[f"{metric}_mean"],
        "why": why,
    }


def _worse(test: PairedTest | None, alpha: float) -> bool:
    """Untested (no predictions) counts as worse: only the paired evidence can make a head 'as good'."""
    return test is None or (test.difference > 0 and test.significant(alpha))


def build_answer(
    accuracy: Sequence[dict[str, Any]],
    budgets: Sequence[int],
    evidence: Evidence,
    supports: dict[str, list[int]],
    params: dict[tuple[str, int], int],
    unit_seeds: dict[tuple[str, int], list[int]],
    alpha: float = ALPHA,
) -> Answer:
    """Everything the report and the CLI say about who wins, computed here once."""
    split = primary_split(accuracy)
    metrics = {s: headline_metric(supports.get(s)) for s in {r["split"] for r in accuracy}}
    if split == "hm":  # hm has no classes of its own: balanced if either side is imbalanced
        either = any(headline_metric(supports.get(s)) == "balanced_accuracy" for s in ("base", "new"))
        metrics["hm"] = "balanced_accuracy" if either else "accuracy"
    found = verdicts(accuracy, budgets, evidence, metrics, alpha)
    if split is None:
        return Answer(None, "accuracy", "", None, found, None, alpha, "No results yet: summary.csv has no rows.")
    metric = metrics[split]
    support = supports.get(split) if split != "hm" else None
    _, reason = metric_reason(support) if split != "hm" else (metric, METRIC_NAMES[metric])
    n_images = next((r["n_test"] for r in accuracy if r["split"] == split and r.get("n_test")), None)
    if n_images is None and split == "hm":
        n_images = (
            sum(
                next((r["n_test"] for r in accuracy if r["split"] == s and r.get("n_test")), 0) for s in ("base", "new")
            )
            or None
        )
    answer = Answer(
        split,
        metric,
        reason,
        n_images,
        found,
        recommend(found, accuracy, evidence, split, metric, params, unit_seeds, alpha),
        alpha,
    )
    row = next((r for r in accuracy if r["split"] == split and r.get("chance") is not None), None)
    if row is not None:
        answer.baselines = {"chance": row["chance"], "majority": row["majority"]}
    answer.headline = headline_text(answer)
    return answer


def headline_text(answer: Answer) -> str:
    """Two or three sentences: the rule, who wins where (or that the test cannot tell), the recommendation."""
    mine = answer.primary()
    where = SPLIT_NAMES.get(answer.split or "", answer.split)
    if not mine:
        return f"No method has results on the {where}."
    size = f"{answer.n_images} images" if answer.n_images else "an unknown number of images"
    wins: dict[str, list[int]] = {}
    alone: dict[str, list[int]] = {}  # budgets where one method alone has results: nothing to test
    open_budgets = []
    for verdict in mine:
        if len(verdict.ranked) == 1:
            alone.setdefault(verdict.ranked[0]["method"], []).append(verdict.shots)
        elif verdict.winner is None:
            open_budgets.append(verdict.shots)
        else:
            wins.setdefault(verdict.winner, []).append(verdict.shots)
    parts = [f"{method} is significantly best at {budgets_text(shots)}" for method, shots in wins.items()]
    parts += [f"only {method} has results at {budgets_text(shots)}" for method, shots in alone.items()]
    if open_budgets:
        parts.append(
            f"at {budgets_text(open_budgets)} the leading methods are indistinguishable on this test set of {size}"
            if parts
            else f"at no shot budget is any method significantly better than all others: the leading methods "
            f"are indistinguishable on this test set of {size}"
        )
    text = (
        f"On the {where} ({size}), measured by {METRIC_NAMES[answer.metric]}, with a paired test over seeds "
        f"at alpha = {answer.alpha}: " + "; ".join(parts) + "."
    )
    rec = answer.recommendation
    if rec is not None:
        text += f" Recommended: {rec['method']} at {shots_text(rec['shots'])} ({rec['why']})."
    return text


def answer_json(answer: Answer) -> dict[str, Any]:
    """What ``results/answer.json`` holds: the headline, the rule's parameters, each budget's sentence."""
    return {
        "headline": answer.headline,
        "plain": answer.plain,
        "leaderboard": answer.leaderboard,
        "split": answer.split,
        "metric": answer.metric,
        "metric_reason": answer.metric_reason,
        "alpha": answer.alpha,
        "n_images": answer.n_images,
        "baselines": answer.baselines,
        "recommendation": answer.recommendation,
        "budgets": [
            {
                "split": v.split,
                "shots": v.shots,
                "winner": v.winner,
                "sentence": sentence(v),
                "tests": {
                    m: (None if t is None else {"difference": t.difference, "p_value": t.p_value, "exact": t.exact})
                    for m, t in v.tests.items()
                },
            }
            for v in answer.verdicts
        ],
    }


UnitKey = tuple[str, int]  # (method, shots)


def unit_table(summary: Sequence[dict[str, str]]) -> tuple[dict[UnitKey, int], dict[UnitKey, list[int]]]:
    """(method, shots) -> trainable parameters, and -> the seeds with results, from summary.csv rows."""
    params: dict[tuple[str, int], int] = {}
    unit_seeds: dict[tuple[str, int], list[int]] = {}
    for row in summary:
        key = (row["method"], int(row["shots"]))
        params[key] = int(row["trainable_params"])
        if int(row["seed"]) not in unit_seeds.setdefault(key, []):
            unit_seeds[key].append(int(row["seed"]))
    return params, unit_seeds
