"""The shipped world decoder: loads offline like a hub GPT-2 and knows the world's caption language."""

from __future__ import annotations

import json

import numpy as np
import torch

from fewclip.world import DECODER
from fewclip.world.captions import WorldCaptionConfig, caption_words, world_caption_item
from fewclip.world.pretrain_decoder import caption_batch, caption_loss, shuffled_words


def _load():
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(str(DECODER), dtype=torch.float32, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(str(DECODER), local_files_only=True)


def test_shipped_decoder_is_small_complete_and_documented() -> None:
    names = {p.name for p in DECODER.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "pretraining.json",
    } <= names
    total = sum(p.stat().st_size for p in DECODER.iterdir() if p.is_file())
    assert total <= 2 * 2**20, f"{total / 2**20:.2f} MiB"
    from safetensors import safe_open

    with safe_open(str(DECODER / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
    card = (DECODER / "README.md").read_text()
    results = json.loads((DECODER / "pretraining.json").read_text())["results"]
    assert "fewclip world pretrain-decoder --out" in card and f"{results['eval_loss']:.3f}" in card


def test_special_tokens_and_one_token_per_world_word() -> None:
    model, tokenizer = _load()
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == model.config.eos_token_id == model.config.bos_token_id
    assert tokenizer.pad_token_id == model.config.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.convert_ids_to_tokens([tokenizer.eos_token_id, tokenizer.pad_token_id]) == [
        "<|endoftext|>",
        "<|pad|>",
    ]
    for word in caption_words():
        assert len(tokenizer(word)["input_ids"]) == 1 and len(tokenizer(" " + word)["input_ids"]) == 1, word
    text = "a small red circle, in the top left corner"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    batch = caption_batch(tokenizer, [text, "a red circle"])
    assert batch["input_ids"][1].tolist()[:5] == [
        tokenizer.bos_token_id,
        *tokenizer("a red circle")["input_ids"],
        tokenizer.eos_token_id,
    ]
    assert batch["labels"][1].tolist()[5:] == [-100] * (batch["labels"].shape[1] - 5)


def test_shipped_decoder_prefers_world_captions_to_shuffled_words() -> None:
    model, tokenizer = _load()
    captions = [c for i in range(40) for c in world_caption_item(WorldCaptionConfig(seed=99), i)[2]]
    shuffled = shuffled_words(captions, np.random.default_rng(0))
    true_loss, shuffled_loss = caption_loss(model, tokenizer, captions), caption_loss(model, tokenizer, shuffled)
    assert true_loss < 1.5 and shuffled_loss > true_loss + 3, (true_loss, shuffled_loss)
    # the loss helper is the model's own: HF's mean loss over the same tokens agrees
    batch = caption_batch(tokenizer, captions[:8])
    with torch.no_grad():
        hf_loss = float(model(**batch).loss)
    assert abs(hf_loss - caption_loss(model, tokenizer, captions[:8])) < 1e-4


def test_greedy_generation_from_bos_is_a_world_caption() -> None:
    model, tokenizer = _load()
    start = torch.tensor([[tokenizer.bos_token_id]])
    out = model.generate(start, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out[0, -1] == tokenizer.eos_token_id
    words = tokenizer.decode(out[0, 1:-1]).replace(",", " ,").split()
    assert words and set(words) <= set(caption_words())


def test_pretrain_decoder_command_writes_a_loadable_decoder(tmp_path) -> None:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from fewclip.runner.cli import main

    out = tmp_path / "decoder"
    assert (
        main(["world", "pretrain-decoder", "--out", str(out), "--steps", "30", "--batch-size", "16", "--seed", "1"])
        == 0
    )
    record = json.loads((out / "pretraining.json").read_text())
    assert record["config"]["steps"] == 30 and record["config"]["batch_size"] == 16 and record["config"]["seed"] == 1
    assert record["results"]["final_loss"] < record["results"]["first_loss"] - 2  # it learned something in 30 steps
    card = (out / "README.md").read_text()
    assert f"fewclip world pretrain-decoder --out {out} --steps 30 --seed 1 --batch-size 16" in card
    model = GPT2LMHeadModel.from_pretrained(str(out), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert model.config.n_layer == 2 and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(str(DECODER)).get_vocab()  # same tokenizer as shipped
