"""Linear probe: it learns, selects its epoch on val (never test), calibrates on val, is deterministic, and
resumes a killed fit to the same head file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from torch import nn

from fewclip.runner import pipeline
from fewclip.data.prepare import load_prepared
from fewclip.data.splits import load_split
from fewclip.features import load_features
from fewclip.heads import FeatureSet, LinearProbeHead, Task, normalize, save_head
from tests.heads.adapter_tasks import CallCounter, Killed

CLASSES = ["a", "b", "c"]
HISTORY_KEYS = ["epoch", "train_loss", "val_accuracy", "val_macro_f1", "val_loss"]


def separable(per_class: int, seed: int, dim: int = 16, noise: float = 0.3) -> FeatureSet:
    """Three classes around orthogonal directions: linearly separable with a wide margin."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(per_class * len(CLASSES)) % len(CLASSES)
    centres = 3 * torch.eye(dim)[: len(CLASSES)]
    return FeatureSet(centres[labels] + noise * torch.randn(len(labels), dim, generator=generator), labels)


def random_task(seed: int = 2) -> tuple[FeatureSet, FeatureSet]:
    """Labels unrelated to features: val macro-F1 wanders, so the best epoch is not the last."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(40, 16, generator=generator), torch.randint(0, 3, (40,), generator=generator)
    return FeatureSet(x[:25], y[:25]), FeatureSet(x[25:], y[25:])


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Independent of fewclip.metrics: mean over true classes of 2 tp / (2 tp + fp + fn)."""
    scores = []
    for c in np.unique(y_true):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp, fn = np.sum((y_pred == c) & (y_true != c)), np.sum((y_pred != c) & (y_true == c))
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


def probe(make_config: Callable[..., Any], *overrides: str) -> LinearProbeHead:
    return LinearProbeHead(make_config(*overrides).linear_probe)


def test_learns_a_separable_task(make_config: Callable[..., Any]) -> None:
    train, val = separable(10, seed=0), separable(5, seed=1)
    head = probe(
        make_config, "linear_probe.epochs=40", "linear_probe.batch_size=8", "linear_probe.select=val_macro_f1"
    ).fit(Task(CLASSES, seed=1), train, val)
    losses = [row["train_loss"] for row in head.history_]
    assert losses[-1] < 0.25 * losses[0]
    assert all(later < earlier for earlier, later in zip(losses, losses[5:]))  # falling, allowing for noise
    assert max(row["val_accuracy"] for row in head.history_) == 1.0
    scores = [row["val_macro_f1"] for row in head.history_]
    assert scores.count(1.0) > 1  # a plateau: among the tied epochs the lowest val loss wins
    tied = [i for i, score in enumerate(scores) if score == 1.0]
    best_tied = min(tied, key=lambda i: (head.history_[i]["val_loss"], i))
    assert head.best_epoch_ == best_tied + 1
    assert head.best_epoch_ > tied[0] + 1  # the loss keeps falling on the plateau: not the first tied epoch
    assert (head.predict(val.features) == val.labels).all()
    assert (head.predict(train.features) == train.labels).all()


def test_history_has_loss_and_val_metrics_for_every_epoch(make_config: Callable[..., Any]) -> None:
    train, val = random_task()
    head = probe(make_config).fit(Task(CLASSES, seed=1), train, val)
    epochs = make_config().linear_probe.epochs
    assert len(head.history_) == epochs == 20
    assert [list(row) for row in head.history_] == [HISTORY_KEYS] * epochs
    assert [row["epoch"] for row in head.history_] == list(range(1, epochs + 1))
    assert all(np.isfinite(row["train_loss"]) and row["train_loss"] > 0 for row in head.history_)

    without_val = probe(make_config).fit(Task(CLASSES, seed=1), train)
    assert [list(row) for row in without_val.history_] == [["epoch", "train_loss"]] * epochs
    assert without_val.best_epoch_ == epochs


def test_model_selection_keeps_the_best_val_macro_f1_epoch(make_config: Callable[..., Any]) -> None:
    train, val = random_task()
    task = Task(CLASSES, seed=1)
    head = probe(make_config, "linear_probe.select=val_macro_f1").fit(task, train, val)
    scores = [row["val_macro_f1"] for row in head.history_]
    key = [(row["val_macro_f1"], -row["val_loss"]) for row in head.history_]
    assert head.best_epoch_ == max(range(len(key)), key=lambda i: (key[i], -i)) + 1
    assert scores[head.best_epoch_ - 1] == max(scores)
    assert head.best_epoch_ < len(scores)  # precondition: selection differs from simply stopping at the end

    # the kept weights are that epoch's: the same run stopped there gives them bit for bit
    stopped = probe(make_config, f"linear_probe.epochs={head.best_epoch_}", "linear_probe.select=last").fit(
        task, train, val
    )
    assert torch.equal(head.weight_, stopped.weight_) and torch.equal(head.bias_, stopped.bias_)
    # and they score what the history says, by an independent macro-F1
    pred = head.predict(val.features).numpy()
    assert macro_f1(val.labels.numpy(), pred) == pytest.approx(max(scores), abs=1e-12)
    best_row = head.history_[head.best_epoch_ - 1]
    assert float(np.mean(pred == val.labels.numpy())) == pytest.approx(best_row["val_accuracy"])

    last = probe(make_config, "linear_probe.select=last").fit(task, train, val)
    assert last.best_epoch_ == len(scores)
    assert not torch.equal(last.weight_, head.weight_)


def test_same_seed_gives_identical_weights(make_config: Callable[..., Any]) -> None:
    train, val = separable(10, seed=0), separable(5, seed=1)
    torch.manual_seed(123)
    first = probe(make_config).fit(Task(CLASSES, seed=7), train, val)
    torch.manual_seed(456)  # the global RNG must not matter
    torch.rand(10)
    second = probe(make_config).fit(Task(CLASSES, seed=7), train, val)
    assert torch.equal(first.weight_, second.weight_) and torch.equal(first.bias_, second.bias_)
    assert first.history_ == second.history_
    other = probe(make_config).fit(Task(CLASSES, seed=8), train, val)
    assert not torch.equal(first.weight_, other.weight_)


def test_resumes_a_killed_fit_to_the_same_head_file(
    make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in epoch 3, a fit resumes from epoch 2's checkpoint (weights, AdamW state, the generator's place in
    its stream, the kept best epoch) and saves the bytes an uninterrupted fit saves."""
    config = make_config("linear_probe.epochs=6", "linear_probe.batch_size=8").linear_probe
    train, val = random_task()  # 25 train images: 4 batches of 8; best epoch not the last

    def fit(checkpoint: Path | None) -> LinearProbeHead:
        return LinearProbeHead(config).fit(Task(CLASSES, seed=3, checkpoint=checkpoint), train, val)

    reference = fit(None)
    per_epoch = 4 + 1  # four batches, then one val pass
    calls = CallCounter(monkeypatch, nn.Linear, "forward", fail_at=2 * per_epoch + 3)
    checkpoint = tmp_path / "linear_probe.ckpt.safetensors"
    with pytest.raises(Killed):
        fit(checkpoint)
    assert checkpoint.is_file()
    calls.restart()
    resumed = fit(checkpoint)
    assert calls.count == 4 * per_epoch  # epochs 3 to 6 only
    assert resumed.history_ == reference.history_ and resumed.best_epoch_ == reference.best_epoch_
    save_head(reference, tmp_path / "reference", CLASSES)
    save_head(resumed, tmp_path / "resumed", CLASSES)
    for suffix in (".safetensors", ".json"):
        assert (tmp_path / f"resumed{suffix}").read_bytes() == (tmp_path / f"reference{suffix}").read_bytes()


def test_logits_are_a_linear_map_of_normalised_features(make_config: Callable[..., Any]) -> None:
    train = separable(10, seed=0)
    head = probe(make_config).fit(Task(CLASSES, seed=1), train)
    x = separable(4, seed=3).features
    expected = normalize(x) @ head.weight_.T + head.bias_
    assert torch.equal(head.logits(x), expected)
    assert torch.allclose(head.logits(5 * x), head.logits(x), atol=1e-6)  # scale-invariant: features are normalised


def test_needs_training_features(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="training features"):
        probe(make_config).fit(Task(CLASSES), None)


def test_pipeline_passes_only_train_and_val_never_test(
    make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[FeatureSet, FeatureSet]] = []
    original_fit = LinearProbeHead.fit

    def spy(self: LinearProbeHead, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None):
        seen.append((train, val))
        return original_fit(self, task, train, val)

    monkeypatch.setattr(LinearProbeHead, "fit", spy)
    config = make_config("methods=[linear_probe]", "few_shot.shots=[1,4]")
    pipeline.run(config)

    ctx = pipeline.RunContext(config)
    _, _, test_records = load_prepared(ctx.layout)
    test_rows = {row.numpy().tobytes() for row in load_features(ctx.cache, test_records)[0]}
    assert len(seen) == 2
    for (train, val), shots in zip(seen, (1, 4)):
        train_records, val_records = load_split(ctx.layout, 1, shots)
        for given, records in ((train, train_records), (val, val_records)):
            features, labels = load_features(ctx.cache, records)
            assert torch.equal(given.features, features) and torch.equal(given.labels, labels)
            assert not test_rows & {row.numpy().tobytes() for row in given.features}
        assert len(train) == 3 * shots and len(val) == 3 * 2
