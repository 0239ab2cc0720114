"""Zero-shot prompt ensemble against an independent computation straight from CLIPModel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.data.images import read_image
from fewclip.heads import Task, ZeroShotHead

CLASS_NAMES = ["red circle", "green square", "blue triangle"]


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def reference(tiny_clip: Path) -> dict[str, Any]:
    """transformers' own model, tokenizer and image processor for the same checkpoint."""
    processor_config = json.loads((tiny_clip / "preprocessor_config.json").read_text())
    processor_config.pop("image_processor_type")
    return {
        "model": CLIPModel.from_pretrained(str(tiny_clip)).eval(),
        "tokenizer": AutoTokenizer.from_pretrained(str(tiny_clip)),
        "processor": CLIPImageProcessorPil(**processor_config),
    }


@pytest.fixture(scope="module")
def test_images(shapes_dir: Path) -> list[Path]:
    return sorted((shapes_dir / "test").rglob("*.png"))


def reference_text_features(reference: dict[str, Any], prompt: str) -> torch.Tensor:
    tokens = reference["tokenizer"]([prompt], return_tensors="pt")  # one prompt: no padding at all
    with torch.no_grad():
        return reference["model"].get_text_features(**tokens).pooler_output[0]


def l2(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def reference_logits(reference: dict[str, Any], images: list[Path], templates: list[str]) -> torch.Tensor:
    """Per (template, class): embed, L2-normalise; mean over templates; renormalise; scaled cosine."""
    model = reference["model"]
    per_template = torch.stack(
        [torch.stack([l2(reference_text_features(reference, t.format(c))) for c in CLASS_NAMES]) for t in templates]
    )  # (T, C, d)
    prototypes = l2(per_template.mean(dim=0))  # (C, d)
    pixels = reference["processor"](images=[read_image(p) for p in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        image_features = l2(model.get_image_features(pixel_values=pixels).pooler_output)
        return model.logit_scale.exp() * image_features @ prototypes.T


def our_features(backbone: CLIPBackbone, images: list[Path]) -> torch.Tensor:
    return backbone.encode_images(torch.stack([torch.from_numpy(backbone.transform(read_image(p))) for p in images]))


def test_logits_equal_independent_clipmodel_computation(
    backbone: CLIPBackbone, reference: dict[str, Any], test_images: list[Path], make_config: Callable[..., Any]
) -> None:
    templates = make_config().prompts.templates
    assert len(templates) == 5
    head = ZeroShotHead().fit(Task(CLASS_NAMES, templates, backbone, seed=1))
    logits = head.logits(our_features(backbone, test_images))
    expected = reference_logits(reference, test_images, templates)
    assert logits.shape == expected.shape == (len(test_images), 3)
    assert (logits - expected).abs().max().item() <= 1e-5
    assert expected.std().item() > 1e-3  # the logits are not all alike, so the comparison has teeth
    assert head.prototypes_.norm(dim=-1).sub(1).abs().max().item() < 1e-6
    assert head.logit_scale_.item() == pytest.approx(reference["model"].logit_scale.exp().item())


def test_template_logits_equal_single_template_computation(
    backbone: CLIPBackbone, reference: dict[str, Any], test_images: list[Path], make_config: Callable[..., Any]
) -> None:
    templates = make_config().prompts.templates
    features = our_features(backbone, test_images)
    ensemble = ZeroShotHead().fit(Task(CLASS_NAMES, templates, backbone, seed=1))
    per_template = ensemble.template_logits(features)
    assert per_template.shape == (len(templates), len(test_images), 3)
    for index, template in enumerate(templates):
        expected = reference_logits(reference, test_images, [template])
        assert (per_template[index] - expected).abs().max().item() <= 1e-5, template
        alone = ZeroShotHead().fit(Task(CLASS_NAMES, [template], backbone, seed=1))
        assert (per_template[index] - alone.logits(features)).abs().max().item() <= 1e-5, template
    # the ensemble is not simply one of its templates
    assert min((per_template[i] - ensemble.logits(features)).abs().max().item() for i in range(len(templates))) > 1e-4


def test_zero_shot_needs_the_backbone() -> None:
    with pytest.raises(ValueError, match="Task.backbone"):
        ZeroShotHead().fit(Task(CLASS_NAMES))


def test_prototypes_do_not_depend_on_class_order(backbone: CLIPBackbone, test_images: list[Path]) -> None:
    features = our_features(backbone, test_images)
    forward = ZeroShotHead().fit(Task(CLASS_NAMES, ["a photo of a {}."], backbone)).logits(features)
    backward = ZeroShotHead().fit(Task(CLASS_NAMES[::-1], ["a photo of a {}."], backbone)).logits(features)
    np.testing.assert_allclose(backward.flip(-1).numpy(), forward.numpy(), atol=1e-5)
