"""The answer on constructed predictions: who is named, when methods are indistinguishable, the metric
choice on an imbalanced test set, and the recommendation rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fewclip.report.answer import build_answer, sentence
from fewclip.report.evidence import Evidence
from fewclip.report.figures import panel_limits, y_limits
from fewclip.stats import paired_test

N = 300
LABELS = np.arange(N) % 3  # balanced: 100 per class


def _sample_std(values: Any) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def correct(rate: float, seeds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((seeds, N)) < rate


def row(method: str, shots: int, matrix: np.ndarray, labels: np.ndarray = LABELS) -> dict[str, Any]:
    """An accuracy_table row computed from a correctness matrix (so the table and the tests agree)."""
    acc = matrix.mean(axis=1)
    classes = np.unique(labels)
    bal = np.array([np.mean([m[labels == c].mean() for c in classes]) for m in matrix])
    support = [int((labels == c).sum()) for c in classes]
    return {
        "method": method,
        "shots": shots,
        "split": "test",
        "n_seeds": len(matrix),
        "n_test": len(labels),
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": _sample_std(acc),
        "balanced_accuracy_mean": float(bal.mean()),
        "balanced_accuracy_std": _sample_std(bal),
        "macro_f1_mean": 0.5,
        "macro_f1_std": 0.0,
        "chance": 1 / len(classes),
        "majority": max(support) / len(labels),
    }


def answer_for(units: dict[tuple[str, int], np.ndarray], labels: np.ndarray = LABELS, params: dict | None = None):
    evidence = Evidence({"test": labels}, {(m, k, "test"): c for (m, k), c in units.items()})
    accuracy = [row(m, k, c, labels) for (m, k), c in units.items()]
    params = params or {(m, k): (0 if k == 0 else 100) for m, k in units}
    seeds = {(m, k): ([0] if k == 0 else [1, 2, 3]) for m, k in units}
    support = [int((labels == c).sum()) for c in np.unique(labels)]
    return build_answer(accuracy, sorted({k for _, k in units if k}), evidence, {"test": support}, params, seeds)


def test_identical_methods_are_indistinguishable_and_no_winner_is_named() -> None:
    same = correct(0.7, 3, 0)
    answer = answer_for({("zero_shot", 0): correct(0.5, 1, 9), ("linear_probe", 4): same, ("coop", 4): same.copy()})
    (verdict,) = answer.primary()
    assert verdict.winner is None
    assert "no method is significantly better than all others" in sentence(verdict)
    assert f"but is indistinguishable from coop ({100 * same.mean():.2f}%, p = 1.000)" in sentence(verdict)
    assert "significantly above zero_shot" in sentence(verdict)
    assert "at 4 shots the leading methods are indistinguishable" not in answer.headline  # only one budget
    assert (
        "at no shot budget is any method significantly better than all others: the leading methods are "
        "indistinguishable on this test set of 300 images"
    ) in answer.headline
    assert "measured by accuracy, with a paired test over seeds at alpha = 0.05" in answer.headline


def test_a_clearly_better_method_is_named_with_its_tests() -> None:
    zero, probe, coop = correct(0.5, 1, 1), correct(0.9, 3, 2), correct(0.6, 3, 3)
    answer = answer_for({("zero_shot", 0): zero, ("linear_probe", 4): probe, ("coop", 4): coop})
    (verdict,) = answer.primary()
    assert verdict.winner == "linear_probe"
    p_coop = paired_test(probe, coop, LABELS).p_value
    assert verdict.tests["coop"].p_value == p_coop < 0.001
    assert sentence(verdict).startswith("At 4 shots, linear_probe is best: accuracy ")
    assert "significantly above coop (" in sentence(verdict) and "p < 0.001" in sentence(verdict)
    assert "linear_probe is significantly best at 4 shots" in answer.headline
    assert answer.recommendation["method"] == "linear_probe" and answer.recommendation["seed"] == 1


def test_zero_shot_winning_a_budget_is_said_once_and_not_contradicted() -> None:
    zero = correct(0.8, 1, 4)
    units = {("zero_shot", 0): zero, ("linear_probe", 1): correct(0.4, 3, 5), ("linear_probe", 8): correct(0.95, 3, 6)}
    answer = answer_for(units)
    one, eight = answer.primary()
    assert (one.winner, eight.winner) == ("zero_shot", "linear_probe")
    assert "zero_shot is significantly best at 1 shot; linear_probe is significantly best at 8 shots" in answer.headline
    assert "every shot budget" not in answer.headline


def test_a_zero_shot_only_run_is_answered_and_recommends_zero_shot() -> None:
    """A run of shot-free heads only (methods=[zero_shot]) still has an answer: its accuracy, and the head."""
    zero = correct(0.62, 1, 12)
    evidence = Evidence({"test": LABELS}, {("zero_shot", 0, "test"): zero})
    support = [int((LABELS == c).sum()) for c in np.unique(LABELS)]
    answer = build_answer(
        [row("zero_shot", 0, zero)],
        [1, 4, 16],
        evidence,
        {"test": support},
        {("zero_shot", 0): 0},
        {("zero_shot", 0): [0]},
    )
    (verdict,) = answer.primary()
    assert (verdict.shots, [r["method"] for r in verdict.ranked]) == (0, ["zero_shot"])
    expected = f"{100 * zero.mean():.2f}%"
    assert sentence(verdict) == f"At 0 shots, only zero_shot has results: accuracy {expected} ± 0.00 (1 seed)."
    assert "No method has results" not in answer.headline
    assert "only zero_shot has results at 0 shots" in answer.headline
    assert "Recommended: zero_shot at 0 shots (no head trained on labelled images" in answer.headline
    rec = answer.recommendation
    assert (rec["method"], rec["shots"], rec["seed"], rec["accuracy_mean"]) == ("zero_shot", 0, 0, zero.mean())
    assert expected in rec["why"]


def test_the_recommendation_is_the_cheapest_head_not_worse_than_the_best() -> None:
    strong = correct(0.9, 3, 7)
    nearly = strong.copy()
    nearly[:, :3] = False  # 1 point lower: not significantly worse
    units = {
        ("zero_shot", 0): correct(0.5, 1, 8),
        ("linear_probe", 2): nearly,
        ("linear_probe", 16): strong,
        ("coop", 16): correct(0.6, 3, 10),
    }
    rec = answer_for(units).recommendation
    assert (rec["method"], rec["shots"], rec["seed"]) == ("linear_probe", 2, 1)
    assert "cheapest head" in rec["why"] and "not significantly below the best at 16 shots" in rec["why"]


def test_an_imbalanced_test_set_is_judged_by_balanced_accuracy_and_says_why() -> None:
    labels = np.array([0] * 200 + [1] * 50 + [2] * 50)  # class 0 has 4x the images of the smallest
    majority_like = np.zeros((3, N), dtype=bool)
    majority_like[:, :200] = True  # always answers class 0: 66.7% accuracy, 33.3% balanced
    fair = np.random.default_rng(11).random((3, N)) < 0.6
    answer = answer_for({("linear_probe", 4): majority_like, ("coop", 4): fair}, labels)
    assert answer.metric == "balanced_accuracy"
    assert "4.0x the images of its smallest (> 1.5)" in answer.metric_reason
    assert answer.baselines == {"chance": pytest.approx(1 / 3), "majority": pytest.approx(2 / 3)}
    (verdict,) = answer.primary()
    assert verdict.ranked[0]["method"] == "coop" and verdict.winner == "coop"  # by accuracy linear_probe leads
    assert "measured by balanced accuracy" in answer.headline


def test_y_limits_hug_the_values() -> None:
    assert y_limits([0.50, 0.52]) == pytest.approx((0.48, 0.54))
    assert y_limits([0.1, 0.9]) == pytest.approx((0.02, 0.98))
    assert y_limits([0.0, 1.0]) == (0.0, 1.0)


def test_a_far_baseline_stays_off_the_axis_and_a_near_one_is_drawn() -> None:
    methods = [0.88, 0.90, 0.92]
    assert panel_limits(methods, 0.125) == (pytest.approx(y_limits(methods)), False)  # 12.5% would flatten 88-92%
    limits, drawn = panel_limits(methods, 0.86)
    assert drawn and limits == pytest.approx(y_limits([*methods, 0.86]))
    assert panel_limits(methods) == (pytest.approx(y_limits(methods)), False)
