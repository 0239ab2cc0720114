"""Post-hoc temperature scaling (Guo et al., 2017): one scalar T, fitted on the validation split.

A head's calibrated logits are ``logits / T``: the argmax (every prediction, accuracy, F1) is unchanged,
only the confidences move. T minimises the validation NLL; that NLL is convex in 1/T, so a golden-section
search on log T over [T_MIN, T_MAX] finds it. When every validation image is already classified
correctly the NLL keeps falling as T -> 0 (it has no minimum, and the bound would make every test
prediction ~100% confident); T is then set so that the mean validation confidence equals the
Laplace-smoothed validation accuracy (n + 1) / (n + 2) instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from fewclip.heads.base import FeatureSet

T_MIN, T_MAX = 0.01, 100.0
_STEPS = 100  # golden-section / bisection steps on log T: the bracket shrinks far below float precision


@dataclass(frozen=True)
class Calibration:
    """The fitted temperature and a sentence on how it was obtained (for the head JSON and the report)."""

    temperature: float
    note: str


def _nll(logits: torch.Tensor, labels: torch.Tensor, log_t: float) -> float:
    return float(nn.functional.cross_entropy(logits / math.exp(log_t), labels))


def _mean_confidence(logits: torch.Tensor, log_t: float) -> float:
    return float(torch.softmax(logits / math.exp(log_t), dim=-1).max(dim=-1).values.mean())


def _golden_section(f: Callable[[float], float], low: float, high: float) -> float:
    """The minimiser of a unimodal ``f`` on [low, high]."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    fa, fb = f(a), f(b)
    for _ in range(_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = low + (1 - ratio) * (high - low)
            fa = f(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = f(b)
    return (low + high) / 2


def _match_confidence(logits: torch.Tensor, target: float) -> float:
    """log T at which the mean max-softmax equals ``target`` (it falls as T grows), by bisection."""
    low, high = math.log(T_MIN), math.log(T_MAX)
    for _ in range(_STEPS):
        middle = (low + high) / 2
        low, high = (middle, high) if _mean_confidence(logits, middle) > target else (low, middle)
    return (low + high) / 2


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """T for (n, C) validation ``logits`` with their (n,) ``labels`` (see the module doc)."""
    logits, labels = logits.detach().double().cpu(), labels.long().cpu()
    n = len(labels)
    if n == 0:
        return Calibration(1.0, "not calibrated: no validation images")
    if float((logits.max(dim=-1).values - logits.min(dim=-1).values).max()) == 0.0:
        return Calibration(1.0, "not calibrated: the logits are constant, T changes nothing")
    before = _nll(logits, labels, 0.0)
    if bool((logits.argmax(dim=-1) == labels).all()):
        target = (n + 1) / (n + 2)
        log_t = _match_confidence(logits, target)
        return Calibration(
            math.exp(log_t),
            f"T={math.exp(log_t):.4g}: all {n} val images correct, so the val NLL "
            f"has no minimum; mean val confidence set to (n+1)/(n+2) = {target:.3f}",
        )
    log_t = _golden_section(lambda t: _nll(logits, labels, t), math.log(T_MIN), math.log(T_MAX))
    after = _nll(logits, labels, log_t)
    return Calibration(
        math.exp(log_t), f"T={math.exp(log_t):.4g} fitted on {n} val images (val NLL {before:.4f} -> {after:.4f})"
    )


def calibrate(enabled: bool, val: FeatureSet | None, logits_fn: Callable[[torch.Tensor], torch.Tensor]) -> Calibration:
    """The temperature of a trained head: fitted on ``val`` through ``logits_fn`` (its uncalibrated logits),
    or 1 when calibration is off or there is no validation split."""
    if not enabled:
        return Calibration(1.0, "off (calibrate: false)")
    if val is None or len(val) == 0:
        return Calibration(1.0, "not calibrated: no validation split")
    with torch.no_grad():
        logits = logits_fn(val.features).float()
    return fit_temperature(logits, val.labels)


def temperature_tensor(calibration: Calibration) -> torch.Tensor:
    """T as the 0-d float32 tensor a head keeps in its state (saved as shape (1,))."""
    return torch.tensor(calibration.temperature, dtype=torch.float32)


class TemperatureScaled:
    """The scores of a head that calibrates: its ``uncalibrated_logits``, divided by ``temperature_`` (1 when the
    head does not calibrate)."""

    temperature_: torch.Tensor

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # each head computes its own

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) temperature-scaled logits (same argmax as the uncalibrated ones)."""
        return self.uncalibrated_logits(features) / self.temperature_
