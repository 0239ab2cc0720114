"""TCP on OpenCLIP (``open_clip_towers.OpenCLIPDeepPromptTowers``), the tiny ViT and ResNet (TCP prompts the text
tower only): the class-aware tokens are what enters the chosen block at the context rows (read with forward hooks
on OpenCLIP's own blocks), the blocks before it see the context, and a fit trains, saves, reloads and transfers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fewclip.heads import FeatureSet, Task, TcpHead, load_head, save_head
from fewclip.heads.prompts.tcp import TcpConfig, TcpPrompts, zero_shot_text

from tests.heads.test_maple_open_clip import block_inputs, open_clip_backbone

pytestmark = pytest.mark.open_clip
TEMPLATES = ["a photo of a {}."]
NAMES = ["red circle", "green square", "blue triangle"]


@pytest.fixture(scope="module", params=["fewclip-tiny-vit", "fewclip-tiny-rn"])
def backbone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return open_clip_backbone(tmp_path_factory.mktemp("model"), request.param)


def features(backbone: Any, n: int, seed: int) -> FeatureSet:
    labels = torch.arange(len(NAMES)).repeat(n)
    return FeatureSet(torch.randn(len(labels), backbone.dim, generator=torch.Generator().manual_seed(seed)), labels)


def test_the_class_aware_tokens_enter_the_chosen_block(backbone: Any) -> None:
    head = TcpHead(TcpConfig(epochs=1, batch_size=4)).fit(Task(NAMES, TEMPLATES, backbone, 1), features(backbone, 4, 0))
    assert head.layer_ == 1  # the tiny text tower has 2 blocks: two thirds up
    with torch.no_grad():
        check_block_inputs(backbone, head)


def check_block_inputs(backbone: Any, head: TcpHead) -> None:
    prompts = TcpPrompts(backbone, NAMES, zero_shot_text(backbone, NAMES, TEMPLATES), head.config, head.layer_)
    inputs: dict[int, torch.Tensor] = {}
    hooks = block_inputs(backbone.model.transformer.resblocks, inputs)
    out = prompts.features(head.params_)
    for hook in hooks:
        hook.remove()
    tokens = head.params_.class_tokens(prompts.zero_shot_text)  # (C, 4, w)
    torch.testing.assert_close(inputs[1][:, 1:5], tokens, atol=0, rtol=0)
    context = inputs[0][:, 1:5] - backbone.model.positional_embedding[1:5]  # layer 0 reads the context + positions
    torch.testing.assert_close(context, head.params_.ctx.expand(len(NAMES), -1, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(out, head.class_text_features_, atol=1e-6, rtol=0)


def test_fit_saves_reloads_and_transfers(backbone: Any, tmp_path: Path) -> None:
    train = features(backbone, 4, 0)
    head = TcpHead(TcpConfig(epochs=3, batch_size=4)).fit(Task(NAMES, TEMPLATES, backbone, 1), train)
    assert head.history_[-1]["train_loss"] != head.history_[0]["train_loss"]
    stem = tmp_path / "tcp"
    save_head(head, stem, NAMES, {"templates": TEMPLATES})
    loaded, _ = load_head(stem)
    assert torch.equal(loaded.logits(train.features), head.logits(train.features))
    new = loaded.transfer(backbone, ["purple cross", "orange ring"])
    assert new.logits(train.features).shape == (len(train), 2)
