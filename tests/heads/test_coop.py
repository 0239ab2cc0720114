"""CoOp: learned context through the frozen text tower, checked against zero-shot, config and length
errors, frozen CLIP, a learnable task, resuming a killed fit or pipeline run, and the saved artifact.

Prompt layouts and the training loop's resume are tested in test_prompt_learning.py."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

import fewclip.backbones
from fewclip.runner import pipeline
from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.runner.config import ConfigError
from fewclip.heads import CoOpConfig, CoOpHead, FeatureSet, Task, ZeroShotHead, load_head, normalize, save_head
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.learning import assemble, build_layout, init_context

CLASS_NAMES = ["red circle", "green square", "blue triangle"]
# six classes for the learnable task: more classes make zero-shot weaker
TASK_NAMES = ["red circle", "green square", "blue triangle", "yellow star", "pink heart", "grey moon"]


class Killed(Exception):
    """Stands in for the process being killed at a chosen point."""


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


def width(backbone: CLIPBackbone) -> int:
    return int(backbone.model.config.text_config.hidden_size)


def random_features(backbone: CLIPBackbone, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, backbone.dim, generator=torch.Generator().manual_seed(seed))


def test_class_names_split_into_several_tokens(backbone: CLIPBackbone) -> None:
    for name in CLASS_NAMES:
        assert len(backbone.tokenizer(name, add_special_tokens=False)["input_ids"]) >= 5, name


# --- the untrained prompt is the zero-shot template -----------------------------------------------


def test_ctx_init_untrained_equals_single_template_zero_shot(backbone: CLIPBackbone) -> None:
    tower = PromptTextTower(backbone.model)
    n_ctx = CoOpConfig(ctx_init="a photo of a").n_ctx  # the config resolves it: one vector per word
    ctx = init_context(
        tower, backbone.tokens, n_ctx, "a photo of a", len(CLASS_NAMES), False, torch.Generator().manual_seed(0)
    )
    assert n_ctx == 4 and ctx.shape == (4, width(backbone))
    class_text = CoOpPrompts(backbone, CLASS_NAMES, n_ctx, "end", "fp32", "coop").features(ctx)
    zero_shot = ZeroShotHead().fit(Task(CLASS_NAMES, ["a photo of a {}."], backbone))
    features = random_features(backbone, 20)
    coop_logits = backbone.logit_scale * normalize(features) @ class_text.T
    expected = zero_shot.logits(features)
    assert (coop_logits - expected).abs().max().item() <= 1e-4
    assert (class_text - zero_shot.prototypes_).abs().max().item() <= 1e-5
    assert expected.std().item() > 0.1
    # another initialisation gives other logits, so the comparison has teeth
    other = init_context(tower, backbone.tokens, 4, "a photo of the", 3, False, torch.Generator())
    other_text = CoOpPrompts(backbone, CLASS_NAMES, 4, "end", "fp32", "coop").features(other)
    assert (backbone.logit_scale * normalize(features) @ other_text.T - expected).abs().max().item() > 1e-2


def test_init_context_fills_the_n_ctx_the_config_resolved(backbone: CLIPBackbone) -> None:
    """ctx_init's length is counted once, where the config is read; init_context fills that many vectors."""
    tower = PromptTextTower(backbone.model)
    with pytest.raises(ValueError, match="ctx_init 'a photo of a' has 4 tokens, not the 16 context vectors"):
        init_context(tower, backbone.tokens, 16, "a photo of a", 3, False, torch.Generator())
    head = CoOpHead(CoOpConfig(ctx_init="a photo of a", epochs=1)).fit(
        Task(CLASS_NAMES, backbone=backbone, seed=1), tiny_task_data(backbone, CLASS_NAMES, per_class=2)
    )
    assert head.n_ctx_ == head.config.n_ctx == 4 and head.ctx_.shape == (4, width(backbone))


# --- errors before training and at config load ----------------------------------------------------


def tiny_task_data(backbone: CLIPBackbone, names: list[str], per_class: int = 2) -> FeatureSet:
    labels = torch.arange(len(names)).repeat(per_class)
    return FeatureSet(random_features(backbone, len(labels), seed=1), labels)


@pytest.fixture()
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started")

    for module in ("fewclip.heads.prompts.coop", "fewclip.heads.prompts.cocoop"):
        monkeypatch.setattr(f"{module}.train_on_features", refuse)


def test_prompt_longer_than_the_positions_fails_before_training(
    backbone: CLIPBackbone, no_training: None, make_config: Callable[..., Any]
) -> None:
    head = CoOpHead(make_config("coop.n_ctx=30").coop)
    data = tiny_task_data(backbone, CLASS_NAMES)
    # 'red circle' is 9 tokens: 30 + 9 + SOS, '.', EOT = 42 > 32
    with pytest.raises(
        ValueError,
        match=r"class 'red circle' needs 42 tokens .* model has 32 text positions.*lower coop\.n_ctx to at most 20",
    ):
        head.fit(Task(CLASS_NAMES, backbone=backbone), data, data)


def test_the_class_that_does_not_fit_is_named(backbone: CLIPBackbone) -> None:
    """'blue triangle' is 12 tokens: n_ctx 17 fills the 32 positions exactly; 18 is one too many."""
    names = ["red circle", "blue triangle"]
    layout = build_layout(backbone.tokens, names, 17, "end", 32)
    assert layout.length == 32
    ctx = torch.zeros(17, width(backbone))
    assert CoOpPrompts(backbone, names, 17, "middle", "fp32", "coop").features(ctx).shape == (2, backbone.dim)
    with pytest.raises(ValueError, match=r"class 'blue triangle' needs 33 tokens \(18 context \+ 12 for the name"):
        build_layout(backbone.tokens, names, 18, "end", 32)


def test_long_class_name_fails_cocoop_before_training(
    backbone: CLIPBackbone, no_training: None, make_config: Callable[..., Any]
) -> None:
    names = ["red circle", "an extremely long class name that goes on"]
    head = fewclip.heads.CoCoOpHead(make_config().cocoop)  # ctx_init "a photo of a": 4 context tokens
    data = tiny_task_data(backbone, names)
    # the name alone (33 tokens + SOS, '.', EOT) is too long: no context length can help, so n_ctx is not blamed
    with pytest.raises(
        ValueError,
        match=r"cocoop: the prompt for class 'an extremely long class name that goes on' "
        r"needs 36 tokens before any context \(33 for the name.* 32 text positions"
        r".*; shorten the class name \(dataset.rename\)$",
    ):
        head.fit(Task(names, backbone=backbone), data, data)


@pytest.mark.parametrize(
    "override, shown",
    [
        (
            "coop.class_token_position=side",
            "coop.class_token_position: Input should be 'end', 'middle' or 'front' (got 'side')",
        ),
        ("coop.precision=fp8", "coop.precision: Input should be 'fp32', 'bf16' or 'fp16' (got 'fp8')"),
        ("coop.epochs=0", "coop.epochs: epochs must be >= 1"),
        ("coop.epochs={4: 0}", "coop.epochs: epochs must be >= 1"),
        ("coop.epochs={0: 5}", "coop.epochs: epochs must be >= 1"),
    ],
)
def test_bad_coop_values_fail_config_validation_naming_the_key(
    override: str, shown: str, make_config: Callable[..., Any]
) -> None:
    with pytest.raises(ConfigError) as error:
        make_config(override)
    assert f"\n  {shown}" in str(error.value)


def test_ctx_init_with_class_specific_context_fails_at_load_saying_which_wins(make_config: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError) as error:
        make_config("coop.ctx_init=a photo of a", "coop.class_specific_context=true")
    message = str(error.value)
    assert "coop" in message and "ctx_init" in message and "class_specific_context" in message
    assert "ctx_init wins" in message
    # each alone is fine
    assert make_config("coop.ctx_init=a photo of a").coop.ctx_init == "a photo of a"
    assert make_config("coop.class_specific_context=true").coop.class_specific_context is True


# --- only the context trains ----------------------------------------------------------------------


@pytest.fixture()
def optimizer_params(monkeypatch: pytest.MonkeyPatch) -> list[list[torch.Tensor]]:
    """The parameter list of every SGD optimizer built from here on."""
    seen: list[list[torch.Tensor]] = []
    original = torch.optim.SGD

    class Spy(original):  # type: ignore[misc, valid-type]
        def __init__(self, params: Any, *args: Any, **kwargs: Any) -> None:
            params = list(params)
            seen.append(params)
            super().__init__(params, *args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", Spy)
    return seen


def clip_state(backbone: CLIPBackbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.model.state_dict().items()}


def test_only_the_context_trains_and_clip_stays_bit_identical(
    backbone: CLIPBackbone, optimizer_params: list[list[torch.Tensor]], make_config: Callable[..., Any]
) -> None:
    before = clip_state(backbone)
    data = tiny_task_data(backbone, CLASS_NAMES, per_class=4)
    config = make_config("coop.epochs=3", "coop.warmup_epochs=0", "coop.select=last", "coop.lr=0.05").coop
    head = CoOpHead(config).fit(Task(CLASS_NAMES, backbone=backbone, seed=2), data)
    assert len(optimizer_params) == 1 and len(optimizer_params[0]) == 1
    assert optimizer_params[0][0].shape == (16, width(backbone))
    assert head.trainable_parameters() == 16 * width(backbone)
    after = backbone.model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    assert all(p.grad is None and not p.requires_grad for p in backbone.model.parameters())
    initial = init_context(
        PromptTextTower(backbone.model), backbone.tokens, 16, None, 3, False, torch.Generator().manual_seed(2)
    )
    assert (head.ctx_ - initial).abs().max().item() > 1e-4  # the context did train


# --- a learnable task -----------------------------------------------------------------------------


def synthetic_task(backbone: CLIPBackbone, per_class: int, seed: int) -> FeatureSet:
    """Image features = text features of "<4 hidden context vectors> {name}." plus small noise.

    The hidden context is a fixed random one (not words), so learning CoOp's context can recover it;
    "a photo of a {}." is a weaker match.
    """
    hidden_ctx = torch.randn(4, width(backbone), generator=torch.Generator().manual_seed(123)) * 0.1
    prototypes = CoOpPrompts(backbone, TASK_NAMES, 4, "end", "fp32", "coop").features(hidden_ctx)
    labels = torch.arange(len(TASK_NAMES)).repeat(per_class)
    noise = torch.randn(len(labels), backbone.dim, generator=torch.Generator().manual_seed(seed))
    return FeatureSet(prototypes[labels] + 0.03 * noise, labels)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return (predictions == labels).float().mean().item()


def test_coop_learns_a_learnable_task_and_beats_zero_shot(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    train, val = synthetic_task(backbone, 4, seed=1), synthetic_task(backbone, 8, seed=2)
    config = make_config("coop.n_ctx=4", "coop.epochs=20", "coop.batch_size=8").coop  # lr etc.: the defaults
    head = CoOpHead(config).fit(Task(TASK_NAMES, backbone=backbone, seed=0), train, val)
    history = head.history_
    assert len(history) == 20
    assert history[0]["train_loss"] - history[-1]["train_loss"] > 0.4
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    zero_shot = accuracy(
        ZeroShotHead().fit(Task(TASK_NAMES, ["a photo of a {}."], backbone)).predict(val.features), val.labels
    )
    learned = accuracy(head.predict(val.features), val.labels)
    assert history[head.best_epoch_ - 1]["val_accuracy"] == learned  # the kept epoch is the one predicting
    assert learned >= 0.95
    assert learned > zero_shot + 0.15, (learned, zero_shot)
    assert history[0]["val_accuracy"] < learned  # it learned: the first epoch was worse


# --- resuming (the loop itself: tests/heads/test_prompt_learning.py) ---------------------------


def test_coop_head_ignores_a_checkpoint_of_other_class_names(
    backbone: CLIPBackbone, tmp_path: Path, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same features, labels and settings, renamed classes: other prompts, so nothing may be resumed."""
    config = make_config("coop.n_ctx=4", "coop.epochs=3", "coop.batch_size=4").coop
    train = tiny_task_data(backbone, CLASS_NAMES, per_class=4)
    renamed = ["red square", "green circle", "blue star"]

    def fit(names: list[str], checkpoint: Path | None) -> CoOpHead:
        return CoOpHead(config).fit(Task(names, backbone=backbone, seed=4, checkpoint=checkpoint), train)

    reference = fit(renamed, None)
    calls = FeatureCalls(monkeypatch, fail_at=2 * 3 + 1)  # 3 batches per epoch, no val: killed in epoch 3
    checkpoint = tmp_path / "coop.ckpt.safetensors"
    with pytest.raises(Killed):
        fit(CLASS_NAMES, checkpoint)
    assert checkpoint.is_file()
    calls.restart()
    again = fit(renamed, checkpoint)
    assert calls.count == 3 * 3 + 1  # trained from scratch
    assert again.history_ == reference.history_
    assert torch.equal(again.ctx_, reference.ctx_)


def test_coop_head_resumes_through_task_checkpoint(
    backbone: CLIPBackbone, tmp_path: Path, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config("coop.n_ctx=4", "coop.epochs=4", "coop.batch_size=4").coop
    train = tiny_task_data(backbone, CLASS_NAMES, per_class=4)
    val = FeatureSet(random_features(backbone, 6, seed=9), torch.arange(3).repeat(2))

    def fit(checkpoint: Path | None) -> CoOpHead:
        return CoOpHead(config).fit(Task(CLASS_NAMES, backbone=backbone, seed=4, checkpoint=checkpoint), train, val)

    per_epoch = 3 + 1  # 12 images in batches of 4, then one val call
    reference = fit(None)
    calls = FeatureCalls(monkeypatch, fail_at=2 * per_epoch + 3)
    checkpoint = tmp_path / "coop.ckpt.safetensors"
    with pytest.raises(Killed):
        fit(checkpoint)
    calls.restart()
    resumed = fit(checkpoint)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4, then the final class features
    assert resumed.history_ == reference.history_ and resumed.best_epoch_ == reference.best_epoch_
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


class FeatureCalls:
    """Counts CoOpPrompts.features calls (one per batch, one per val pass, one at the end of fit);
    raises Killed at call number ``fail_at`` when it is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.count, self.fail_at = 0, fail_at
        original = CoOpPrompts.features

        def counting(prompts: CoOpPrompts, ctx: torch.Tensor) -> torch.Tensor:
            self.count += 1
            if self.count == self.fail_at:
                raise Killed(f"killed at features call {self.count}")
            return original(prompts, ctx)

        monkeypatch.setattr(CoOpPrompts, "features", counting)

    def restart(self) -> None:
        self.count, self.fail_at = 0, None


def read_history(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "results" / "history" / "coop" / "shot_2-seed_1.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_pipeline_resumes_a_killed_coop_unit_and_cleans_up(
    make_config: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ["methods=[coop]", "few_shot.shots=[2]", "coop.n_ctx=4", "coop.epochs=4", "coop.batch_size=2"]
    clean = make_config(*overrides, f"output.dir={tmp_path / 'clean'}")
    killed = make_config(*overrides, f"output.dir={tmp_path / 'killed'}")
    pipeline.run(clean)
    assert sorted(p.name for p in (tmp_path / "clean" / "heads" / "coop").iterdir()) == [
        "shot_2-seed_1.json",
        "shot_2-seed_1.safetensors",
    ]  # no checkpoint left behind

    per_epoch = 3 + 1  # 2 shots x 3 classes in batches of 2, then one val call
    calls = FeatureCalls(monkeypatch, fail_at=2 * per_epoch + 2)
    with pytest.raises(Killed):
        pipeline.run(killed)
    heads = tmp_path / "killed" / "heads" / "coop"
    assert list(heads.glob("shot_2-seed_1.ckpt*"))  # the epochs done so far are on disk
    assert not (heads / "shot_2-seed_1.json").exists()
    calls.restart()
    pipeline.run(killed)
    assert calls.count == 2 * per_epoch + 1  # epochs 3 and 4 only, then the class features
    assert sorted(p.name for p in heads.iterdir()) == ["shot_2-seed_1.json", "shot_2-seed_1.safetensors"]
    assert not list((tmp_path / "killed").rglob("*.ckpt*")) and not list((tmp_path / "killed").rglob("*.tmp"))

    clean_tensors = load_file(str(tmp_path / "clean" / "heads" / "coop" / "shot_2-seed_1.safetensors"))
    resumed_tensors = load_file(str(heads / "shot_2-seed_1.safetensors"))
    assert clean_tensors.keys() == resumed_tensors.keys()
    assert all(torch.equal(clean_tensors[k], resumed_tensors[k]) for k in clean_tensors)
    assert read_history(tmp_path / "killed") == read_history(tmp_path / "clean")
    assert len(read_history(tmp_path / "clean")) == 4


# --- the trained artifact -------------------------------------------------------------------------


def test_saved_coop_is_fixed_class_text_features(
    backbone: CLIPBackbone, tmp_path: Path, make_config: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, val = synthetic_task(backbone, 2, seed=1), synthetic_task(backbone, 2, seed=2)
    config = make_config("coop.n_ctx=4", "coop.epochs=3").coop
    head = CoOpHead(config).fit(Task(TASK_NAMES, backbone=backbone, seed=0), train, val)
    # the class text features are those of the kept context: every full prompt through the plain tower
    prompts = CoOpPrompts(backbone, TASK_NAMES, 4, "end", "fp32", "coop")
    with torch.no_grad():
        embeds = assemble(prompts.base, head.ctx_.expand(len(TASK_NAMES), -1, -1), prompts.layout.ctx_positions)
        recomputed = normalize(prompts.tower(embeds, prompts.layout.eot_positions))
    assert (head.class_text_features_ - recomputed).abs().max().item() <= 1e-6
    assert (head.class_text_features_.norm(dim=-1) - 1).abs().max().item() < 1e-6

    stem = tmp_path / "heads" / "coop" / "shot_2-seed_1"
    save_head(head, stem, TASK_NAMES)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the saved head needed the backbone or the text tower")

    for target, attr in (
        (fewclip.backbones, "load_backbone"),
        (CLIPBackbone, "__init__"),
        (PromptTextTower, "forward"),
        (PromptTextTower, "__init__"),
    ):
        monkeypatch.setattr(target, attr, refuse)
    loaded, _ = load_head(stem)
    features = random_features(backbone, 15, seed=11)
    logits = loaded.logits(features)
    expected = (
        math.exp(backbone.model.logit_scale.item()) * (features / features.norm(dim=-1, keepdim=True)) @ recomputed.T
    )
    assert (loaded.uncalibrated_logits(features) - expected).abs().max().item() <= 1e-5
    assert float(loaded.temperature_) != 1.0  # fitted on val (calibrate: true), divides the CLIP logits
    assert torch.equal(logits, loaded.uncalibrated_logits(features) / loaded.temperature_)
    assert expected.std().item() > 0.1
    assert torch.equal(logits, head.logits(features))
    # a fixed matrix: one image alone scores as in the batch (to float rounding of a vector-matrix product)
    torch.testing.assert_close(loaded.logits(features[4:5]), logits[4:5], atol=1e-6, rtol=2e-6)
    assert torch.equal(loaded.class_text_features_, head.class_text_features_)
