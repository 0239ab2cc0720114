"""Uncertainty for the numbers a run compares (numpy and the standard library only).

- ``wilson_interval``: a 95% interval for one accuracy on n test images (Wilson score interval; unlike
  the normal approximation it stays inside [0, 1] and keeps its coverage near 0% and 100%).
- ``mean_std``: mean and sample standard deviation over seeds (the seed count travels with them).
- ``mean_interval``: a 95% interval for a mean of per-image scores (per-image CIDEr or CLIPScore), by the
  percentile bootstrap over images with a fixed seed, so the same scores always give the same interval.
- ``chance_accuracy`` / ``majority_accuracy``: what guessing uniformly and always answering the largest
  class score; ``is_imbalanced``: whether accuracy is a misleading summary of a test set.
- ``paired_test``: is method A better than method B on the same test images, over seeds?
- ``paired_scores_test``: the same on a real-valued per-image score (per-image CIDEr of two captioners).
- ``paired_hm_test``: the same on base-to-new's harmonic mean of base and new accuracy.

The paired test, and why this one. Every seed of every method is scored on the *same* test images, so the
image, not the (image, seed) pair, is the independent unit: pooling McNemar's discordant counts over seeds
counts one image S times and overstates the evidence, and Fisher's or Stouffer's combination of per-seed
p-values assumes independent p-values, which seeds sharing one test set are not. Instead each image gets
its seed-averaged correctness for each method, ``a_i`` and ``b_i`` (fractions of seeds that got it right),
and the test is the paired sign-flip permutation test on ``d_i = w_i (a_i - b_i)``: under the null
hypothesis that A and B are exchangeable on every image, each ``d_i`` is as likely to have either sign.
The statistic ``sum(d_i)`` is exactly the difference in mean accuracy (weights ``w_i = 1/n``) or in mean
balanced accuracy (``w_i = 1/(C n_c)`` for an image of class c), so the test's direction is the metric's.
With one seed per method and plain accuracy it *is* the exact McNemar test (``d_i`` in {-1/n, 0, 1/n}:
the sign-flip distribution is the binomial on the discordant pairs). The p-value is two-sided and exact
(the permutation distribution is enumerated on the lattice of the ``d_i``) when that lattice is small,
otherwise estimated from ``MONTE_CARLO_DRAWS`` seeded random sign flips (p = (1 + hits) / (1 + draws)).
What it does not cover: variation from drawing another test set of the same size is covered; variation
from drawing other training shots is covered only through the seeds averaged, not tested separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

IMBALANCE_RATIO = 1.5  # largest / smallest class support above which accuracy and balanced accuracy part
MONTE_CARLO_DRAWS = 20_000
BOOTSTRAP_DRAWS = 10_000
EXACT_LATTICE_LIMIT = 2_000_000  # distinct step sizes x lattice span enumerated exactly (else Monte Carlo)


def wilson_interval(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n``; (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); std is 0 for a single value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_interval(
    scores: Sequence[float] | np.ndarray, level: float = 0.95, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> tuple[float, float]:
    """A ``level`` interval for the mean of per-image ``scores``: the percentile bootstrap over images (``draws``
    resamples of n images with replacement, drawn from a generator seeded with ``seed``).

    It covers drawing another test set of the same size, as the Wilson interval does for accuracy; no normal
    approximation, because per-image CIDEr is skewed (many images near 0, a few far above). A single image gives
    the point itself; no image raises ValueError."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"mean_interval needs a non-empty list of per-image scores, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(draws, values.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def chance_accuracy(n_classes: int) -> float:
    """Expected accuracy of a uniform random guess (also the balanced accuracy of any constant answer)."""
    return 1.0 / n_classes if n_classes else 0.0


def majority_accuracy(support: Sequence[int]) -> float:
    """Accuracy of always answering the largest class: max support / total."""
    total = sum(support)
    return max(support) / total if total else 0.0


def imbalance_ratio(support: Sequence[int]) -> float:
    """Largest over smallest class support among the classes present (inf if one is absent)."""
    present = [s for s in support if s > 0]
    if not present:
        return 1.0
    return max(present) / min(present) if len(present) == len(support) else math.inf


def is_imbalanced(support: Sequence[int], ratio: float = IMBALANCE_RATIO) -> bool:
    """True when the largest class has more than ``ratio`` times the test images of the smallest."""
    return imbalance_ratio(support) > ratio


@dataclass(frozen=True)
class PairedTest:
    """A against B on the same images: the metric difference (A - B), its two-sided p-value, and counts."""

    difference: float
    p_value: float
    better: int  # images on which A's seed-averaged correctness is higher
    worse: int
    n_images: int
    exact: bool

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha


def weight_denominators(labels: Sequence[int] | np.ndarray, balanced: bool) -> np.ndarray:
    """(n,) integers D_i with per-image weight 1/D_i: weighted correctness sums to accuracy (D = n) or to
    balanced accuracy (D = C * n_c for an image of class c, C the classes present)."""
    labels = np.asarray(labels, dtype=np.int64)
    if not balanced:
        return np.full(len(labels), len(labels), dtype=np.int64)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return len(classes) * counts[inverse]


def paired_test(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    labels: Sequence[int] | np.ndarray,
    balanced: bool = False,
    seed: int = 0,
) -> PairedTest:
    """Paired sign-flip test of A vs B (see the module docstring).

    ``correct_a``: (seeds_a, n) booleans, one row per seed of A; ``correct_b`` likewise (its seed count may
    differ, e.g. zero-shot has one); ``labels``: (n,) true classes, for the balanced weights.
    """
    correct_a, correct_b = np.atleast_2d(correct_a), np.atleast_2d(correct_b)
    if correct_a.shape[1] != correct_b.shape[1] or correct_a.shape[1] != len(labels):
        raise ValueError(
            f"paired test needs the same test images: {correct_a.shape[1]} vs "
            f"{correct_b.shape[1]} predictions for {len(labels)} labels"
        )
    seeds_a, seeds_b = correct_a.shape[0], correct_b.shape[0]
    # d_i = (hits_a / S_a - hits_b / S_b) / D_i = numerator_i / (S_a S_b D_i), all integers
    numerator = correct_a.sum(axis=0).astype(np.int64) * seeds_b - correct_b.sum(axis=0).astype(np.int64) * seeds_a
    denominator = seeds_a * seeds_b * weight_denominators(labels, balanced)
    steps = numerator / denominator
    observed = float(steps.sum())
    nonzero = numerator != 0
    better, worse = int((numerator > 0).sum()), int((numerator < 0).sum())
    if not nonzero.any():
        return PairedTest(0.0, 1.0, 0, 0, len(labels), True)
    lattice = math.lcm(*map(int, np.unique(denominator[nonzero])))  # one step of the lattice is 1/lattice
    magnitudes = np.abs(numerator[nonzero]) * (lattice // denominator[nonzero])
    fits = lattice < 2**62 // max(int(np.abs(numerator).max()), 1)  # int64 magnitudes do not overflow
    if fits and len(np.unique(magnitudes)) * int(magnitudes.sum()) <= EXACT_LATTICE_LIMIT:
        observed_steps = abs(int((numerator[nonzero] * (lattice // denominator[nonzero])).sum()))
        p_value, exact = _exact_sign_flip(magnitudes.tolist(), observed_steps), True
    else:
        p_value, exact = _monte_carlo_sign_flip(steps[nonzero], abs(observed), seed), False
    return PairedTest(observed, p_value, better, worse, len(labels), exact)


EXACT_SIGN_FLIPS_MAX = 16  # real-valued differences: all 2 ** n sign patterns enumerated up to this many images


def paired_scores_test(scores_a: np.ndarray, scores_b: np.ndarray, seed: int = 0) -> PairedTest:
    """Paired sign-flip test of A vs B on a real-valued per-image score (e.g. per-image CIDEr): ``scores_a``
    (seeds_a, n) and ``scores_b`` (seeds_b, n), one row per seed, the same n images in the same order.

    As ``paired_test`` but on scores rather than correctness: ``d_i`` = A's seed-mean score of image i minus
    B's, over n; the statistic ``sum(d_i)`` is the difference of the mean scores. Exact (every sign pattern)
    with at most ``EXACT_SIGN_FLIPS_MAX`` non-zero differences, otherwise ``MONTE_CARLO_DRAWS`` seeded draws."""
    scores_a, scores_b = np.atleast_2d(np.asarray(scores_a, float)), np.atleast_2d(np.asarray(scores_b, float))
    if scores_a.shape[1] != scores_b.shape[1]:
        raise ValueError(f"paired test needs the same test images: {scores_a.shape[1]} vs {scores_b.shape[1]} scores")
    n = scores_a.shape[1]
    steps = (scores_a.mean(axis=0) - scores_b.mean(axis=0)) / max(n, 1)
    scale = max(float(np.abs(steps).max(initial=0.0)), 1e-300)
    nonzero = np.abs(steps) > 1e-12 * scale
    better, worse = int((steps > 0).sum()), int((steps < 0).sum())
    observed = float(steps.sum())
    if not nonzero.any():
        return PairedTest(0.0, 1.0, better, worse, n, True)
    active = steps[nonzero]
    if len(active) <= EXACT_SIGN_FLIPS_MAX:
        patterns = np.array(np.meshgrid(*[(-1.0, 1.0)] * len(active))).reshape(len(active), -1).T  # (2^k, k)
        sums = np.abs(patterns @ active)
        p_value = float((sums >= abs(observed) - 1e-9 * scale).mean())
        return PairedTest(observed, p_value, better, worse, n, True)
    return PairedTest(observed, _monte_carlo_sign_flip(active, abs(observed), seed), better, worse, n, False)


def _exact_sign_flip(magnitudes: list[int], observed: int) -> float:
    """P(|sum of ±m_i| >= observed) with independent fair signs, by convolution over distinct magnitudes."""
    total = sum(magnitudes)
    distribution: np.ndarray | None = None  # index = sum + (reach so far)
    for magnitude, count in zip(*np.unique(magnitudes, return_counts=True)):
        magnitude, count = int(magnitude), int(count)
        # count items of one magnitude: sum = magnitude * (2X - count), X ~ Binomial(count, 1/2)
        kernel = np.zeros(2 * magnitude * count + 1)
        kernel[:: 2 * magnitude] = binomial_half_pmf(count)
        distribution = kernel if distribution is None else _convolve(distribution, kernel)
    assert distribution is not None and len(distribution) == 2 * total + 1
    sums = np.abs(np.arange(-total, total + 1))
    return float(min(1.0, np.clip(distribution, 0, None)[sums >= observed].sum()))


def binomial_half_pmf(n: int) -> np.ndarray:
    """P(X = k) for X ~ Binomial(n, 1/2), k = 0..n (log-gamma: no big integers, no overflow)."""
    k = np.arange(n + 1)
    log_comb = math.lgamma(n + 1) - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in range(n + 1)])
    return np.exp(log_comb - n * math.log(2)) if n else k + 1.0


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if min(len(a), len(b)) < 64:
        return np.convolve(a, b)
    size = len(a) + len(b) - 1
    fast = 1 << (size - 1).bit_length()  # a power of two: FFTs of awkward lengths can be very slow
    return np.fft.irfft(np.fft.rfft(a, fast) * np.fft.rfft(b, fast), fast)[:size]


HM_DRAWS = 4_000  # random swaps for the harmonic-mean test (its statistic is not a sum: no lattice to enumerate)


def harmonic_mean(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """Elementwise 2xy / (x + y), 0 where both are 0."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    total = x + y
    out: np.ndarray = np.divide(2 * x * y, total, out=np.zeros(np.broadcast(x, y).shape), where=total > 0)
    return out


def paired_hm_test(
    base: tuple[np.ndarray, np.ndarray, Sequence[int] | np.ndarray],
    new: tuple[np.ndarray, np.ndarray, Sequence[int] | np.ndarray],
    balanced: bool = False,
    seed: int = 0,
) -> PairedTest:
    """Is A better than B on the harmonic mean of base and new accuracy (base-to-new's HM)?

    ``base`` and ``new``: (correct_a (seeds_a, n), correct_b (seeds_b, n), labels (n,)) of each split, as
    ``paired_test`` takes them. Each image's seed-averaged correctness is kept per method (``a_i``, ``b_i``,
    weighted 1/D_i as in ``paired_test``); the statistic is HM(acc_A base, acc_A new) - HM(acc_B base,
    acc_B new). Under the null hypothesis that A and B are exchangeable on every image, swapping a_i and
    b_i on any image of either split is as likely: a paired randomisation test, with the images of both
    splits swapped independently. Exact (every swap pattern) with at most ``EXACT_SIGN_FLIPS_MAX`` images
    that differ, otherwise ``HM_DRAWS`` seeded random swaps. Unlike asking for significance on base and
    on new separately, a head far better on base and no worse on new can be told apart.
    """
    parts = []
    for correct_a, correct_b, labels in (base, new):
        correct_a, correct_b = np.atleast_2d(correct_a), np.atleast_2d(correct_b)
        if correct_a.shape[1] != correct_b.shape[1] or correct_a.shape[1] != len(labels):
            raise ValueError(
                f"paired test needs the same test images: {correct_a.shape[1]} vs "
                f"{correct_b.shape[1]} predictions for {len(labels)} labels"
            )
        weights = 1.0 / weight_denominators(labels, balanced)
        parts.append((correct_a.mean(axis=0) * weights, correct_b.mean(axis=0) * weights))
    (a_base, b_base), (a_new, b_new) = parts
    observed = float(harmonic_mean(a_base.sum(), a_new.sum()) - harmonic_mean(b_base.sum(), b_new.sum()))
    n_images = len(a_base) + len(a_new)
    d_base, d_new = a_base - b_base, a_new - b_new
    moving = np.concatenate([d_base != 0, d_new != 0])
    better = int((np.concatenate([d_base, d_new]) > 0).sum())
    worse = int((np.concatenate([d_base, d_new]) < 0).sum())
    if not moving.any():
        return PairedTest(0.0, 1.0, 0, 0, n_images, True)
    exact = int(moving.sum()) <= EXACT_SIGN_FLIPS_MAX
    if exact:  # every pattern of swaps on the images that differ (the others cannot change anything)
        count = int(moving.sum())
        swaps = ((np.arange(2**count)[:, None] >> np.arange(count)) & 1).astype(bool)
    else:
        swaps = np.random.default_rng(seed).random((HM_DRAWS, int(moving.sum()))) < 0.5
    split_at = int((d_base != 0).sum())

    def accuracies(a: np.ndarray, b: np.ndarray, mask: np.ndarray, swap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Totals of A and B with the images in ``swap`` (over the differing ones, ``mask``) exchanged."""
        delta = swap.astype(float) @ (a - b)[mask]  # (patterns,): what A gives to B by the swaps
        return a.sum() - delta, b.sum() + delta

    a_b, b_b = accuracies(a_base, b_base, d_base != 0, swaps[:, :split_at])
    a_n, b_n = accuracies(a_new, b_new, d_new != 0, swaps[:, split_at:])
    statistics = harmonic_mean(a_b, a_n) - harmonic_mean(b_b, b_n)
    hits = int((np.abs(statistics) >= abs(observed) - 1e-12).sum())
    p_value = hits / len(swaps) if exact else (1 + hits) / (1 + len(swaps))
    return PairedTest(observed, min(p_value, 1.0), better, worse, n_images, exact)


def _monte_carlo_sign_flip(steps: np.ndarray, observed: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    hits, chunk = 0, 1000
    for start in range(0, MONTE_CARLO_DRAWS, chunk):
        signs = rng.choice((-1.0, 1.0), size=(min(chunk, MONTE_CARLO_DRAWS - start), len(steps)))
        hits += int((np.abs(signs @ steps) >= observed - 1e-12).sum())
    return (1 + hits) / (1 + MONTE_CARLO_DRAWS)


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> float:
    """Two-sided exact McNemar p-value of one pair of prediction sets: binomial(b + c, 1/2) on discordant pairs."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / float(2**n)
    return min(1.0, 2 * tail)
