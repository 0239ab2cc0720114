"""Tiny seeded models and a learnable toy caption task, for tests and benchmarks (like ``embedded.build_tiny_clip``)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from fewclip.world.toy import COLOURS
from fewclip.world.tokenizer import chain_merges, write_clip_tokenizer

TOY_WORDS = ("a", "square", "on", "grey", *COLOURS)


TOY_CAPTIONS = tuple(f"a {colour} square" for colour in COLOURS)


def build_tiny_decoder(
    folder: Path,
    seed: int = 0,
    words: Iterable[str] = TOY_WORDS,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 32,
    pretrain_on: Sequence[str] = TOY_CAPTIONS,
    steps: int = 150,
    dropout: float = 0.0,
) -> Path:
    """Save a seeded ``GPT2LMHeadModel`` (no cross-attention) with a CLIP-format BPE tokenizer in which each
    of ``words`` is one token (bos ``<|startoftext|>``, eos ``<|endoftext|>``), pretrained for ``steps``
    full-batch Adam steps as a language model on ``pretrain_on`` (text only), as a real decoder is: it
    knows how captions go, not which one fits an image. No dropout by default (GPT-2 has 0.1), so that
    a training loss shows what was learnt rather than the frozen decoder's dropout noise."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = Path(folder)
    vocab_size = write_clip_tokenizer(folder, chain_merges(words), n_positions)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # words apart from the start: text alone never separates interchangeable words
        model.transformer.wte.weight.normal_(0, 0.3)  # (colours), and the frozen tied head must tell them apart
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    rows = [
        [config.bos_token_id, *tokenizer(text, add_special_tokens=False).input_ids, config.eos_token_id]
        for text in pretrain_on
    ]
    if rows and steps:
        longest = max(map(len, rows))
        ids = torch.tensor([row + [config.eos_token_id] * (longest - len(row)) for row in rows])
        labels = torch.tensor([row + [-100] * (longest - len(row)) for row in rows])
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(steps):
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval().save_pretrained(str(folder))
    return folder


def toy_caption_images(folder: Path, per_colour: int, seed: int = 0, size: int = 32) -> list[tuple[Path, str]]:
    """(image, caption) pairs: a square of one of ``COLOURS`` at a random place on grey noise, captioned
    ``a <colour> square``. The caption can only be right if the decoder reads the image."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(per_colour):
        for name, rgb in COLOURS.items():
            image = Image.fromarray(np.clip(rng.normal(128, 12, (size, size, 3)), 0, 255).astype(np.uint8))
            side = int(rng.integers(size // 2, 3 * size // 4))
            x, y = rng.integers(0, size - side, size=2)
            ImageDraw.Draw(image).rectangle([x, y, x + side, y + side], fill=rgb)
            path = folder / f"{name}_{index:03d}.png"
            image.save(path)
            pairs.append((path, f"a {name} square"))
    return pairs
