"""Temperature scaling: it minimises the val NLL, lowers ECE on miscalibrated logits, never moves an
argmax, is 1 when off, and travels with the head's state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from fewclip.runner.analysis import calibration_bins, expected_calibration_error
from fewclip.heads import FeatureSet, LinearProbeHead, Task, load_head, save_head
from fewclip.training.calibration import T_MAX, T_MIN, calibrate, fit_temperature

CLASSES = ["a", "b", "c"]


def sampled(n: int, seed: int, n_classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits and labels drawn from their softmax: the true logits are calibrated by construction."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, n_classes, generator=generator)
    labels = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return logits, labels


def ece(logits: torch.Tensor, labels: torch.Tensor) -> float:
    probs = torch.softmax(logits.double(), -1)
    confidence, pred = probs.max(-1)
    return expected_calibration_error(calibration_bins(confidence.numpy(), (pred == labels).numpy()))


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


@pytest.mark.parametrize("distortion", [0.2, 4.0], ids=["underconfident", "overconfident"])
def test_temperature_undoes_a_known_miscalibration(distortion: float) -> None:
    true_val, val_labels = sampled(4000, seed=0)
    true_test, test_labels = sampled(4000, seed=1)
    fitted = fit_temperature(true_val * distortion, val_labels)
    assert fitted.temperature == pytest.approx(distortion, rel=0.1)  # it recovers the distortion
    test = true_test * distortion
    calibrated = test / fitted.temperature
    assert ece(test, test_labels) > 0.1 and ece(calibrated, test_labels) < 0.03
    assert ece(calibrated, test_labels) < ece(test, test_labels) / 4
    assert torch.equal(calibrated.argmax(-1), test.argmax(-1))  # accuracy cannot move


def test_temperature_minimises_the_val_nll_by_brute_force() -> None:
    logits, labels = sampled(300, seed=2)
    logits = logits * 0.5
    fitted = fit_temperature(logits, labels)
    grid = np.exp(np.linspace(math.log(T_MIN), math.log(T_MAX), 20001))
    best = min(grid, key=lambda t: nll(logits, labels, t))
    assert fitted.temperature == pytest.approx(best, rel=2e-3)
    assert nll(logits, labels, fitted.temperature) <= nll(logits, labels, best) + 1e-12
    assert fitted.note == (
        f"T={fitted.temperature:.4g} fitted on 300 val images (val NLL {nll(logits, labels, 1.0):.4f}"
        f" -> {nll(logits, labels, fitted.temperature):.4f})"
    )


def test_all_correct_val_matches_confidence_to_the_smoothed_accuracy() -> None:
    """No NLL minimum when val is separated: T -> 0 would make every test answer ~100% sure."""
    labels = torch.arange(12) % 3
    logits = 0.3 * torch.nn.functional.one_hot(labels, 3).float()  # right but shy: confidence ~0.40
    fitted = fit_temperature(logits, labels)
    confidence = torch.softmax(logits.double() / fitted.temperature, -1).max(-1).values.mean()
    assert float(confidence) == pytest.approx(13 / 14, abs=1e-9)
    assert T_MIN < fitted.temperature < 1
    assert "all 12 val images correct" in fitted.note


def test_disabled_or_without_val_the_temperature_is_one() -> None:
    val = FeatureSet(torch.randn(6, 4), torch.arange(6) % 3)
    never = lambda features: pytest.fail("logits computed although calibration is off")  # noqa: E731
    assert calibrate(False, val, never).temperature == 1.0
    assert calibrate(True, None, never).temperature == 1.0
    assert calibrate(True, FeatureSet(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)), never).temperature == 1.0


# --- in a head ------------------------------------------------------------------------------------


def noisy(per_class: int, seed: int) -> FeatureSet:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(per_class * 3) % 3
    return FeatureSet(torch.eye(16)[labels] + 0.25 * torch.randn(len(labels), 16, generator=generator), labels)


def test_linear_probe_calibrates_on_val_without_moving_its_argmax(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    train, val, test = noisy(10, 0), noisy(10, 1), noisy(50, 2)
    task = Task(CLASSES, seed=1)
    head = LinearProbeHead(make_config().linear_probe).fit(task, train, val)
    plain = LinearProbeHead(make_config("linear_probe.calibrate=false").linear_probe).fit(task, train, val)
    assert torch.equal(head.weight_, plain.weight_) and torch.equal(head.bias_, plain.bias_)  # training untouched
    assert float(plain.temperature_) == 1.0 and torch.equal(
        plain.logits(test.features), plain.uncalibrated_logits(test.features)
    )
    temperature = float(head.temperature_)
    assert temperature == pytest.approx(fit_temperature(plain.logits(val.features), val.labels).temperature, rel=1e-6)
    assert temperature < 0.5  # the probe's softmax is shy after 20 epochs at lr 1e-2 (the ECE 0.74)
    raw, scaled = plain.logits(test.features), head.logits(test.features)
    torch.testing.assert_close(scaled, raw / temperature)
    assert torch.equal(head.predict(test.features), plain.predict(test.features))
    assert ece(scaled, test.labels) < ece(raw, test.labels) - 0.1  # measured: 0.34 -> 0.17
    assert nll(scaled, test.labels, 1.0) < nll(raw, test.labels, 1.0)

    stem = tmp_path / "shot_10-seed_1"
    save_head(head, stem, CLASSES)
    loaded, _ = load_head(stem)
    assert float(loaded.temperature_) == float(head.temperature_)
    assert torch.equal(loaded.logits(test.features), scaled)


def test_linear_probe_saved_before_calibration_loads_with_temperature_one(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    head = LinearProbeHead(make_config("linear_probe.calibrate=false").linear_probe).fit(
        Task(CLASSES, seed=1), noisy(5, 0)
    )
    state = head.state_dict()
    del state["temperature"]  # the file layout of earlier versions
    loaded = LinearProbeHead(head.config)
    loaded.load_state(state, {})
    x = noisy(5, 3).features
    assert float(loaded.temperature_) == 1.0 and torch.equal(loaded.logits(x), head.logits(x))
