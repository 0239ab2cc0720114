"""Decoding: the KV cache changes nothing, beam 1 is greedy, beam search equals Hugging Face's generate."""

from __future__ import annotations

import warnings

import pytest
import torch

from fewclip.caption.decode import DecodeConfig, beam_ids, generate_ids, greedy_ids
from fewclip.caption.model import CaptionModel


def perturbed(caption_config, method: str, scale: float = 0.085) -> tuple[CaptionModel, torch.Tensor]:
    """A model with randomly moved trainable weights (captions then end at different lengths, so the EOS
    and length-penalty paths are exercised), and its memory for 6 random images."""
    model = CaptionModel(caption_config(method=method), seed=1)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.randn(6, 3, 32, 32, generator=generator)
    with torch.no_grad():
        for param in model.trainable_parameters().values():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
        memory = model.memory(model.encode_images(pixels))
    return model, memory


@pytest.mark.parametrize("method", ["adapter", "prefix", "lora"])
def test_cache_changes_nothing(caption_config, method):
    model, memory = perturbed(caption_config, method)
    with torch.no_grad():
        assert greedy_ids(model, memory, 10, use_cache=True) == greedy_ids(model, memory, 10, use_cache=False)
        for beams in (2, 3):
            assert beam_ids(model, memory, beams, 8, 1.0, use_cache=True) == beam_ids(
                model, memory, beams, 8, 1.0, use_cache=False
            )


@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_beam_one_is_greedy_and_batching_changes_nothing(caption_config, method):
    model, memory = perturbed(caption_config, method)
    with torch.no_grad():
        greedy = greedy_ids(model, memory, 10)
        assert beam_ids(model, memory, 1, 10) == greedy
        assert [greedy_ids(model, memory[i : i + 1], 10)[0] for i in range(len(memory))] == greedy
        beam = beam_ids(model, memory, 3, 8, 2.0)
        assert [beam_ids(model, memory[i : i + 1], 3, 8, 2.0)[0] for i in range(len(memory))] == beam


def test_beam_search_equals_hugging_face_generate(caption_config):
    """For LoRA (no prefix, positions 0..) HF's generate decodes the same model: results must agree,
    with captions that end early at some lengths and run to max_length at others."""
    model, memory = perturbed(caption_config, "lora")
    lengths = set()
    with torch.no_grad():
        for length_penalty in (2.0, 1.0, 0.0):
            for beams in (2, 3, 4):
                ours = beam_ids(model, memory, beams, 8, length_penalty)
                theirs = model.decoder.generate(
                    input_ids=torch.full((6, 1), model.bos_id),
                    encoder_hidden_states=memory,
                    num_beams=beams,
                    max_new_tokens=8,
                    do_sample=False,
                    length_penalty=length_penalty,
                    early_stopping=False,
                    eos_token_id=model.eos_id,
                    pad_token_id=model.eos_id,
                    bos_token_id=model.bos_id,
                )
                theirs = [row[1:] for row in theirs.tolist()]
                theirs = [row[: row.index(model.eos_id)] if model.eos_id in row else row for row in theirs]
                assert ours == theirs, (beams, length_penalty)
                lengths |= {len(row) for row in ours}
    assert 8 in lengths and min(lengths) < 8  # some beams end with EOS, some run to max_length


def test_generate_ids_follows_settings(caption_config):
    model, memory = perturbed(caption_config, "adapter")
    tokens = torch.zeros(2, model.encoder_tokens, model.encoder_width)
    out = generate_ids(model, tokens, DecodeConfig(max_length=5))
    assert all(len(row) <= 5 for row in out)
    assert generate_ids(model, tokens, DecodeConfig(beam_size=1, max_length=5)) == out


@pytest.mark.parametrize("method", ["prefix", "lora"])
def test_decoding_with_the_cache_uses_no_deprecated_argument(caption_config, method):
    """The KV cache goes to GPT-2 under the name this transformers gives it: passing `past_key_values` where
    it was renamed `cache` is a FutureWarning on every decoding step (ten lines under `fewclip -q`)."""
    model, memory = perturbed(caption_config, method)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        greedy_ids(model, memory, 6)
        beam_ids(model, memory, 2, 6)
    assert [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))] == []
