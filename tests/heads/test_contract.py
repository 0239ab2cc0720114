"""One contract suite over every registered head (scikit-learn's ``parametrize_with_checks`` idea).

A head added to ``fewclip.heads.HEADS`` is picked up by ``list_heads()`` and must pass all of it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors import safe_open

import fewclip.backbones
from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.configbase import ConfigBlock
from fewclip.data.images import read_image
from fewclip.heads import HEADS, FeatureSet, Task, list_heads, load_head, save_head
from fewclip.heads.base import differentiable_logits
from fewclip.heads.contract import CAPABILITIES, contract_problems, fitted_problems
from fewclip.runner.run_context import head_config

# trainable parameter count per head, as a function of (feature dim d, classes C); a new head adds its own
# (image dim d, classes c, text width w) -> trainable parameters with the head's default config.
EXPECTED_TRAINABLE: dict[str, Callable[[int, int, int], int]] = {
    "zero_shot": lambda d, c, w: 0,
    "linear_probe": lambda d, c, w: d * c + c,
    "coop": lambda d, c, w: 16 * w,  # n_ctx 16, shared context
    # ctx_init "a photo of a" (4 tokens) + meta-net d -> d/16 -> w
    "cocoop": lambda d, c, w: 4 * w + (d * (d // 16) + d // 16) + ((d // 16) * w + w),
    "tip_adapter": lambda d, c, w: 0,  # training-free
    "tip_adapter_f": lambda d, c, w: 10 * c * d,  # one key per support image (10 per class here)
    "clip_adapter": lambda d, c, w: 2 * d * (d // 4),  # d -> d/4 -> d, no biases
    "zs_lp": lambda d, c, w: c * d,
    "clap": lambda d, c, w: c * d,
    "gda": lambda d, c, w: 0,  # training-free: Gaussians estimated, alpha searched
    "taskres": lambda d, c, w: c * d,  # one residual row per class
    "lp_pp": lambda d, c, w: c * d + 2 * c,  # visual weights, biases and the per-class text blend
    "proker": lambda d, c, w: 0,  # training-free: the regression is solved, beta and lambda searched
    "kgcoop": lambda d, c, w: 4 * w,  # ctx_init "a photo of a": 4 shared context tokens
    "prograd": lambda d, c, w: 16 * w,  # CoOp's 16 shared context tokens
    # 4 shared context tokens + the TKE d -> d/4 -> 4 class-aware tokens of width w
    "tcp": lambda d, c, w: 4 * w + (d * (d // 4) + d // 4) + ((d // 4) * 4 * w + 4 * w),
}


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def shape_data(shapes_dir: Path, backbone: CLIPBackbone) -> dict[str, Any]:
    """Tiny-CLIP features of the shapes images: train (first 2 per class are val) and test."""
    classes = sorted(p.name for p in (shapes_dir / "train").iterdir())

    def encode(split: str, pick: slice) -> FeatureSet:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted((shapes_dir / split / name).glob("*.png"))[pick]
            paths += files
            labels += [label] * len(files)
        pixels = torch.stack([torch.from_numpy(backbone.transform(read_image(p))) for p in paths])
        return FeatureSet(backbone.encode_images(pixels), torch.tensor(labels))

    return {
        "classes": [c.replace("_", " ") for c in classes],
        "val": encode("train", slice(0, 2)),
        "train": encode("train", slice(2, None)),
        "test": encode("test", slice(None)),
    }


CONTRACT_EPOCHS = 3  # the contract is about behaviour, not accuracy: the papers' 100-300 epochs only cost time


def build_head(name: str, make_config: Callable[..., Any]) -> Any:
    head_cls = HEADS.get(name)
    config = head_config(make_config(), name)
    if config is not None and "epochs" in type(config).model_fields:
        config = config.model_copy(update={"epochs": CONTRACT_EPOCHS})
    return head_cls(config)


def fit(head: Any, data: dict[str, Any], backbone: CLIPBackbone, make_config: Callable[..., Any], seed: int = 1) -> Any:
    """Fit the way the pipeline does: shot-free heads see no images."""
    task = Task(data["classes"], make_config().prompts.templates, backbone, seed)
    return head.fit(task, data["train"], data["val"]) if head.uses_shots else head.fit(task)


@pytest.fixture(params=list_heads())
def any_head(request: pytest.FixtureRequest) -> str:
    return request.param


# heads that tune the encoders train on images, not features: their fit/save/load checks are in test_clip_lora.py
@pytest.fixture(params=[n for n in list_heads() if not HEADS.get(n).tunes_encoders])
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_registry_lists_the_builtin_heads() -> None:
    assert {"zero_shot", "linear_probe", "clip_lora"} <= set(list_heads())


def test_head_class_declares_name_config_and_shots(any_head: str) -> None:
    head_cls = HEADS.get(any_head)
    assert head_cls.name == any_head
    assert issubclass(head_cls.Config, ConfigBlock)
    assert head_cls().config == head_cls.Config()  # every hyperparameter has a default
    # every capability is declared, and each declared one has the methods and config keys it promises
    assert contract_problems(head_cls) == []
    assert all(isinstance(getattr(head_cls, cap.flag), bool) for cap in CAPABILITIES)


def test_init_only_stores_config(any_head: str, make_config: Callable[..., Any]) -> None:
    config = head_config(make_config(), any_head)
    head = HEADS.get(any_head)(config)
    assert vars(head) == {"config": config}  # no learned state (nothing ending in "_") before fit
    assert head.config is config


def test_fit_returns_self_and_learned_state_ends_in_underscore(
    name: str, shape_data: dict, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    head = build_head(name, make_config)
    assert fit(head, shape_data, backbone, make_config) is head
    learned = set(vars(head)) - {"config"}
    assert learned and all(attr.endswith("_") for attr in learned), learned
    assert isinstance(head.history_, list)
    assert fitted_problems(head) == []  # the state its flags promise (best_epoch_, temperature_, ...), and no more
    if head.selects_epoch:  # one rule (heads.selection) chose it, over the epochs in history_
        assert head.best_epoch_ == head.selection_.epoch and 1 <= head.best_epoch_ <= len(head.history_)


def test_logits_shape_and_predict_is_argmax(
    name: str, shape_data: dict, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    head = fit(build_head(name, make_config), shape_data, backbone, make_config)
    test = shape_data["test"].features
    logits = head.logits(test)
    assert logits.shape == (len(test), len(shape_data["classes"]))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert not logits.requires_grad
    predictions = head.predict(test)
    assert predictions.dtype == torch.long
    assert torch.equal(predictions, logits.argmax(dim=-1))
    # one image's logits do not depend on the batch beyond float32 rounding: BLAS picks its kernel (and so its
    # summation order) by the shapes and the CPU, so bit-equality is no promise any head can keep everywhere
    alone, tolerance = head.logits(test[3:5]), 1e-5 * float(logits.abs().max())
    torch.testing.assert_close(alone, logits[3:5], atol=tolerance, rtol=1e-5)
    top2 = logits[3:5].topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 10 * tolerance  # a near-tie may fall either way on another CPU
    assert torch.equal(alone.argmax(-1)[clear], logits[3:5].argmax(-1)[clear])


def test_same_seed_fits_the_same_head(
    name: str, shape_data: dict, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    first = fit(build_head(name, make_config), shape_data, backbone, make_config)
    second = fit(build_head(name, make_config), shape_data, backbone, make_config)
    test = shape_data["test"].features
    assert torch.equal(first.logits(test), second.logits(test))


def test_trainable_parameters_count(
    name: str, shape_data: dict, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    if name not in EXPECTED_TRAINABLE:
        pytest.fail(f"head {name!r}: add its trainable-parameter count to EXPECTED_TRAINABLE in {__file__}")
    head = fit(build_head(name, make_config), shape_data, backbone, make_config)
    count = head.trainable_parameters()
    assert type(count) is int
    width = backbone.model.config.text_config.hidden_size
    assert count == EXPECTED_TRAINABLE[name](backbone.dim, len(shape_data["classes"]), width)


def test_linear_probe_trainable_parameters_on_512_dim_features(make_config: Callable[..., Any]) -> None:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(40, 512, generator=generator)
    labels = torch.arange(40) % 10
    head = HEADS.get("linear_probe")(make_config("linear_probe.epochs=2").linear_probe)
    head.fit(Task([f"class {i}" for i in range(10)], seed=0), FeatureSet(features, labels))
    assert head.trainable_parameters() == 5130 == EXPECTED_TRAINABLE["linear_probe"](512, 10, 512)
    # the temperature is fitted after training, on val: not a trained parameter
    assert sum(t.numel() for name, t in head.state_dict().items() if name != "temperature") == 5130


def test_save_then_load_gives_identical_logits_without_backbone(
    name: str,
    shape_data: dict,
    backbone: CLIPBackbone,
    make_config: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    head = fit(build_head(name, make_config), shape_data, backbone, make_config)
    templates = make_config().prompts.templates
    stem = tmp_path / "heads" / name / "shot_1-seed_1"

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a head was pickled or needed the backbone")

    for module, attr in (
        (pickle, "dump"),
        (pickle, "dumps"),
        (torch, "save"),
        (torch, "load"),
        (fewclip.backbones, "load_backbone"),
        (fewclip.backbones.CLIPBackbone, "__init__"),
    ):
        monkeypatch.setattr(module, attr, refuse)
    save_head(head, stem, shape_data["classes"], {"templates": templates})
    loaded, meta = load_head(stem)
    monkeypatch.undo()

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [f"heads/{name}/shot_1-seed_1.json", f"heads/{name}/shot_1-seed_1.safetensors"]
    with safe_open(str(stem.with_suffix(".safetensors")), framework="pt") as tensors:
        assert set(tensors.keys()) == set(head.state_dict())
    on_disk = json.loads(stem.with_suffix(".json").read_text())
    assert on_disk == meta
    assert meta["head"] == name and meta["class_names"] == shape_data["classes"]
    assert meta["config"] == head.config.model_dump(mode="json")
    assert meta["trainable_params"] == head.trainable_parameters()

    assert type(loaded) is type(head)
    assert loaded.config == head.config
    if loaded.needs_text_at_predict:  # prompts depend on the image: predicting needs the text tower
        loaded.attach(backbone, shape_data["classes"])
    test = shape_data["test"].features
    assert torch.equal(loaded.logits(test), head.logits(test))
    assert torch.equal(loaded.predict(test), head.predict(test))
    assert loaded.trainable_parameters() == head.trainable_parameters()
    assert loaded.history_ == head.history_
    assert fitted_problems(loaded) == []
    if loaded.selects_epoch:
        assert loaded.best_epoch_ == head.best_epoch_ == meta["best_epoch"]


def test_saliency_logits_carry_gradients_to_the_features(
    name: str, shape_data: dict, backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    """What saliency backpropagates through: the declared differentiable path, equal to the logits."""
    head = fit(build_head(name, make_config), shape_data, backbone, make_config)
    features = shape_data["test"].features[:4].clone().requires_grad_(True)
    logits = differentiable_logits(head, features)
    logits[:, 0].sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    torch.testing.assert_close(logits.detach(), head.logits(features.detach()), atol=1e-5, rtol=0)


# --- the contract checks themselves, on deliberately broken heads ----------------------------------


def conforming_fake() -> type:
    """A minimal head that passes ``contract_problems``; the tests below break one thing each."""

    class FakeConfig(ConfigBlock):
        select: str = "last"

    class Fake:
        name = "fake"
        config_key = "fake"
        Config = FakeConfig
        uses_shots, uses_text, checks_task, transfers, needs_text_at_predict = True, False, False, False, False
        per_template_scores, has_differentiable_logits, uses_augmented_views = False, False, False
        selects_epoch, calibrates, tunes_encoders = True, False, False
        paper, official_code, paper_selection = None, None, "validation-free"
        paper_selection_except: dict[str, str] = {}
        needs: frozenset[str] = frozenset()

    return Fake


def test_a_conforming_fake_head_passes() -> None:
    assert contract_problems(conforming_fake()) == []


@pytest.mark.parametrize(
    "breakage, problem",
    [
        ({"transfers": True}, "fake: transfers is True but the class lacks transfer()"),
        ({"tranfer": lambda self, backbone, names: self, "transfers": True}, "lacks transfer()"),  # misspelt method
        (
            {"attach": lambda self, backbone, names: self},
            "needs_text_at_predict is False but the class defines attach()",
        ),
        (
            {"has_differentiable_logits": True},
            "has_differentiable_logits is True but the class lacks differentiable_logits()",
        ),
        ({"uses_augmented_views": True}, "uses_augmented_views is True but its Config lacks the key 'augment_views'"),
        ({"selects_epoch": False}, "selects_epoch is False but its Config has the key 'select'"),
        ({"uses_text": True}, "a head that uses_text must declare checks_task"),
        ({"checks_task": True}, "checks_task is True but the class lacks check()"),
        ({"calibrates": None}, "fake: declare calibrates = True or False"),
        ({"config_key": "my block"}, "config_key must be the name of its top-level config block"),
        (
            {"name": "other", "paper": "Someone et al."},
            "other: declare official_code in the class that declares its name",
        ),
        (
            {"tunes_encoders": True, "image_logits": lambda self, pixels: pixels},
            "tunes_encoders is True but the class lacks image_saliency_pass()",
        ),
        (
            {"transfers": True, "transfer": lambda self, names: self},
            "transfer() must take (backbone, class_names) after self, as callers pass them; it takes (names)",
        ),
        (
            {
                "tunes_encoders": True,
                "image_logits": lambda self, images: images,
                "image_saliency_pass": lambda self, pixels: (pixels, pixels),
            },
            "image_logits() must take (pixels) after self",
        ),
        (
            {"needs": frozenset({"lora_target"})},
            "fake: needs must be a frozenset of backbone capabilities (lora_targets, ",
        ),
        ({"needs": {"lora_targets"}}, "fake: needs must be a frozenset of backbone capabilities"),
        (
            {"name": "fake", "paper_selection": "val"},
            "fake: declare paper_selection in the class that declares its name, one of",
        ),
        (
            {"name": "other", "paper": "Someone et al.", "official_code": None},
            "other: declare paper_selection in the class that declares its name",
        ),
        (
            {"paper_selection_except": {"ImageNet": "test"}},
            "fake: paper_selection_except must map a dataset name to one of 'none', 'validation-free'",
        ),
        ({"validation_free": True}, "fake: validation_free is gone: declare paper_selection"),
    ],
)
def test_a_head_whose_declarations_and_code_disagree_fails_the_contract(breakage: dict, problem: str) -> None:
    broken = type("Broken", (conforming_fake(),), breakage)
    problems = contract_problems(broken)
    assert any(problem in p for p in problems), problems


def test_a_conforming_encoder_tuning_head_that_transfers_passes() -> None:
    tuned = type(
        "Tuned",
        (conforming_fake(),),
        {
            "tunes_encoders": True,
            "transfers": True,
            "transfer": lambda self, backbone, class_names: self,
            "image_logits": lambda self, pixels: pixels,
            "image_saliency_pass": lambda self, pixels: (pixels, pixels),
        },
    )
    assert contract_problems(tuned) == []


def test_every_registered_encoder_tuning_head_transfers_and_has_saliency() -> None:
    """base-to-new and cross-dataset rows and saliency overlays exist for every head, tuned or not."""
    tuned = [HEADS.get(n) for n in list_heads() if HEADS.get(n).tunes_encoders]
    assert tuned and all(head_cls.transfers and callable(head_cls.image_saliency_pass) for head_cls in tuned)


def test_a_fitted_head_without_the_state_its_flags_promise_fails() -> None:
    head = conforming_fake()()
    head.history_ = [{"epoch": 1.0}, {"epoch": 2.0}]
    assert fitted_problems(head) == ["fake: selects_epoch is True but the fitted head lacks best_epoch_"]
    head.best_epoch_ = 3
    assert fitted_problems(head) == ["fake: best_epoch_ must be an epoch of history_ (1..2), got 3"]
    head.best_epoch_ = 2
    head.temperature_ = torch.ones(())
    assert fitted_problems(head) == ["fake: calibrates is False but the fitted head has temperature_"]


def test_load_of_an_untrained_head_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="was not trained"):
        load_head(tmp_path / "linear_probe" / "shot_1-seed_1")


def test_shape_features_are_what_the_suite_thinks(shape_data: dict) -> None:
    """Guard the fixture: 3 classes, 10 train / 2 val per class, distinct images."""
    assert [len(shape_data[s]) for s in ("train", "val", "test")] == [30, 6, 18]
    digests = {
        hashlib.sha1(row.numpy().tobytes()).hexdigest()
        for s in ("train", "val", "test")
        for row in shape_data[s].features
    }
    assert len(digests) == 54
