"""MaPLe on OpenCLIP (``open_clip_towers.OpenCLIPDeepPromptTowers``), the tiny ViT and ResNet: zero-shot
exactness at depth 1 without coupling, the deep prompts' positions in both towers (read with forward hooks
on OpenCLIP's own blocks), the ResNet refused with vision prompts, and a fit that moves only the prompts,
saves, reloads and draws saliency maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fewclip.backbones import load_backbone
from fewclip.backbones.config import ModelConfig
from fewclip.heads import Task, load_head, save_head
from fewclip.heads.encoders.maple import MapleConfig, MapleHead, MapleNet
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.saliency import patch_saliency

from tests.heads.image_tasks import pixels_of, shapes_sets
from tests.open_clip_models import build_open_clip, require_open_clip

pytestmark = pytest.mark.open_clip
TEMPLATE = "a photo of a {}."


def open_clip_backbone(folder: Path, name: str) -> Any:
    require_open_clip()
    config_file, weights = build_open_clip(folder, name)
    return load_backbone(ModelConfig(library="open_clip", id=str(config_file), pretrained=str(weights), device="cpu"))


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return open_clip_backbone(tmp_path_factory.mktemp("vit"), "fewclip-tiny-vit")


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return open_clip_backbone(tmp_path_factory.mktemp("rn"), "fewclip-tiny-rn")


@pytest.fixture(scope="module")
def shapes(shapes_dir: Path) -> dict[str, Any]:
    return shapes_sets(shapes_dir)


def config(**changes: Any) -> MapleConfig:
    values = dict(depth=2, epochs=3, batch_size=8, select="last")  # the tiny towers have 2 blocks
    return MapleConfig(**{**values, **changes})


def block_inputs(blocks: torch.nn.ModuleList, store: dict[int, torch.Tensor]) -> list[Any]:
    """Forward pre-hooks that keep what enters each block (batch first)."""

    def keep(index: int) -> Any:
        return lambda _module, args: store.__setitem__(index, args[0].detach().clone())

    return [block.register_forward_pre_hook(keep(index)) for index, block in enumerate(blocks)]


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_depth_one_without_coupling_is_zero_shot_at_init(
    name: str, request: pytest.FixtureRequest, shapes: dict[str, Any]
) -> None:
    backbone = request.getfixturevalue(name)
    pixels = pixels_of(backbone, shapes["test"])
    expected = ZeroShotHead().fit(Task(shapes["classes"], [TEMPLATE], backbone)).logits(backbone.encode_images(pixels))
    net = MapleNet(backbone, shapes["classes"], config(depth=1, coupling=False), seed=0)
    with torch.no_grad():
        torch.testing.assert_close(net(pixels), expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_deep_text_prompts_replace_the_context_rows(vit: Any, shapes: dict[str, Any]) -> None:
    """Deep prompts set to the hidden states a depth-1 forward has at rows 1..n_ctx give that forward's output;
    other deep prompts change it."""
    towers, blocks = vit.deep_prompt_towers(), vit.model.transformer.resblocks
    net = MapleNet(vit, shapes["classes"], config(depth=1, coupling=False), seed=0)
    embeds = torch.cat([net.base_embeds[:, :1], net.prompts.ctx.expand(3, -1, -1), net.base_embeds[:, 3:]], dim=1)
    inputs: dict[int, torch.Tensor] = {}
    hooks = block_inputs(blocks, inputs)
    shallow = towers.text_features(embeds, net.eot_positions, [])
    for hook in hooks:
        hook.remove()
    context_rows = inputs[1][:, 1:3]
    # causal: the context before the name reads no class token, so it is the same for every class (rows of one
    # batch, which BLAS may round differently: compared to a tolerance, not bit for bit)
    torch.testing.assert_close(context_rows, context_rows[:1].expand(3, -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        towers.text_features(embeds, net.eot_positions, [context_rows[0]]), shallow, atol=1e-6, rtol=0
    )
    seen: dict[int, torch.Tensor] = {}
    hooks = block_inputs(blocks, seen)
    other = torch.randn(2, towers.text_width)
    changed = towers.text_features(embeds, net.eot_positions, [other])
    for hook in hooks:
        hook.remove()
    assert torch.equal(seen[1][:, 1:3], other.expand(3, -1, -1)) and torch.equal(seen[1][:, 3:], inputs[1][:, 3:])
    assert torch.equal(seen[0], inputs[0])  # layer 0 reads the embeddings with their positions, as before
    assert not torch.allclose(changed, shallow, atol=1e-4)


@torch.no_grad()
def test_vision_prompts_enter_before_ln_pre_and_deep_ones_replace_the_last_rows(
    vit: Any, shapes: dict[str, Any]
) -> None:
    towers, visual = vit.deep_prompt_towers(), vit.model.visual
    pixels = pixels_of(vit, shapes["test"])[:1]  # one image: its prompt rows' states are one tensor
    frozen_inputs: dict[int, torch.Tensor] = {}
    hooks = block_inputs(visual.transformer.resblocks, frozen_inputs)
    vit.model.encode_image(pixels)
    inputs: dict[int, torch.Tensor] = {}
    for hook in hooks:
        hook.remove()
    hooks = block_inputs(visual.transformer.resblocks, inputs)
    shallow = torch.randn(2, towers.vision_width, generator=torch.Generator().manual_seed(1))
    once = towers.image_features(pixels, shallow, [])
    tokens = frozen_inputs[0].shape[1]
    assert inputs[0].shape[1] == tokens + 2
    # appended after the class + patch tokens, without position embeddings, and normalised by ln_pre
    torch.testing.assert_close(inputs[0][0, tokens:], visual.ln_pre(shallow), atol=1e-6, rtol=0)
    torch.testing.assert_close(inputs[0][:, :tokens], frozen_inputs[0], atol=1e-6, rtol=0)
    deep = towers.image_features(pixels, shallow, [inputs[1][0, tokens:]])
    torch.testing.assert_close(deep, once, atol=1e-6, rtol=0)
    assert not torch.allclose(
        towers.image_features(pixels, shallow, [torch.randn(2, towers.vision_width)]), once, atol=1e-4
    )
    for hook in hooks:
        hook.remove()


def test_vision_prompts_need_a_vit(resnet: Any, shapes: dict[str, Any]) -> None:
    with pytest.raises(
        ValueError, match="maple.coupling: vision prompts need a ViT image tower .* set maple.coupling: false"
    ):
        MapleHead(config()).check(Task(shapes["classes"], [TEMPLATE], resnet))
    MapleHead(config(coupling=False)).check(Task(shapes["classes"], [TEMPLATE], resnet))  # text prompts only: fine


def test_fit_moves_only_the_prompts_reloads_and_draws_saliency(
    vit: Any, shapes: dict[str, Any], tmp_path: Path
) -> None:
    frozen = {k: v.detach().clone() for k, v in vit.model.state_dict().items()}
    train, labels = pixels_of(vit, shapes["train"]), shapes["train"].labels
    cfg = config(lr=0.01, n_ctx=4, warmup_epochs=0, augment=False)
    start = MapleNet(vit, shapes["classes"], cfg, seed=3)
    with torch.no_grad():
        start_loss = float(torch.nn.functional.cross_entropy(start(train), labels))
    head = MapleHead(cfg).fit(Task(shapes["classes"], [TEMPLATE], vit, seed=3, shots=10), shapes["train"])
    assert all(torch.equal(v, frozen[k]) for k, v in vit.model.state_dict().items())  # the backbone is untouched
    loss = float(torch.nn.functional.cross_entropy(head.image_logits(train), labels))
    assert loss < 0.9 * start_loss, (loss, start_loss)  # 1.35 -> 1.08 on the tiny ViT
    for name, value in start.prompts.state_dict().items():  # every learned tensor moved
        assert not torch.equal(head.net_.prompts.state_dict()[name], value), name
    pixels = pixels_of(vit, shapes["test"])
    logits = head.image_logits(pixels)
    save_head(head, tmp_path / "maple", shapes["classes"])
    loaded, _ = load_head(tmp_path / "maple")
    loaded.attach(vit, shapes["classes"])
    torch.testing.assert_close(loaded.image_logits(pixels), logits, atol=1e-5, rtol=0)
    maps, map_logits = patch_saliency(vit, loaded, pixels[:2])
    assert maps.shape == (2, 4, 4) and np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)
    torch.testing.assert_close(map_logits, logits[:2], atol=1e-5, rtol=0)
