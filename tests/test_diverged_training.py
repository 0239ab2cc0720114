"""Training whose loss stops being finite is stopped and named, never saved or scored (issue 20, item 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from fewclip.runner import pipeline
from fewclip.heads import FeatureSet, Task, load_head, save_head
from fewclip.heads.artifacts import DamagedArtifact, write_tensors
from fewclip.heads.base import TrainingDiverged, meaning_digest
from fewclip.heads.prompts.coop import CoOpConfig, CoOpHead
from fewclip.heads.on_features.linear_probe import LinearProbeConfig, LinearProbeHead
from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.runner.layout import RunLayout


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> Any:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.mark.parametrize("method", ["linear_probe", "coop"])
def test_a_diverging_unit_stops_the_run_naming_it_and_saves_nothing(
    make_config: Callable[..., Any], method: str
) -> None:
    config = make_config(
        f"methods=[zero_shot,{method}]", "few_shot.shots=[2]", f"{method}.lr=1e12", f"{method}.epochs=10"
    )
    with pytest.raises(
        TrainingDiverged,
        match=rf"{method}/shot_2-seed_1: training diverged: the loss became "
        rf"(nan|inf) in epoch \d+ at learning rate .*lower {method}'s lr",
    ):
        pipeline.run(config)
    heads = RunLayout(Path(config.output.dir)).heads
    assert not list((heads / method).glob("shot_2-seed_1*"))  # neither head nor checkpoint
    assert (heads / "zero_shot" / "shot_0-seed_0.json").is_file()  # what was trained before is kept


def test_a_head_with_non_finite_weights_is_never_saved(tmp_path: Path) -> None:
    train = FeatureSet(torch.randn(6, 8), torch.tensor([0, 1, 0, 1, 0, 1]))
    head = LinearProbeHead(LinearProbeConfig(epochs=1)).fit(Task(["a", "b"]), train)
    head.weight_[0, 0] = float("nan")
    with pytest.raises(ValueError, match="not saving unit: its weight hold nan or infinite values"):
        save_head(head, tmp_path / "unit", ["a", "b"])
    assert not list(tmp_path.iterdir())


def test_a_head_file_of_nan_with_a_recomputed_checksum_is_refused(tmp_path: Path) -> None:
    train = FeatureSet(torch.randn(6, 8), torch.tensor([0, 1, 0, 1, 0, 1]))
    head = LinearProbeHead(LinearProbeConfig(epochs=1)).fit(Task(["a", "b"]), train)
    save_head(head, tmp_path / "unit", ["a", "b"])
    tensors = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in head.state_dict().items()
    }
    meta_file = tmp_path / "unit.json"
    meta = json.loads(meta_file.read_text())
    meta["safetensors_sha256"] = write_tensors(tmp_path / "unit.safetensors", tensors)  # a consistent file of nan
    meta["meaning_sha256"] = meaning_digest(meta)
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(
        DamagedArtifact, match=r"unit\.safetensors: damaged head file \(bias, temperature, weight hold nan"
    ):
        load_head(tmp_path / "unit")


def test_a_diverging_prompt_learner_raises_with_epoch_and_rate(backbone: Any) -> None:
    train = FeatureSet(torch.randn(8, backbone.dim), torch.tensor([0, 1] * 4))
    config = CoOpConfig(n_ctx=2, epochs=5, lr=1e12, batch_size=4, warmup_epochs=0)
    with pytest.raises(TrainingDiverged) as caught:
        CoOpHead(config).fit(Task(["red circle", "blue square"], backbone=backbone, seed=1), train)
    assert not torch.isfinite(torch.tensor(caught.value.loss)) and 1 <= caught.value.epoch <= 5
    assert caught.value.lr > 1e11


def test_fewclip_run_retrains_a_head_of_nan(make_config: Callable[..., Any]) -> None:
    config = make_config("methods=[linear_probe]", "few_shot.shots=[1]")
    pipeline.run(config)
    stem = RunLayout(Path(config.output.dir)).heads / "linear_probe" / "shot_1-seed_1"
    head, meta = load_head(stem)
    good = head.logits(torch.randn(3, head.weight_.shape[1]))
    tensors = {k: torch.full_like(v, float("nan")) for k, v in head.state_dict().items()}
    meta["safetensors_sha256"] = write_tensors(stem.with_name(stem.name + ".safetensors"), tensors)
    meta["meaning_sha256"] = meaning_digest(meta)
    stem.with_name(stem.name + ".json").write_text(json.dumps(meta))
    pipeline.run(config)  # the damaged head is retrained, not evaluated
    retrained, _ = load_head(stem)
    assert torch.isfinite(retrained.weight_).all() and good.shape == (3, 3)
