"""Class names ending in punctuation are tokenised with the prompt's period, as the reference CoOp
tokenises ``prompt_prefix + " " + name + "."``: a context initialised from "a photo of a" is then exactly
zero-shot's "a photo of a {name}." for every name, on the tiny CLIP and on the shipped world CLIP."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewclip.backbones import CLIPBackbone, ModelConfig, load_backbone
from fewclip.backbones.prompt_tower import PromptTextTower
from fewclip.heads import CoCoOpHead, Task, ZeroShotHead
from fewclip.heads.prompts.cocoop import CoCoOpConfig, CoCoOpParams
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.learning import build_layout, init_context
from fewclip.world import CHECKPOINT

NAMES = ["e.g.", "cat!", "U.S. flag", "Mr. Potato", "red circle"]
MERGING = ["e.g.", "cat!"]  # BPE tokenises these apart from the period otherwise


@pytest.fixture(scope="module", params=["tiny", "world"])
def backbone(request: pytest.FixtureRequest, tiny_clip: Path) -> CLIPBackbone:
    path = tiny_clip if request.param == "tiny" else CHECKPOINT
    return load_backbone(ModelConfig(id=str(path), device="cpu"))


def words(backbone: CLIPBackbone, text: str) -> list[int]:
    return list(backbone.tokenizer(text, add_special_tokens=False)["input_ids"])


def test_the_names_merge_with_the_period(backbone: CLIPBackbone) -> None:
    """Tokenising a name and "." apart gives other tokens for these names: the tests below have teeth."""
    for name in MERGING:
        assert words(backbone, name) + words(backbone, ".") != words(backbone, name + "."), name


def photo_of_a(backbone: CLIPBackbone) -> tuple[torch.Tensor, CoOpPrompts]:
    ctx = init_context(
        PromptTextTower(backbone.model),
        backbone.tokens,
        4,
        "a photo of a",
        len(NAMES),
        False,
        torch.Generator().manual_seed(0),
    )
    return ctx, CoOpPrompts(backbone, NAMES, 4, "end", "fp32", "coop")


def zero_shot(backbone: CLIPBackbone) -> ZeroShotHead:
    return ZeroShotHead().fit(Task(NAMES, ["a photo of a {}."], backbone))


def test_coop_photo_of_a_is_zero_shot_for_every_name(backbone: CLIPBackbone) -> None:
    ctx, prompts = photo_of_a(backbone)
    with torch.no_grad():
        class_text = prompts.features(ctx)
    assert (class_text - zero_shot(backbone).prototypes_).abs().max().item() <= 1e-5


def test_cocoop_photo_of_a_is_zero_shot_for_every_name(backbone: CLIPBackbone) -> None:
    ctx, prompts = photo_of_a(backbone)
    torch.manual_seed(0)
    params = CoCoOpParams(ctx, backbone.dim).requires_grad_(False)
    with torch.no_grad():  # the meta-net's last layer starts at zero in the reference; zeroed here
        params.meta_net[2].weight.zero_()
        params.meta_net[2].bias.zero_()
    features = torch.randn(6, backbone.dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = CoCoOpHead(CoCoOpConfig())._conditional_logits(params, prompts, features, backbone.logit_scale)
    expected = zero_shot(backbone).logits(features)
    assert (logits - expected).abs().max().item() <= 1e-4
    assert expected.std().item() > 1e-3


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_layout_splits_name_and_period_as_the_reference(backbone: CLIPBackbone, position: str) -> None:
    """Reference CoOp: tokenise "X X X X {name}.", keep what follows the context, and for middle/front put
    the context after the first len(tokenize(name)) of those tokens."""
    n_ctx = 4
    layout = build_layout(backbone.tokens, NAMES, n_ctx, position, 77)
    sos, eot = backbone.tokens.sos_id, backbone.tokens.eot_id
    for row, name in enumerate(NAMES):
        suffix = words(backbone, "X " * n_ctx + name + ".")[n_ctx:]
        name_len = len(words(backbone, name))
        ctx = [sos] * n_ctx  # the layout's placeholder for context slots
        expected = {
            "end": [sos] + ctx + suffix,
            "front": [sos] + suffix[:name_len] + ctx + suffix[name_len:],
            "middle": [sos] + ctx[:2] + suffix[:name_len] + ctx[2:] + suffix[name_len:],
        }[position] + [eot]
        assert layout.token_ids[row, : len(expected)].tolist() == expected, name
        assert int(layout.eot_positions[row]) == len(expected) - 1
