"""The OpenCLIP backbone: exact against OpenCLIP's own encoders and preprocessing, built without downloads.

Runs where open_clip is installed (CI's .venv-open-clip, built by `bash setup.sh --open-clip`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.backbones import ModelConfig, backbone_fingerprint, check_backbone, load_backbone
from fewclip.backbones.open_clip_backbone import OpenCLIPPromptTower, transform_from_cfg
from fewclip.backbones.protocol import Backbone
from tests.open_clip_models import build_open_clip, require_open_clip

pytestmark = pytest.mark.open_clip
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}, seen from far away.", "{}"]
NAMES = ["dog", "golf ball", "english springer spaniel", "cassette player"]


@pytest.fixture(scope="module")
def rn50(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    require_open_clip()
    _, weights = build_open_clip(tmp_path_factory.mktemp("rn50"), "RN50")
    return load_backbone(ModelConfig(library="open_clip", id="RN50", pretrained=str(weights), device="cpu"))


def reference_text(backbone: Backbone, texts: list[str]) -> torch.Tensor:
    """OpenCLIP's own encode_text on its own 77-token padded ids."""
    open_clip = require_open_clip()
    with torch.no_grad():
        return backbone.model.encode_text(open_clip.get_tokenizer("RN50")(texts)).float()


def test_rn50_text_features_equal_open_clip_encode_text(rn50: Backbone) -> None:
    texts = [t.format(n) for t in TEMPLATES for n in NAMES]
    expected = reference_text(rn50, texts)
    assert expected.std() > 0.01  # not a degenerate tower
    torch.testing.assert_close(rn50.encode_text(texts), expected, atol=1e-5, rtol=0)


def test_prompt_tower_with_template_embeddings_reproduces_encode_text(rn50: Backbone) -> None:
    """Context set to a template's token embeddings, prompts cut to the longest one: OpenCLIP's features."""
    tower = rn50.prompt_tower()
    assert isinstance(tower, OpenCLIPPromptTower) and tower.max_positions == 77 and tower.width == 512
    texts = [f"a photo of a {n}." for n in NAMES]
    ids = [[rn50.tokens.sos_id, *rn50.tokens.word_ids(t), rn50.tokens.eot_id] for t in texts]
    expected = reference_text(rn50, texts)
    for length in (max(map(len, ids)), 77):  # cut to the longest prompt, or the full context: the same
        tokens = torch.tensor([row + [0] * (length - len(row)) for row in ids])
        eot = torch.tensor([len(row) - 1 for row in ids])
        with torch.no_grad():
            out = tower(tower.embed_tokens(tokens), eot)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # OpenCLIP pools at the argmax id (EOT is the largest id): our EOT positions are that argmax
    assert [row.index(rn50.tokens.eot_id) for row in ids] == [len(row) - 1 for row in ids]
    assert rn50.tokens.eot_id == max(max(row) for row in ids)


def test_shared_prefix_equals_full_prompts_on_open_clip_blocks(rn50: Backbone) -> None:
    tower = rn50.prompt_tower()
    assert tower.shared_prefix_parts() is not None  # plain ResidualAttentionBlocks: the fast path
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 5, 512, generator=generator) * 0.02
    suffix = tower.embed_tokens(torch.randint(1, 1000, (2, 3, 6), generator=generator))
    eot = torch.tensor([5, 3, 4])
    with torch.no_grad():
        fast = tower.encode_shared_prefix(prefix, suffix, eot)
        full = torch.cat([prefix[:, None].expand(-1, 3, -1, -1), suffix], dim=2)
        slow = tower(full.flatten(0, 1), (eot + 5).repeat(2)).unflatten(0, (2, 3))
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_preprocessing_equals_open_clip_torchvision_pipeline(rn50: Backbone) -> None:
    open_clip = require_open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference = image_transform_v2(PreprocessCfg(**rn50.model.visual.preprocess_cfg), is_train=False)
    rng = np.random.default_rng(0)
    assert rn50.transform.resize == 224 and rn50.transform.crop == (224, 224) and rn50.transform.resample == 3
    for size in [(300, 225), (225, 300), (227, 500), (224, 224), (97, 131)]:  # odd margins: torchvision's rounding
        image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        ours = torch.from_numpy(rn50.transform(image))
        torch.testing.assert_close(ours, reference(image), atol=2e-6, rtol=0)
    assert open_clip is not None


def test_image_features_equal_open_clip_encode_image(rn50: Backbone) -> None:
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)) for _ in range(2)]
    pixels = torch.from_numpy(np.stack([rn50.transform(image) for image in images]))
    with torch.no_grad():
        expected = rn50.model.encode_image(pixels)
    torch.testing.assert_close(rn50.encode_images(pixels), expected, atol=1e-5, rtol=0)
    assert rn50.dim == 1024 and rn50.max_text_positions == 77


def test_resnet_saliency_reads_the_last_conv_stage_before_attention_pooling(rn50: Backbone) -> None:
    """The activations are layer4's output; their gradient matches autograd on an independent forward."""
    visual = rn50.model.visual
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    head_vector = torch.randn(rn50.dim, generator=torch.Generator().manual_seed(4))
    with torch.enable_grad():
        features, grid = rn50.saliency_pass(pixels.clone().requires_grad_(True))
        (features @ head_vector).sum().backward()
        # independently: stem -> layers 1-4 -> attention pooling, with the gradient taken at layer4
        stage = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels.clone())))))
        stage = stage.detach().requires_grad_(True)
        expected_features = visual.attnpool(stage)
        (expected,) = torch.autograd.grad((expected_features @ head_vector).sum(), stage)
    assert grid.shape == (1, 7, 7, 2048)
    torch.testing.assert_close(features, expected_features.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(grid.grad, expected.permute(0, 2, 3, 1), atol=1e-6, rtol=1e-4)


def test_transform_from_cfg_squash_and_unsupported_modes() -> None:
    cfg = {
        "size": 64,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "interpolation": "bilinear",
        "resize_mode": "squash",
    }
    transform = transform_from_cfg(cfg)
    assert transform(Image.new("RGB", (100, 30))).shape == (3, 64, 64) and transform.resample == 2
    with pytest.raises(ValueError, match="resize_mode 'longest'"):
        transform_from_cfg({**cfg, "resize_mode": "longest"})


def test_fingerprints_keep_architectures_and_weights_apart(tmp_path: Path, rn50: Backbone) -> None:
    _, rn_weights = build_open_clip(tmp_path / "rn", "fewclip-tiny-rn")
    config_vit, vit_weights = build_open_clip(tmp_path / "vit", "fewclip-tiny-vit")
    rn = backbone_fingerprint(ModelConfig(library="open_clip", id="fewclip-tiny-rn", pretrained=str(rn_weights)))
    vit = backbone_fingerprint(ModelConfig(library="open_clip", id=str(config_vit), pretrained=str(vit_weights)))
    assert rn is not None and vit is not None
    assert rn["model"] == "fewclip-tiny-rn" and vit["model"] == "fewclip-tiny-vit"
    assert rn["weights_sha256"] != vit["weights_sha256"] and rn["library"] == "open_clip"
    assert rn50.fingerprint()["model"] == "RN50" and rn50.fingerprint()["preprocess"]["crop_rounding"] == "round"
    # retrained weights in the same file: a new key
    _, again = build_open_clip(tmp_path / "vit2", "fewclip-tiny-vit", seed=1)
    other = backbone_fingerprint(ModelConfig(library="open_clip", id=str(config_vit), pretrained=str(again)))
    assert other is not None and other["weights_sha256"] != vit["weights_sha256"]
    # the preprocessing the fingerprint names is the one the loaded model uses
    loaded = load_backbone(ModelConfig(library="open_clip", id=str(config_vit), pretrained=str(vit_weights)))
    assert loaded.fingerprint() == vit and loaded.transform.to_dict() == vit["preprocess"]


def test_vit_saliency_is_the_patch_grid(tmp_path: Path) -> None:
    config_vit, weights = build_open_clip(tmp_path, "fewclip-tiny-vit")
    backbone = load_backbone(ModelConfig(library="open_clip", id=str(config_vit), pretrained=str(weights)))
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.enable_grad():
        features, grid = backbone.saliency_pass(pixels.requires_grad_(True))
        features.sum().backward()
    assert grid.shape == (2, 4, 4, 32) and grid.grad is not None and grid.grad.abs().sum() > 0
    torch.testing.assert_close(features, backbone.encode_images(pixels.detach()), atol=1e-5, rtol=0)


def test_quick_gelu_follows_the_tag() -> None:
    open_clip = require_open_clip()
    from fewclip.backbones import open_clip_backbone

    assert open_clip.get_pretrained_cfg("RN50", "openai")["quick_gelu"] is True
    assert open_clip_backbone._quick_gelu(open_clip, "RN50", "openai") is True  # noqa: SLF001
    assert open_clip_backbone._quick_gelu(open_clip, "ViT-B-32", "laion2b_s34b_b79k") is False  # noqa: SLF001


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"id": "RN5O", "pretrained": "openai"}, "unknown OpenCLIP architecture 'RN5O' (did you mean 'RN50'?)"),
        ({"id": "RN50", "pretrained": "opnai"}, "unknown pretrained tag for RN50 'opnai' (did you mean 'openai'?)"),
        ({"id": "RN50", "pretrained": "missing/rn50.pt"}, "checkpoint file missing/rn50.pt does not exist"),
        ({"id": "RN50"}, "an OpenCLIP model needs weights"),
        ({"id": "nowhere/arch.json", "pretrained": "x.pt"}, "OpenCLIP model config nowhere/arch.json does not exist"),
    ],
)
def test_bad_open_clip_settings_name_the_key(update: dict[str, str], message: str) -> None:
    require_open_clip()
    with pytest.raises((ValueError, OSError)) as err:
        check_backbone(ModelConfig(library="open_clip", **update))
    assert message in str(err.value)


def test_coop_prompts_with_context_set_to_a_template_equal_open_clip_features(rn50: Backbone) -> None:
    """CoOp's own path (layout, assemble, shared prefix) with ctx_init 'a photo of a': the class text features
    are OpenCLIP's normalised encode_text of 'a photo of a {name}.', for every class token position's
    reading of that sentence ('end' here, the template's)."""
    from fewclip.heads.base import normalize
    from fewclip.heads.prompts.coop import CoOpPrompts
    from fewclip.heads.prompts.learning import init_context

    ctx = init_context(rn50.prompt_tower(), rn50.tokens, 4, "a photo of a", len(NAMES), False, torch.Generator())
    prompts = CoOpPrompts(rn50, NAMES, 4, "end", "fp32", "coop")
    assert ctx.shape[0] == 4 and prompts.layout.shared_prefix == 5  # SOS + the four context tokens, computed once
    with torch.no_grad():
        ours = prompts.features(ctx)
    expected = normalize(reference_text(rn50, [f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
