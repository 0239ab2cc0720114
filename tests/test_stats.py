"""fewclip.stats against hand computations and known values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fewclip.metrics import summarize
from fewclip.stats import (
    chance_accuracy,
    is_imbalanced,
    majority_accuracy,
    mcnemar_exact,
    mean_interval,
    mean_std,
    paired_test,
    wilson_interval,
)


def test_wilson_interval_matches_the_textbook_value() -> None:
    # Newcombe (1998), Stat Med 17:857, Table I, method 3 (Wilson score): 81/263, 15/148, 0/20
    for (k, n), expected in (((81, 263), (0.2553, 0.3662)), ((15, 148), (0.0624, 0.1605)), ((0, 20), (0.0, 0.1611))):
        low, high = wilson_interval(k, n)
        assert (round(low, 4), round(high, 4)) == expected
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval_is_seeded_shrinks_with_n_and_covers_the_mean_about_95_percent() -> None:
    rng = np.random.default_rng(7)
    skewed = rng.exponential(1.0, size=200)  # per-image CIDEr is skewed like this: the true mean is 1
    low, high = mean_interval(skewed)
    assert low < skewed.mean() < high and mean_interval(skewed) == (low, high)  # same scores, same interval
    low4, high4 = mean_interval(np.tile(skewed, 4))
    assert 1.7 < (high - low) / (high4 - low4) < 2.3  # four times the images: half the width
    assert high - low == pytest.approx(2 * 1.96 * skewed.std() / math.sqrt(200), rel=0.15)  # the normal width
    covered = sum(low < 1.0 < high for low, high in (mean_interval(rng.exponential(1.0, 60)) for _ in range(300)))
    assert 0.88 * 300 < covered < 0.985 * 300, covered  # about 95% (the percentile bootstrap under-covers a little)
    assert mean_interval([0.4]) == (pytest.approx(0.4), pytest.approx(0.4))
    with pytest.raises(ValueError, match="non-empty"):
        mean_interval([])


def test_mean_std_is_the_sample_std() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    assert mean_std([0.2, 0.4, 0.9])[1] == pytest.approx(math.sqrt(((0.3) ** 2 + 0.1**2 + 0.4**2) / 2))


def test_majority_and_balanced_accuracy_on_an_imbalanced_set_by_hand() -> None:
    truth = np.array([0] * 10 + [1] * 6 + [2] * 4)  # 20 images, half in class 0
    always_zero = np.zeros(20, dtype=int)
    assert majority_accuracy([10, 6, 4]) == 0.5 and chance_accuracy(3) == pytest.approx(1 / 3)
    assert is_imbalanced([10, 6, 4]) and not is_imbalanced([6, 6, 5])
    scores = summarize(truth, always_zero, 3)
    assert scores["accuracy"] == 0.5 and scores["balanced_accuracy"] == pytest.approx(1 / 3)
    pred = truth.copy()
    pred[:5] = 1  # class 0 recall 5/10, class 1 6/6, class 2 4/4
    assert summarize(truth, pred, 3)["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert summarize(truth, pred, 3)["accuracy"] == pytest.approx(15 / 20)


def test_identical_predictions_are_indistinguishable() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random((3, 60)) < 0.6
    test = paired_test(correct, correct.copy(), rng.integers(0, 3, 60))
    assert (test.difference, test.p_value, test.better, test.worse) == (0.0, 1.0, 0, 0)


def test_one_seed_is_the_exact_mcnemar_test() -> None:
    # 9 discordant pairs favour A, 1 favours B: p = 2 * P(Bin(10, .5) <= 1) = 2 * 11 / 1024
    a = np.array([True] * 9 + [False] + [True] * 20)
    b = np.array([False] * 9 + [True] + [True] * 20)
    test = paired_test(a, b, np.zeros(30, dtype=int))
    assert test.p_value == pytest.approx(22 / 1024) == mcnemar_exact(a, b)
    assert test.difference == pytest.approx(8 / 30) and (test.better, test.worse) == (9, 1) and test.exact


def test_clearly_better_over_seeds_is_significant_and_a_small_edge_is_not() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 200)
    strong = rng.random((3, 200)) < 0.85
    weak = rng.random((3, 200)) < 0.55
    assert paired_test(strong, weak, labels).p_value < 1e-6
    nudged = weak.copy()
    nudged[:, :2] = True  # two more images right in every seed
    assert paired_test(nudged, weak, labels).p_value > 0.05


def test_seed_averaged_statistic_and_the_exact_distribution_by_enumeration() -> None:
    # two seeds each, 4 images: d_i in quarters; enumerate the 2^k sign flips by hand
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=bool)
    b = np.array([[0, 0, 0, 1], [0, 1, 1, 1]], dtype=bool)
    test = paired_test(a, b, np.zeros(4, dtype=int))
    steps = (a.mean(0) - b.mean(0))[(a.mean(0) - b.mean(0)) != 0]  # [1, 0, -0.5] -> nonzero [1, -0.5]
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(steps))).T.reshape(-1, len(steps))
    flips = np.abs(signs @ steps)
    expected = np.mean([f >= abs(steps.sum()) - 1e-12 for f in flips])
    assert test.p_value == pytest.approx(expected) and test.difference == pytest.approx(steps.sum() / 4)


def test_balanced_weights_follow_the_metric_direction() -> None:
    # A is right on the 2 minority images, B on 4 majority images: B has higher accuracy, A higher balanced accuracy
    labels = np.array([0] * 16 + [1] * 2)
    a = np.array([True] * 10 + [False] * 6 + [True] * 2)
    b = np.array([True] * 16 + [False] * 2)
    assert paired_test(a, b, labels).difference < 0
    assert paired_test(a, b, labels, balanced=True).difference == pytest.approx(
        summarize(labels, np.where(a, labels, 1 - labels), 2)["balanced_accuracy"]
        - summarize(labels, np.where(b, labels, 1 - labels), 2)["balanced_accuracy"]
    )


def test_paired_test_refuses_different_test_sets() -> None:
    with pytest.raises(ValueError, match="same test images: 3 vs 4"):
        paired_test(np.ones((1, 3), bool), np.ones((1, 4), bool), [0, 0, 0])


def test_paired_scores_test_enumerates_every_sign_pattern() -> None:
    from fewclip.stats import paired_scores_test

    # differences 1, 2, 3 (over n = 3): |±1 ±2 ±3| >= 6 in 2 of 8 patterns
    test = paired_scores_test(np.array([[2.0, 4.0, 3.0]]), np.array([[1.0, 2.0, 0.0]]))
    assert test.exact and test.p_value == pytest.approx(2 / 8)
    assert test.difference == pytest.approx(2.0) and (test.better, test.worse, test.n_images) == (3, 0, 3)
    # seeds are averaged per image before the test: A's two seeds average to the single-seed scores above
    averaged = paired_scores_test(np.array([[1.0, 4.0, 2.0], [3.0, 4.0, 4.0]]), np.array([[1.0, 2.0, 0.0]]))
    assert averaged.p_value == pytest.approx(test.p_value) and averaged.difference == pytest.approx(2.0)
    assert paired_scores_test(np.ones((1, 5)), np.ones((2, 5))).p_value == 1.0


def test_paired_scores_test_on_correctness_is_the_paired_test() -> None:
    from fewclip.stats import paired_scores_test

    rng = np.random.default_rng(3)
    for n in (12, 60):  # exact enumeration, then Monte Carlo
        a, b = rng.random((1, n)) < 0.7, rng.random((1, n)) < 0.4
        reference = paired_test(a, b, np.zeros(n, dtype=int))
        test = paired_scores_test(a.astype(float), b.astype(float))
        assert test.difference == pytest.approx(reference.difference)
        assert test.p_value == pytest.approx(reference.p_value, abs=1e-12 if test.exact else 0.01)
    with pytest.raises(ValueError, match="same test images"):
        paired_scores_test(np.ones((1, 3)), np.ones((1, 4)))


# --- the harmonic-mean test (base-to-new) -----------------------------------------------------------


def _hm(x: float, y: float) -> float:
    return 0.0 if x + y == 0 else 2 * x * y / (x + y)


def test_hm_test_enumerates_every_swap_exactly_on_a_small_case() -> None:
    """Brute force written here: every assignment of each differing image's two predictions to A and B."""
    import itertools

    from fewclip.stats import paired_hm_test

    a_base, b_base = np.array([1, 1, 1, 0, 1]), np.array([0, 0, 1, 0, 1])
    a_new, b_new = np.array([1, 0, 1]), np.array([0, 0, 1])
    test = paired_hm_test((a_base, b_base, [0, 1, 0, 1, 0]), (a_new, b_new, [0, 1, 1]))
    observed = _hm(a_base.mean(), a_new.mean()) - _hm(b_base.mean(), b_new.mean())
    stats = []
    for flips in itertools.product([False, True], repeat=8):
        fa_b = np.where(flips[:5], b_base, a_base)
        fb_b = np.where(flips[:5], a_base, b_base)
        fa_n = np.where(flips[5:], b_new, a_new)
        fb_n = np.where(flips[5:], a_new, b_new)
        stats.append(_hm(fa_b.mean(), fa_n.mean()) - _hm(fb_b.mean(), fb_n.mean()))
    expected_p = np.mean(np.abs(stats) >= abs(observed) - 1e-12)
    assert test.exact and abs(test.difference - observed) < 1e-12
    assert abs(test.p_value - expected_p) < 1e-12
    assert (test.better, test.worse, test.n_images) == (3, 0, 8)


def test_hm_test_separates_a_head_far_better_on_base_and_equal_on_new() -> None:
    """Significant on base, no difference at all on new: HM tells them apart (asking for significance on
    both sides, the rule before, never could)."""
    from fewclip.stats import paired_hm_test, paired_test

    rng = np.random.default_rng(0)
    labels_base, labels_new = np.arange(80) % 8, np.arange(80) % 8
    b_base = rng.random(80) < 0.3
    a_base = b_base | (rng.random(80) < 0.6)  # A right wherever B is, and on many more
    new = rng.random(80) < 0.4
    test = paired_hm_test((a_base, b_base, labels_base), (new, new, labels_new))
    assert test.difference > 0.1 and test.p_value < 0.01 and not test.exact
    assert paired_test(new, new, labels_new).p_value == 1.0  # the new side alone shows nothing
    same = paired_hm_test((b_base, b_base, labels_base), (new, new, labels_new))
    assert same.p_value == 1.0 and same.difference == 0.0


def test_hm_test_holds_its_level_when_the_heads_are_exchangeable() -> None:
    """100 simulated pairs of equally good heads (independent coin flips, 30 images a side): about 5% are
    called significant at 0.05, as a valid test must (the binomial's 99.9% bound for 100 draws at 5% is 13)."""
    from fewclip.stats import paired_hm_test

    rng = np.random.default_rng(1)
    labels = np.arange(30) % 3
    rejected = sum(
        paired_hm_test(
            (rng.random(30) < 0.6, rng.random(30) < 0.6, labels),
            (rng.random(30) < 0.4, rng.random(30) < 0.4, labels),
            seed=i,
        ).p_value
        < 0.05
        for i in range(100)
    )
    assert 1 <= rejected <= 13, rejected
