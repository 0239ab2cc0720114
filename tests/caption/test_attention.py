"""Cross-attention maps: one per generated token, each a distribution over the patches, different per word."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fewclip.caption.attention import cross_attention_maps, draw_attention_panels, token_words
from fewclip.caption.model import CaptionModel


@pytest.fixture()
def model_and_tokens(caption_config, toy_pairs):
    model = CaptionModel(caption_config(method="adapter"), seed=0)
    pixels = torch.from_numpy(np.stack([model.transform(Image.open(toy_pairs[1][0]).convert("RGB"))]))
    return model, model.encode_images(pixels)


def test_maps_sum_to_one_over_patches_and_differ_between_words(model_and_tokens):
    model, tokens = model_and_tokens
    ids = model.tokenizer("a green square", add_special_tokens=False).input_ids
    maps = cross_attention_maps(model, tokens, ids)
    assert maps.shape == (3, 4, 4)  # 32 px images, 8 px patches
    assert np.allclose(maps.reshape(3, -1).sum(1), 1.0, atol=1e-5) and (maps >= 0).all()
    assert not np.allclose(maps[0], maps[1], atol=1e-4) and not np.allclose(maps[1], maps[2], atol=1e-4)
    # the first layer gives other maps than the last, and the map of a word does not depend on later words
    assert not np.allclose(cross_attention_maps(model, tokens, ids, layer=0), maps)
    assert np.allclose(cross_attention_maps(model, tokens, ids[:2]), maps[:2], atol=1e-6)


def test_map_is_the_head_mean_of_the_generating_step_renormalised_without_cls(model_and_tokens):
    model, tokens = model_and_tokens
    ids = model.tokenizer("a green square", add_special_tokens=False).input_ids
    out = model.decoder(
        input_ids=torch.tensor([[model.bos_id, *ids]]),
        encoder_hidden_states=model.memory(tokens),
        output_attentions=True,
    )
    direct = out.cross_attentions[-1][0].mean(0)[:3, 1:]  # query j-1 generated token j; CLS dropped
    direct = (direct / direct.sum(-1, keepdim=True)).reshape(3, 4, 4).detach().numpy()
    assert np.allclose(cross_attention_maps(model, tokens, ids), direct, atol=1e-6)


def test_bad_layer_is_named(model_and_tokens):
    model, tokens = model_and_tokens
    with pytest.raises(ValueError, match="attention_layer: 5 is out of range for a decoder with 2 blocks"):
        cross_attention_maps(model, tokens, [320], layer=5)


def test_panels_are_drawn_one_per_word(model_and_tokens, toy_pairs, tmp_path):
    model, tokens = model_and_tokens
    ids = model.tokenizer("a green square", add_special_tokens=False).input_ids
    words = token_words(model.tokenizer, ids)
    assert words == ["a", "green", "square"]
    path = draw_attention_panels(
        Image.open(toy_pairs[1][0]),
        words,
        cross_attention_maps(model, tokens, ids),
        tmp_path / "panels.png",
        title="a green square",
    )
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 100  # four panels in one row
