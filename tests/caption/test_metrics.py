"""CIDEr-D and BLEU-4 against pycocoevalcap (fed the same tokenised text); CLIPScore against a direct computation."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch

from fewclip.caption.metrics import bleu, cider_d, clip_scores, encode_and_score, image_pixels, text_scores, tokenize

# Several images, several references each, repeated words, lengths that differ, an n-gram in every
# image's references (idf 0), an empty-ish candidate and a perfect one.
REFERENCES = {
    "img1": [
        "A small red circle in the top left.",
        "a red circle, small, near the top-left corner",
        "the red circle is small and red",
    ],
    "img2": [
        "A large blue square at the bottom",
        "a big blue square near the bottom edge of the image",
        "blue square, large",
    ],
    "img3": ["two dogs play with a ball on the grass", "dogs playing on grass", "a dog and a dog with a ball"],
    "img4": ["a red circle", "the red circle in the center of the image is red"],
}
CANDIDATES = {
    "img1": "a small red circle in the top left",
    "img2": "a blue blue blue square square at the bottom of the image near the bottom",
    "img3": "a cat",
    "img4": "red",
}


def _tokenised() -> tuple[dict[str, list[str]], dict[str, str]]:
    return (
        {k: [tokenize(r) for r in refs] for k, refs in REFERENCES.items()},
        {k: tokenize(c) for k, c in CANDIDATES.items()},
    )


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("A red circle, small;  near the top-left\ncorner.") == "a red circle small near the top-left corner"
    assert tokenize("It's  DON'T!") == "it's don't"


def test_cider_d_matches_pycocoevalcap() -> None:
    from pycocoevalcap.cider.cider import Cider

    refs, cands = _tokenised()
    expected, expected_per_image = Cider().compute_score(refs, {k: [c] for k, c in cands.items()})
    score, per_image = cider_d(refs, cands)
    assert score == pytest.approx(float(expected), abs=1e-6)
    assert [per_image[k] for k in refs] == pytest.approx([float(v) for v in expected_per_image], abs=1e-6)
    assert per_image["img1"] > 1.0 > per_image["img3"] >= 0  # the metric separates good from bad here
    assert score > 0.3


def test_cider_d_on_a_larger_random_set_matches_pycocoevalcap() -> None:
    from pycocoevalcap.cider.cider import Cider

    from fewclip.world.captions import WorldCaptionConfig, world_caption_item

    cfg = WorldCaptionConfig(seed=3)
    refs, cands = {}, {}
    for i in range(30):
        captions = [tokenize(c) for c in world_caption_item(cfg, i)[2]]
        refs[str(i)] = captions[1:]
        cands[str(i)] = captions[0] if i % 3 else tokenize(world_caption_item(cfg, i + 1)[2][0])  # some wrong
    expected, expected_per_image = Cider().compute_score(refs, {k: [c] for k, c in cands.items()})
    score, per_image = cider_d(refs, cands)
    assert score == pytest.approx(float(expected), abs=1e-6)
    assert list(per_image.values()) == pytest.approx([float(v) for v in expected_per_image], abs=1e-6)


def test_cider_d_hand_worked_single_order() -> None:
    """Two images, unigrams only, sigma large: cosine of clipped tf-idf vectors times 10, by hand."""
    refs = {"a": ["red circle"], "b": ["blue circle"]}
    cands = {"a": "red red", "b": "blue circle"}
    score, per_image = cider_d(refs, cands, n=1, sigma=1e9)
    idf_red = math.log(2) - math.log(1)  # 'circle' is in both reference sets: idf 0
    # candidate a: red tf 2 -> weight 2*idf; clipped by the reference's 1*idf; reference vector (idf, 0)
    expected_a = (min(2 * idf_red, idf_red) * idf_red) / ((2 * idf_red) * idf_red) * 10
    assert per_image["a"] == pytest.approx(expected_a)  # 5.0: clipping halves the perfect match
    assert per_image["b"] == pytest.approx(10.0)
    assert score == pytest.approx((expected_a + 10) / 2)


def test_bleu4_matches_pycocoevalcap() -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    refs, cands = _tokenised()
    expected, expected_per_image = Bleu(4).compute_score(refs, {k: [c] for k, c in cands.items()}, verbose=0)
    score, per_image = bleu(refs, cands)
    assert score == pytest.approx(expected[3], abs=1e-6)
    assert [per_image[k] for k in refs] == pytest.approx(expected_per_image[3], abs=1e-6)
    assert per_image["img1"] == pytest.approx(1.0)


def test_text_scores_tokenise_both_sides_first() -> None:
    from pycocoevalcap.cider.cider import Cider

    refs, cands = _tokenised()
    shouted = {k: c.upper() + " !!" for k, c in CANDIDATES.items()}  # case and punctuation do not count
    scores = text_scores(REFERENCES, shouted)
    expected, _ = Cider().compute_score(refs, {k: [c] for k, c in cands.items()})
    assert scores.cider == pytest.approx(float(expected), abs=1e-6)
    assert scores.bleu4 == pytest.approx(bleu(refs, cands)[0]) and scores.bleu4_per_image["img1"] == pytest.approx(1.0)
    assert scores.cider_per_image == pytest.approx(cider_d(refs, cands)[1])


def test_metrics_refuse_mismatched_image_sets() -> None:
    with pytest.raises(ValueError, match=r"without a candidate: \['b'\]"):
        cider_d({"a": ["x"], "b": ["y"]}, {"a": "x"})
    with pytest.raises(ValueError, match=r"without reference captions: \['a'\]"):
        bleu({"a": []}, {"a": "x"})


def test_clip_scores_match_a_direct_computation() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, 8, generator=gen, dtype=torch.float64) * 3
    captions = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    captions[0] = -images[0]  # negative cosine: CLIP-S 0, RefCLIP-S 0
    references = [torch.randn(k, 8, generator=gen, dtype=torch.float64) for k in (1, 2, 3, 4, 5)]
    references[1] = -captions[1].repeat(2, 1)  # every reference opposite: reference term 0
    clip_s, ref_clip_s = clip_scores(images, captions, references)
    for i in range(5):
        cos = float(torch.dot(images[i], captions[i]) / (images[i].norm() * captions[i].norm()))
        expected = 2.5 * max(cos, 0.0)
        best = max(max(float(torch.dot(r, captions[i]) / (r.norm() * captions[i].norm())) for r in references[i]), 0.0)
        harmonic = 0.0 if expected == 0 or best == 0 else 2 * expected * best / (expected + best)
        assert float(clip_s[i]) == pytest.approx(expected, abs=1e-9)
        assert float(ref_clip_s[i]) == pytest.approx(harmonic, abs=1e-9)
    assert float(clip_s[0]) == 0 and float(ref_clip_s[1]) == 0 and float(ref_clip_s[2]) > 0
    assert clip_scores(images, captions)[1] is None


class _FakeBackbone:
    """Features as deterministic functions of the inputs: the helper must route them correctly."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.flatten(1)[:, :4]

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t), t.count("a") + 1.0, t.count("e"), 1.0] for t in texts])


def test_encode_and_score_routes_references_per_image() -> None:
    pixels = torch.rand(3, 3, 2, 2)
    captions = ["a red one", "blue", "green thing"]
    references = [["aaa"], ["eee", "a e"], ["x", "yy", "zzz"]]
    backbone = _FakeBackbone()
    clip_s, ref_clip_s = encode_and_score(backbone, pixels, captions, references, batch_size=2)  # type: ignore[arg-type]
    expected = clip_scores(
        backbone.encode_images(pixels), backbone.encode_text(captions), [backbone.encode_text(r) for r in references]
    )
    assert torch.allclose(clip_s, expected[0]) and torch.allclose(ref_clip_s, expected[1])


def test_clip_scores_with_the_world_clip_prefer_true_captions(tmp_path) -> None:
    """Through a real backbone: the features are those of the model itself, and true captions score higher."""
    from fewclip.backbones import ModelConfig, load_backbone
    from fewclip.world import CHECKPOINT
    from fewclip.world.captions import WorldCaptionConfig, world_caption_item
    from fewclip.world.render import COLOURS

    from PIL import Image

    backbone = load_backbone(ModelConfig(id=str(CHECKPOINT)))
    cfg = WorldCaptionConfig(seed=11)
    images, true_captions, wrong_captions, references = [], [], [], []
    for i in range(12):
        pixels, scene, captions = world_caption_item(cfg, i)
        images.append(Image.fromarray(pixels))
        true_captions.append(f"a {scene.colour} {scene.shape}")
        other = list(COLOURS)[(list(COLOURS).index(scene.colour) + 4) % 8]
        wrong_captions.append(f"a {other} {scene.shape}")
        references.append(captions)
    pixels = torch.from_numpy(np.stack([backbone.transform(image) for image in images]))
    paths = [tmp_path / f"{i}.png" for i in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path)
    assert torch.equal(image_pixels(backbone, paths), pixels)  # PNG is lossless: the same pixels from files
    clip_true, ref_true = encode_and_score(backbone, pixels, true_captions, references, batch_size=5)
    clip_wrong, _ = encode_and_score(backbone, pixels, wrong_captions, references)
    with torch.no_grad():
        image_features = backbone.model.get_image_features(pixel_values=pixels).pooler_output
    direct = 2.5 * torch.nn.functional.cosine_similarity(image_features, backbone.encode_text(true_captions)).clamp(
        min=0
    )
    assert torch.allclose(clip_true, direct.double(), atol=1e-5)
    assert float(clip_true.mean()) > float(clip_wrong.mean()) + 0.1
    assert bool((ref_true > 0).all())
