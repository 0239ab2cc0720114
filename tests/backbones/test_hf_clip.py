"""The Hugging Face CLIP backbone: loading, preprocessing, encoders, precision and fingerprint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

from fewclip.backbones import CLIPBackbone, ImageTransform, ModelConfig, load_backbone
from fewclip.world.toy import draw_shape
from fewclip.features import fingerprint_key


@pytest.fixture(scope="module")
def backbone(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))


@pytest.fixture(scope="module")
def backbone_bf16(tiny_clip: Path) -> CLIPBackbone:
    return load_backbone(ModelConfig(id=str(tiny_clip), device="cpu", precision="bf16"))


@pytest.fixture(scope="module")
def reference_model(tiny_clip: Path) -> CLIPModel:
    """The same checkpoint loaded directly by transformers, outside fewclip."""
    return CLIPModel.from_pretrained(str(tiny_clip)).eval()


def reference_processor(processor_config: dict) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(**{k: v for k, v in processor_config.items() if k != "image_processor_type"})


def random_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


# --- loading --------------------------------------------------------------------------------------


def test_hub_format_folder_loads_through_from_pretrained(
    tiny_clip: Path, reference_model: CLIPModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    calls: list[tuple] = []
    original = CLIPModel.from_pretrained

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(CLIPModel, "from_pretrained", spy)
    loaded = load_backbone(ModelConfig(id=str(tiny_clip), device="cpu"))

    assert calls == [(str(tiny_clip),)]  # the id string goes to from_pretrained exactly as a hub id would
    assert isinstance(loaded.model, CLIPModel)
    expected = reference_model.state_dict()
    actual = loaded.model.state_dict()
    assert actual.keys() == expected.keys()
    assert all(torch.equal(actual[k], expected[k]) for k in expected)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training
    assert loaded.dim == reference_model.config.projection_dim == 32
    assert loaded.logit_scale == pytest.approx(reference_model.logit_scale.exp().item())


@pytest.mark.parametrize("model_id", ["fewclip-tests/no-such-clip"])  # missing folders: test_model_source.py
def test_unknown_model_id_is_an_oserror_naming_model_id(model_id: str, tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        load_backbone(ModelConfig(id=model_id, device="cpu"))
    message = str(err.value)
    assert message.startswith("model.id:")
    assert model_id in message
    assert "HF_HUB_OFFLINE" in message


def test_tokenizer_splits_class_names_into_several_tokens(backbone: CLIPBackbone, tiny_clip: Path) -> None:
    tokens = backbone.tokenizer.tokenize("blue triangle")
    assert len(tokens) > 2
    assert "".join(tokens).replace("</w>", " ").strip() == "blue triangle"
    ids = backbone.tokenizer("blue triangle")["input_ids"]
    assert ids[0] == backbone.tokenizer.bos_token_id and ids[-1] == backbone.tokenizer.eos_token_id
    assert len(ids) == len(tokens) + 2
    assert ids == AutoTokenizer.from_pretrained(str(tiny_clip))("blue triangle")["input_ids"]


# --- preprocessing --------------------------------------------------------------------------------

SIZES = [(32, 32), (48, 48), (64, 40), (40, 64), (100, 33), (33, 100), (301, 199), (20, 20), (17, 50), (1, 1)]


@pytest.mark.parametrize(
    "size, crop",
    [
        pytest.param(None, None, id="model-config"),  # resize 32, crop 32: smaller images are upsampled
        pytest.param(40, (33, 36), id="crop-smaller-than-resize"),
        pytest.param(32, (41, 37), id="crop-larger-than-resize"),  # zero padding with odd margins
        pytest.param(24, (40, 40), id="crop-larger-even-margins"),
    ],
)
def test_image_transform_matches_transformers_pil_processor(
    tiny_clip: Path, size: int | None, crop: tuple[int, int] | None
) -> None:
    processor_config = json.loads((tiny_clip / "preprocessor_config.json").read_text())
    if size is not None:
        processor_config["size"] = {"shortest_edge": size}
        processor_config["crop_size"] = {"height": crop[0], "width": crop[1]}
    ours = ImageTransform.from_processor_config(processor_config)
    reference = reference_processor(processor_config)
    crop_hw = (processor_config["crop_size"]["height"], processor_config["crop_size"]["width"])
    for seed, (width, height) in enumerate(SIZES):
        image = random_image(width, height, seed)
        expected = reference(images=image, return_tensors="np")["pixel_values"][0]
        actual = ours(image)
        assert actual.dtype == np.float32
        assert actual.shape == expected.shape == (3, *crop_hw)
        # the same uint8 resize in PIL; only float32 rounding of rescale/normalise differs
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5, err_msg=f"image {width}x{height}")


def test_image_transform_pads_with_the_normalised_zero_pixel() -> None:
    """An image smaller than the crop is zero-padded before normalisation, extra margin on top/left."""
    transform = ImageTransform(resize=2, crop=(5, 4))
    image = Image.new("RGB", (2, 2), (255, 255, 255))
    pixels = transform(image)
    zero = (0 - np.asarray(transform.mean, np.float32)) / np.asarray(transform.std, np.float32)
    white = (1 - np.asarray(transform.mean, np.float32)) / np.asarray(transform.std, np.float32)
    is_white = np.isclose(pixels, white[:, None, None], atol=1e-5).all(axis=0)
    assert np.isclose(pixels, zero[:, None, None], atol=1e-5).all(axis=0).sum() == 5 * 4 - 4
    # 3 spare rows -> 2 above, 1 below; 2 spare columns -> 1 left, 1 right (transformers' center_crop)
    assert np.argwhere(is_white).tolist() == [[2, 1], [2, 2], [3, 1], [3, 2]]


# --- encoders -------------------------------------------------------------------------------------

PROMPTS = ["a photo of a red circle.", "blue triangle", "an image of a green square, close up.", "x"]


def test_encode_text_equals_clipmodel_one_prompt_at_a_time(
    backbone: CLIPBackbone, reference_model: CLIPModel, tiny_clip: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_clip))
    with torch.no_grad():
        expected = torch.cat(
            [reference_model.get_text_features(**tokenizer([p], return_tensors="pt")).pooler_output for p in PROMPTS]
        )
    lengths = {len(tokenizer(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) == len(PROMPTS)  # different lengths: the batched call really pads
    for batch_size in (256, 3, 1):
        actual = backbone.encode_text(PROMPTS, batch_size=batch_size)
        assert actual.dtype == torch.float32 and actual.shape == (len(PROMPTS), 32)
        assert (actual - expected).abs().max().item() <= 1e-5
    assert backbone.encode_text([]).shape == (0, 32)


def test_encode_images_equals_clipmodel(backbone: CLIPBackbone, reference_model: CLIPModel, tiny_clip: Path) -> None:
    rng = np.random.default_rng(0)
    images = [
        draw_shape(name, rng, size)
        for name, size in (("red_circle", 48), ("blue_triangle", 32), ("green_square", 70), ("red_square", 20))
    ]
    reference = reference_processor(json.loads((tiny_clip / "preprocessor_config.json").read_text()))
    with torch.no_grad():
        pixel_values = reference(images=images, return_tensors="pt")["pixel_values"]
        expected = reference_model.get_image_features(pixel_values=pixel_values).pooler_output
    pixels = torch.from_numpy(np.stack([backbone.transform(im) for im in images]))
    before = backbone.image_batches_encoded
    actual = backbone.encode_images(pixels)
    assert backbone.image_batches_encoded == before + 1
    assert actual.dtype == torch.float32 and actual.shape == (4, 32)
    assert (actual - expected).abs().max().item() <= 1e-5


def test_bf16_runs_and_differs_from_fp32_only_slightly(backbone: CLIPBackbone, backbone_bf16: CLIPBackbone) -> None:
    pixels = torch.from_numpy(np.stack([backbone.transform(random_image(40, 30, s)) for s in range(6)]))
    for fp32, bf16 in (
        (backbone.encode_images(pixels), backbone_bf16.encode_images(pixels)),
        (backbone.encode_text(PROMPTS), backbone_bf16.encode_text(PROMPTS)),
    ):
        assert bf16.dtype == torch.float32  # returned as float32 whatever the compute precision
        assert not torch.equal(fp32, bf16)  # it really ran in bf16
        assert torch.nn.functional.cosine_similarity(fp32, bf16).min().item() > 0.999
        assert (fp32 - bf16).abs().max().item() < 0.02 * fp32.abs().max().item()


# --- fingerprint ----------------------------------------------------------------------------------


def _changed_keys(a: dict, b: dict) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if a[k] != b[k]}


def test_fingerprint_changes_with_precision(backbone: CLIPBackbone, backbone_bf16: CLIPBackbone) -> None:
    assert _changed_keys(backbone.fingerprint(), backbone_bf16.fingerprint()) == {"precision"}
    assert fingerprint_key(backbone.fingerprint()) != fingerprint_key(backbone_bf16.fingerprint())


def test_fingerprint_changes_with_preprocessing(backbone: CLIPBackbone, tiny_clip: Path, tmp_path: Path) -> None:
    fingerprint = backbone.fingerprint()
    # plain JSON: the key recomputed from the fingerprint.json written beside the cache is the same
    assert fingerprint_key(json.loads(json.dumps(fingerprint))) == fingerprint_key(fingerprint)
    assert fingerprint["preprocess"] == ImageTransform.from_file(tiny_clip / "preprocessor_config.json").to_dict()
    for change in (
        {"resize": 40},
        {"crop": (30, 30)},
        {"resample": Image.Resampling.BILINEAR},
        {"mean": (0.5, 0.5, 0.5)},
    ):
        changed = dataclasses.replace(backbone.transform, **change)
        other = {**fingerprint, "preprocess": changed.to_dict()}
        assert fingerprint_key(other) != fingerprint_key(fingerprint), change

    # the same weights in another folder whose preprocessor_config.json resizes differently
    copy = shutil.copytree(tiny_clip, tmp_path / "edited")
    processor = json.loads((copy / "preprocessor_config.json").read_text())
    processor["size"] = {"shortest_edge": 40}
    (copy / "preprocessor_config.json").write_text(json.dumps(processor))
    edited = load_backbone(ModelConfig(id=str(copy), device="cpu"))
    assert edited.transform.resize == 40
    assert _changed_keys(fingerprint, edited.fingerprint()) == {"model", "preprocess"}
    assert edited.fingerprint()["weights_sha256"] == fingerprint["weights_sha256"]
    assert fingerprint_key(edited.fingerprint()) != fingerprint_key(fingerprint)
