"""The backbone contract: every registered backbone offers the protocol the heads, pipeline, predict and
saliency use, and its pieces agree with each other. Parametrised over ``BACKBONES`` itself, so a new
library is covered the moment it is registered (its builder below is then required). Each capability a
backbone declares in ``offers`` is checked against the frozen towers; each one it does not declare must
raise ``NotOffered``."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones import BACKBONES, ModelConfig, backbone_fingerprint, load_backbone
from fewclip.backbones.protocol import (
    CAPABILITIES,
    Backbone,
    DeepPromptTowers,
    NotOffered,
    PromptTower,
    TextTokens,
    TunableTowers,
)
from tests.open_clip_models import build_open_clip, require_open_clip


def hf_config(folder: Path, tiny_clip: Path) -> ModelConfig:
    return ModelConfig(id=str(tiny_clip), device="cpu")


def open_clip_config(folder: Path, tiny_clip: Path) -> ModelConfig:
    require_open_clip()
    config_file, weights = build_open_clip(folder, "fewclip-tiny-vit")
    return ModelConfig(library="open_clip", id=str(config_file), pretrained=str(weights), device="cpu")


BUILDERS: dict[str, Callable[[Path, Path], ModelConfig]] = {"hf": hf_config, "open_clip": open_clip_config}


def test_every_registered_backbone_has_a_builder_here() -> None:
    assert sorted(BUILDERS) == sorted(BACKBONES.names())


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(name, marks=[pytest.mark.open_clip] if name == "open_clip" else []) for name in BACKBONES.names()
    ],
)
def model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_clip: Path
) -> tuple[ModelConfig, Backbone]:
    config = BUILDERS[request.param](tmp_path_factory.mktemp(request.param), tiny_clip)
    return config, load_backbone(config)


def images(backbone: Backbone, n: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)]
    return torch.from_numpy(np.stack([backbone.transform(p) for p in pictures]))


def test_protocol_types(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    assert isinstance(backbone, Backbone) and isinstance(backbone.tokens, TextTokens)
    assert isinstance(backbone.prompt_tower(), PromptTower)
    assert backbone.logit_scale > 0 and backbone.dim > 0
    assert backbone.prompt_tower().max_positions == backbone.max_text_positions


def test_image_features_do_not_depend_on_the_batch(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    pixels = images(backbone, 3)
    assert pixels.dtype == torch.float32 and pixels.shape[1] == 3
    together = backbone.encode_images(pixels)
    assert together.shape == (3, backbone.dim) and together.dtype == torch.float32 and together.device.type == "cpu"
    alone = torch.cat([backbone.encode_images(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_text_features_equal_the_prompt_tower_on_token_embeddings(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    texts = ["a red circle.", "a blue triangle", "square"]
    tokens, tower = backbone.tokens, backbone.prompt_tower()
    ids = [[tokens.sos_id, *tokens.word_ids(t), tokens.eot_id] for t in texts]
    assert tokens.counts(texts) == [len(row) for row in ids]
    length = max(map(len, ids))
    padded = torch.tensor([row + [tokens.eot_id] * (length - len(row)) for row in ids], device=backbone.device)
    with torch.no_grad():
        from_tower = tower(tower.embed_tokens(padded), torch.tensor([len(r) - 1 for r in ids], device=backbone.device))
    features = backbone.encode_text(texts)
    assert features.shape == (3, backbone.dim) and features.std() > 0
    torch.testing.assert_close(features, from_tower.float().cpu(), atol=1e-5, rtol=0)


def test_shared_prefix_equals_full_prompts(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    tower = backbone.prompt_tower()
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 3, tower.width, generator=generator) * 0.02
    suffix = tower.embed_tokens(torch.randint(1, 50, (2, 4, 5), generator=generator))
    eot = torch.tensor([4, 2, 3, 1])
    with torch.no_grad():
        fast = tower.encode_shared_prefix(prefix, suffix, eot)
        full = torch.cat([prefix[:, None].expand(-1, 4, -1, -1), suffix], dim=2)
        slow = tower(full.flatten(0, 1), (eot + 3).repeat(2)).unflatten(0, (2, 4))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_too_long_text_is_an_error_naming_it(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    long_text = " ".join(["photo"] * (backbone.max_text_positions + 1))
    with pytest.raises(ValueError, match="needs .* tokens but model .* reads at most"):
        backbone.encode_text([long_text])


def test_saliency_pass_gives_spatial_activations_on_the_feature_graph(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    pixels = images(backbone, 2)
    with torch.enable_grad():
        features, activations = backbone.saliency_pass(pixels.clone().requires_grad_(True))
        features[:, 0].sum().backward()
    assert activations.dim() == 4 and activations.shape[0] == 2
    assert activations.grad is not None and activations.grad.abs().sum() > 0
    torch.testing.assert_close(features.detach(), backbone.encode_images(pixels), atol=1e-5, rtol=1e-5)


def test_fingerprint_is_readable_from_files_and_names_the_preprocessing(model: tuple[ModelConfig, Backbone]) -> None:
    config, backbone = model
    fingerprint = backbone.fingerprint()
    assert backbone_fingerprint(config) == fingerprint
    assert fingerprint["preprocess"] == backbone.transform.to_dict() and fingerprint["precision"] == "fp32"
    assert len(fingerprint["weights_sha256"]) == 64


# --- capabilities ---------------------------------------------------------------------------------------------

TEXTS = ["a red circle.", "a blue triangle", "square"]


def offered(backbone: Backbone, capability: str) -> None:
    if capability not in backbone.offers:
        pytest.skip(f"{backbone.config.library} does not offer {capability} (test_what_is_not_offered_raises)")


def token_embeddings(backbone: Backbone, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, L, width) token embeddings of ``texts`` padded with EOT, and their (n,) EOT positions."""
    tokens, tower = backbone.tokens, backbone.prompt_tower()
    ids = [[tokens.sos_id, *tokens.word_ids(t), tokens.eot_id] for t in texts]
    length = max(map(len, ids))
    padded = torch.tensor([row + [tokens.eot_id] * (length - len(row)) for row in ids], device=backbone.device)
    return tower.embed_tokens(padded), torch.tensor([len(r) - 1 for r in ids], device=backbone.device)


def test_what_is_not_offered_raises(model: tuple[ModelConfig, Backbone]) -> None:
    config, backbone = model
    assert isinstance(type(backbone).offers, frozenset) and backbone.offers <= set(CAPABILITIES)
    assert BACKBONES.get(config.library).offers == backbone.offers  # known without loading, for config checks
    asks = {
        "lora_targets": backbone.tunable_towers,
        "deep_prompts": backbone.deep_prompt_towers,
        "vision_prompts": lambda: (
            backbone.deep_prompt_towers().vision_layers
            or backbone.deep_prompt_towers().image_features(images(backbone, 1), torch.zeros(1, 1), [])
        ),
        "image_tokens": lambda: backbone.image_tokens(images(backbone, 1)),
    }
    assert set(asks) == set(CAPABILITIES)
    for capability in set(CAPABILITIES) - backbone.offers:
        with pytest.raises(NotOffered, match=f"the {config.library} backbone does not offer {capability} "):
            asks[capability]()


# the library's own final norm and projection of the class token: what the image feature is read from
READOUTS: dict[str, Callable[[Backbone, torch.Tensor], torch.Tensor]] = {
    "hf": lambda b, t: b.model.visual_projection(b.model.vision_model.post_layernorm(t[:, 0])),
    "open_clip": lambda b, t: b.model.visual.ln_post(t[:, 0]) @ b.model.visual.proj,
}


def test_image_tokens_are_what_the_image_feature_is_read_from(model: tuple[ModelConfig, Backbone]) -> None:
    config, backbone = model
    offered(backbone, "image_tokens")
    pixels = images(backbone, 2)
    tokens = backbone.image_tokens(pixels)
    assert tokens.shape == (2, *backbone.image_token_shape) and tokens.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(
            READOUTS[config.library](backbone, tokens).cpu(), backbone.encode_images(pixels), atol=1e-5, rtol=1e-5
        )
    torch.testing.assert_close(backbone.image_tokens(pixels[1:]), tokens[1:], atol=1e-5, rtol=1e-5)
    key = backbone.image_tokens_fingerprint()
    assert key["weights_sha256"] == backbone.fingerprint()["weights_sha256"] and key != backbone.fingerprint()


def test_tunable_towers_are_a_copy_that_starts_as_the_frozen_towers(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    offered(backbone, "lora_targets")
    towers = backbone.tunable_towers()
    assert isinstance(towers, TunableTowers)
    pixels = images(backbone, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            towers.image_features(pixels).cpu(), backbone.encode_images(pixels), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(towers.text_features(TEXTS).cpu(), backbone.encode_text(TEXTS), atol=1e-5, rtol=0)
    wrapped = {
        name.rsplit(".", 1)[-1] for name, module in towers.module.named_modules() if isinstance(module, torch.nn.Linear)
    }
    assert towers.lora_targets and set(towers.lora_targets) <= wrapped
    linears = towers.block_linears()  # every block of both towers: q, k, v, out, fc1, fc2, each its own nn.Linear
    towers_in_order = [b.tower for b in linears]
    assert towers_in_order == sorted(towers_in_order) and set(towers_in_order) == {"text", "vision"}  # text first
    assert len({b.module for b in linears}) == len(linears)
    for tower in ("text", "vision"):
        blocks = [b for b in linears if b.tower == tower]
        assert len(blocks) == 6 * (max(b.layer for b in blocks) + 1)
        assert {b.kind for b in blocks} == {"q", "k", "v", "out", "fc1", "fc2"}
    for block in linears:
        assert isinstance(towers.module.get_submodule(block.module), torch.nn.Linear), block
    with torch.enable_grad():
        features, activations = towers.saliency_pass(pixels.clone().requires_grad_(True))
        features[:, 0].sum().backward()
    assert activations.dim() == 4 and activations.grad is not None and activations.grad.abs().sum() > 0
    frozen = backbone.encode_images(pixels)
    with torch.no_grad():
        for param in towers.module.parameters():
            param.add_(0.01)
        assert not torch.allclose(towers.image_features(pixels).cpu(), frozen, atol=1e-4)
    torch.testing.assert_close(backbone.encode_images(pixels), frozen, atol=0, rtol=0)  # the backbone is untouched


def test_deep_prompt_towers_without_prompts_are_the_frozen_towers(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    offered(backbone, "deep_prompts")
    towers = backbone.deep_prompt_towers()
    assert isinstance(towers, DeepPromptTowers)
    assert towers.text_width == backbone.prompt_tower().width and min(towers.text_layers, towers.vision_layers) >= 1
    pixels = images(backbone, 2)
    embeds, eot = token_embeddings(backbone, TEXTS)
    with torch.no_grad():
        frozen = towers.image_features(pixels, None, [])
        torch.testing.assert_close(frozen.cpu(), backbone.encode_images(pixels), atol=1e-5, rtol=0)
        torch.testing.assert_close(
            towers.text_features(embeds, eot, []).cpu(), backbone.encode_text(TEXTS), atol=1e-5, rtol=0
        )
        deep_text = [torch.randn(2, towers.text_width, generator=torch.Generator().manual_seed(1))]
        assert not torch.allclose(
            towers.text_features(embeds, eot, deep_text).cpu(), backbone.encode_text(TEXTS), atol=1e-4
        )
    generator = torch.Generator().manual_seed(0)
    shallow = torch.randn(2, towers.vision_width, generator=generator).requires_grad_(True)  # learned, as MaPLe's
    deep = [torch.randn(2, towers.vision_width, generator=generator) for _ in range(towers.vision_layers - 1)]
    with torch.enable_grad():
        features, patches = towers.saliency_pass(pixels, shallow, deep)
        features[:, 0].sum().backward()
    grid = backbone.image_token_shape[0] - 1 if "image_tokens" in backbone.offers else patches.shape[1] ** 2
    assert patches.shape[:3] == (2, *[int(round(grid**0.5))] * 2)  # the prompts are not in the grid
    assert patches.grad is not None and patches.grad.abs().sum() > 0
    with torch.no_grad():
        prompted = towers.image_features(pixels, shallow, deep)
    torch.testing.assert_close(features.detach(), prompted, atol=1e-5, rtol=0)
    assert not torch.allclose(prompted, frozen, atol=1e-4)


def test_deep_text_rows_per_prompt_and_layers_left_alone(model: tuple[ModelConfig, Backbone]) -> None:
    """``deep_text`` entries may be None (that layer's rows left as they are) and (n, k, w), one set of rows per
    prompt (TCP's class-aware tokens): each prompt then gets what it would get alone with its own (k, w) rows."""
    _, backbone = model
    offered(backbone, "deep_prompts")
    towers = backbone.deep_prompt_towers()
    embeds, eot = token_embeddings(backbone, TEXTS)
    rows = torch.randn(len(TEXTS), 2, towers.text_width, generator=torch.Generator().manual_seed(2))
    last = towers.text_layers - 1
    with torch.no_grad():
        torch.testing.assert_close(
            towers.text_features(embeds, eot, [None] * last).cpu(), backbone.encode_text(TEXTS), atol=1e-5, rtol=0
        )
        together = towers.text_features(embeds, eot, [None] * (last - 1) + [rows])
        for i in range(len(TEXTS)):
            alone = towers.text_features(embeds[i : i + 1], eot[i : i + 1], [None] * (last - 1) + [rows[i]])
            torch.testing.assert_close(together[i : i + 1], alone, atol=1e-5, rtol=1e-5)
        shared = towers.text_features(embeds, eot, [None] * (last - 1) + [rows[0]])
    assert not torch.allclose(together, shared, atol=1e-3)  # the rows differ, so the prompts' features do
    assert not torch.allclose(together.cpu(), backbone.encode_text(TEXTS), atol=1e-3)


def test_image_encoder_module_gives_encode_images_features(model: tuple[ModelConfig, Backbone]) -> None:
    _, backbone = model
    pixels = images(backbone, 3)
    encoder = backbone.image_encoder()
    assert isinstance(encoder, torch.nn.Module) and not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        features = encoder(pixels)
    torch.testing.assert_close(features, backbone.encode_images(pixels), atol=1e-6, rtol=1e-5)
