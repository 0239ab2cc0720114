"""Caption model: what trains (counts against a hand count), what stays frozen (bit for bit), identity inits, and
any backbone that offers image tokens as its encoder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from fewclip.backbones import ModelConfig, load_backbone
from fewclip.backbones.protocol import NotOffered
from fewclip.caption.artifacts import load_caption_model, save_caption_model
from fewclip.caption.encoder_cache import EncoderTokens
from fewclip.caption.methods import adapter_width
from fewclip.caption.model import CaptionModel
from fewclip.data.images import read_image
from fewclip.caption.train import CaptionTrainConfig, pad_batch, caption_token_ids, train_captioner
from tests.open_clip_models import build_open_clip, require_open_clip

D, E, LAYERS, HEADS = 32, 64, 2, 2  # tiny decoder width, tiny CLIP width, decoder blocks, heads


def expected_count(method: str, prefix: int = 4, rank: int = 8) -> int:
    """Independent count: new cross-attention (k/v from D, q, out, layer norm) + projection E->D + method."""
    cross = (D * 2 * D + 2 * D) + (D * D + D) + (D * D + D) + 2 * D
    base = LAYERS * cross + (E * D + D)
    bottleneck = max(D // 2 - 30, D // 8)
    extra = {
        "adapter": LAYERS * (D * bottleneck + bottleneck + bottleneck * D + D),
        "prefix": LAYERS * 2 * D * prefix,  # keys and values, all heads
        "lora": LAYERS * ((rank * D + 3 * D * rank) + (rank * D + D * rank)),
    }  # c_attn (D->3D), c_proj (D->D)
    return 0 if method == "untrained" else base + extra[method]


@pytest.mark.parametrize("method", ["untrained", "adapter", "prefix", "lora"])
def test_trainable_count_matches_hand_count(caption_config, method):
    model = CaptionModel(caption_config(method=method))
    assert model.trainable_count() == expected_count(method)
    names = set(model.trainable_parameters())
    if method != "untrained":
        assert {
            "projection.weight",
            "decoder.transformer.h.0.crossattention.q_attn.weight",
            "decoder.transformer.h.1.ln_cross_attn.weight",
        } <= names
        assert not any(
            ".attn.c_attn.weight" in n or "mlp" in n or "wte" in n or n.startswith("encoder.") for n in names
        )
    if method == "lora":  # self-attention only, never the cross-attention's own c_attn
        assert sum("lora_A" in n for n in names) == 2 * LAYERS
        assert not any("crossattention" in n and "lora" in n for n in names)


def test_adapter_default_width_is_the_reference_rule():
    assert adapter_width(768, None) == 354  # GPT-2: 768 / 2 - 30
    assert adapter_width(32, None) == 4 and adapter_width(32, 7) == 7


def _toy_examples(model, toy_pairs):
    images = {hashlib.sha1(path.read_bytes()).hexdigest(): path for path, _ in toy_pairs}
    sha = {path: key for key, path in images.items()}
    return images, [(sha[path], caption) for path, caption in toy_pairs]


@pytest.mark.parametrize("method", ["adapter", "prefix", "lora"])
def test_training_changes_every_trainable_and_no_frozen_parameter(caption_config, toy_pairs, method):
    model = CaptionModel(caption_config(method=method))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    images, examples = _toy_examples(model, toy_pairs)
    tokens = EncoderTokens(model, images, None, 0)
    encoded = tokens(list(images)[:4]).clone()
    train_captioner(model, examples[:8], tokens, CaptionTrainConfig(epochs=2, batch_size=4, lr=1e-3))
    trainable = set(model.trainable_parameters())
    for name, param in model.named_parameters():
        if name in trainable:
            assert not torch.equal(param, before[name]), f"{name} did not change"
        else:
            assert torch.equal(param, before[name]), f"frozen {name} changed"
    fresh = EncoderTokens(model, images, None, 0)  # nothing cached: the encoder runs again
    assert torch.equal(fresh(list(images)[:4]), encoded)  # the encoder (outside the module) stayed frozen


def test_identity_inits_and_seeded_cross_attention(caption_config, toy_pairs):
    """An untrained adapter or LoRA changes nothing: same logits as the untrained baseline of the seed."""
    images, examples = _toy_examples(None, toy_pairs)
    baseline = CaptionModel(caption_config(method="untrained"), seed=3)
    tokens = EncoderTokens(baseline, images, None, 0)(list(images)[:3])
    ids, mask, _ = pad_batch([caption_token_ids(baseline.tokenizer, "a red square", 8)] * 3, baseline.eos_id)
    reference = baseline.decoder_step(ids, baseline.memory(tokens), key_mask=mask).logits
    for method in ("adapter", "lora"):
        model = CaptionModel(caption_config(method=method), seed=3)
        assert torch.allclose(model.decoder_step(ids, model.memory(tokens), key_mask=mask).logits, reference, atol=1e-6)
    other_seed = CaptionModel(caption_config(method="untrained"), seed=4)
    assert not torch.allclose(other_seed.decoder_step(ids, other_seed.memory(tokens), key_mask=mask).logits, reference)


def test_padding_is_masked_out_of_the_loss(caption_config, toy_pairs):
    """A caption's loss is the same alone and right-padded beside a longer one."""
    model = CaptionModel(caption_config(method="prefix"))
    images, _ = _toy_examples(model, toy_pairs)
    tokens = EncoderTokens(model, images, None, 0)(list(images)[:2])
    short = caption_token_ids(model.tokenizer, "a red square", 16)
    long = caption_token_ids(model.tokenizer, "a red square on a grey square", 16)
    alone = model.loss(tokens[:1], *pad_batch([short], model.eos_id))
    ids, mask, labels = pad_batch([short, long], model.eos_id)
    assert labels[0, len(short) :].eq(-100).all() and len(long) > len(short)
    padded_logits = model.decoder_step(ids, model.memory(tokens), key_mask=mask).logits[0, : len(short)]
    alone_logits = model.decoder_step(ids[:1, : len(short)], model.memory(tokens[:1])).logits[0]
    assert torch.allclose(padded_logits, alone_logits, atol=1e-5)
    both = model.loss(tokens, ids, mask, labels)
    assert not torch.isclose(alone, both)  # the batch loss covers both captions' tokens


@pytest.mark.parametrize("method", ["untrained", "lora"])
def test_saved_captioner_reloads_exactly(caption_config, toy_pairs, tmp_path, method):
    model = CaptionModel(caption_config(method=method), seed=2)
    with torch.no_grad():
        for param in model.trainable_parameters().values():
            param.add_(torch.randn_like(param))
    save_caption_model(model, tmp_path / "captioner", {"history": [{"epoch": 1.0}]})
    loaded = load_caption_model(tmp_path / "captioner")
    assert loaded.config == model.config and loaded.trainable_count() == model.trainable_count()
    for name, value in model.trainable_state().items():
        assert torch.equal(loaded.trainable_state()[name], value)
    images, _ = _toy_examples(model, toy_pairs)
    tokens = EncoderTokens(model, images, None, 0)(list(images)[:2])
    ids = torch.tensor([[model.bos_id, 320]] * 2)
    assert torch.equal(
        model.decoder_step(ids, model.memory(tokens)).logits, loaded.decoder_step(ids, loaded.memory(tokens)).logits
    )


@pytest.mark.open_clip
def test_any_backbone_with_image_tokens_encodes_for_the_captioner(caption_config, toy_pairs, tmp_path):
    """An OpenCLIP ViT as the encoder: its class + patch tokens are what the decoder cross-attends to, and the
    captioner trains on them; an OpenCLIP ResNet, without patch tokens, is refused naming the model."""
    require_open_clip()
    config_file, weights = build_open_clip(tmp_path / "vit", "fewclip-tiny-vit")
    encoder = load_backbone(
        ModelConfig(library="open_clip", id=str(config_file), pretrained=str(weights), device="cpu")
    )
    model = CaptionModel(caption_config(method="lora"), encoder=encoder)
    assert model.transform is encoder.transform and (model.encoder_tokens, model.encoder_width) == (1 + 4 * 4, 32)
    assert model.encoder_fingerprint()["library"] == "open_clip"
    images, examples = _toy_examples(model, toy_pairs)
    tokens = EncoderTokens(model, images, None, 0)
    first = list(images)[:2]
    pixels = torch.from_numpy(np.stack([encoder.transform(read_image(images[key])) for key in first]))
    torch.testing.assert_close(tokens(first), encoder.image_tokens(pixels), atol=1e-6, rtol=0)
    before = {name: p.detach().clone() for name, p in model.trainable_parameters().items()}
    train_captioner(model, examples[:8], tokens, CaptionTrainConfig(epochs=2, batch_size=4, lr=1e-3))
    assert before and all(not torch.equal(p, before[n]) for n, p in model.trainable_parameters().items())
    rn_config, rn_weights = build_open_clip(tmp_path / "rn", "fewclip-tiny-rn")
    resnet = load_backbone(
        ModelConfig(library="open_clip", id=str(rn_config), pretrained=str(rn_weights), device="cpu")
    )
    with pytest.raises(NotOffered, match="does not offer image_tokens .*ModifiedResNet.*choose a ViT"):
        CaptionModel(caption_config(method="adapter"), encoder=resnet)
