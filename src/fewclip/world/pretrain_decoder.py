"""Language-model pretraining of a tiny GPT-2 on world captions alone (``fewclip world pretrain-decoder``).

The captioning default needs a decoder that already speaks the world's language, as ``gpt2`` speaks
English, so that what the captioning methods learn is to look at the image. Text only, no images:
captions drawn from every template, colour, shape, size and position phrase of ``world.captions``.

Tokenizer: GPT-2-format byte-level BPE whose merges make every world word one token. Special tokens:
``<|endoftext|>`` is BOS, EOS and UNK (GPT-2's convention: the same id starts and ends a caption) and
``<|pad|>`` is a distinct PAD, so that masking padding never masks the EOS the model must learn to emit.
Training sequences are ``<|endoftext|> caption <|endoftext|>``, padded with ``<|pad|>`` (label -100).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from fewclip.world.captions import all_captions, caption_words
from fewclip.world.card import pretraining_record, write_card
from fewclip.world.pretrain import adamw, lr_at, start_pretraining
from fewclip.world.tokenizer import gpt2_word_merges, write_gpt2_tokenizer

BOS_EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


@dataclass
class DecoderPretrainConfig:
    steps: int = 1500
    seed: int = 0
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 48  # room for 20 prefix-tuning tokens before a caption of <= 15 tokens
    eval_captions: int = 512


def build_decoder(cfg: DecoderPretrainConfig, vocab_size: int, special: dict[str, int]) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        bos_token_id=special[BOS_EOS_TOKEN],
        eos_token_id=special[BOS_EOS_TOKEN],
        pad_token_id=special[PAD_TOKEN],
    )
    torch.manual_seed(cfg.seed)
    return GPT2LMHeadModel(config)


def caption_batch(tokenizer: Any, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """``<|endoftext|> text <|endoftext|>`` per text, right-padded; labels are -100 on padding only."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [[bos, *ids, eos] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # (batch, width)
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@torch.no_grad()
def caption_loss(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 256) -> float:
    """Mean cross-entropy per predicted token (EOS included, BOS not) over ``texts``."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        batch = caption_batch(tokenizer, texts[start : start + batch_size])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=-100, reduction="sum"
        )
        total += float(losses)
        count += int((targets != -100).sum())
    return total / count


def shuffled_words(texts: Sequence[str], rng: np.random.Generator) -> list[str]:
    """The same words in a random order: the same unigram statistics, no grammar."""
    return [" ".join(rng.permutation(text.split()).tolist()) for text in texts]


def pretrain_decoder(
    cfg: DecoderPretrainConfig, out: Path, log: Callable[[str], None] = print, command: str | None = None
) -> dict[str, Any]:
    """Train and save the world decoder in Hugging Face format (fp16 safetensors); returns the numbers."""
    from transformers import AutoTokenizer

    started, rng = start_pretraining(cfg.seed, out)
    special = write_gpt2_tokenizer(out, gpt2_word_merges(caption_words()), cfg.n_positions, (BOS_EOS_TOKEN, PAD_TOKEN))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    corpus = all_captions()
    model = build_decoder(cfg, len(tokenizer), special)
    optimizer = adamw(model, lambda name: "wte" not in name and "wpe" not in name, cfg.lr, cfg.weight_decay)
    history: list[dict[str, float]] = []
    train_start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        lr = lr_at(step - 1, cfg.steps, cfg.lr, cfg.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        texts = [corpus[i] for i in rng.integers(len(corpus), size=cfg.batch_size)]
        loss = model(**caption_batch(tokenizer, texts)).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step in (1, cfg.steps):
            history.append(
                {
                    "step": step,
                    "seconds": round(time.perf_counter() - train_start, 1),
                    "loss": round(float(loss.detach()), 4),
                    "lr": lr,
                }
            )
            log(f"step {step:5d}  {history[-1]['seconds']:6.1f}s  loss {history[-1]['loss']:.3f}  lr {lr:.2e}")
    train_seconds = time.perf_counter() - train_start
    eval_texts = [corpus[i] for i in rng.integers(len(corpus), size=cfg.eval_captions)]
    model.half().float()  # measured as shipped: weights rounded to fp16, loss computed in fp32
    eval_loss = caption_loss(model, tokenizer, eval_texts)
    shuffled_loss = caption_loss(model, tokenizer, shuffled_words(eval_texts, rng))
    results = {
        "steps": cfg.steps,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "eval_loss": round(eval_loss, 4),
        "eval_perplexity": round(math.exp(eval_loss), 3),
        "shuffled_loss": round(shuffled_loss, 4),
        "shuffled_perplexity": round(math.exp(shuffled_loss), 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "special_tokens": special,
    }
    model.half().save_pretrained(str(out))  # fp16 safetensors; load with dtype=torch.float32 to train
    (out / "pretraining.json").write_text(
        json.dumps({"config": asdict(cfg), "results": results, "history": history}, indent=1) + "\n"
    )
    write_decoder_card(
        out,
        command
        or f"fewclip world pretrain-decoder --out {out} --steps {cfg.steps} "
        f"--seed {cfg.seed} --batch-size {cfg.batch_size}",
    )
    log(json.dumps(results))
    return results


def write_decoder_card(folder: Path, command: str) -> Path:
    """README.md of the decoder folder, from its ``pretraining.json``."""
    cfg, results = pretraining_record(folder)
    special = results["special_tokens"]
    lines = [
        "# fewclip world decoder",
        "",
        "A tiny GPT-2 language model (`GPT2LMHeadModel`, Hugging Face format) pretrained on the captions of",
        "fewclip's procedural world alone (no images). It is the default decoder of `fewclip caption run`,",
        "which adds cross-attention to a frozen world CLIP and tunes it with adapters, prefix tuning or LoRA.",
        "It is not a general-purpose language model: it knows only the world's words.",
        "",
        "## How it was made",
        "",
        f"    {command}",
        "",
        f"- Architecture: {cfg['n_layer']} layers, width {cfg['n_embd']}, {cfg['n_head']} heads, "
        f"{cfg['n_positions']} positions, vocabulary {results['vocab_size']}; {results['parameters']:,} parameters "
        "(input and output embeddings tied), stored in fp16.",
        "- Tokenizer: GPT-2-format byte-level BPE (vocab.json + merges.txt + tokenizer.json) whose merges make each "
        f"world word one token. `<|endoftext|>` (id {special[BOS_EOS_TOKEN]}) is BOS, EOS and UNK, as in GPT-2; "
        f"`<|pad|>` (id {special[PAD_TOKEN]}) is a distinct PAD. The tokenizer adds no special tokens itself: "
        "sequences are `<|endoftext|> caption <|endoftext|>`.",
        "- Data: captions drawn uniformly from every combination of the world caption templates, 8 colours, 8 "
        "shapes, 3 sizes and the position phrases of `fewclip.world.captions` "
        f"({len(all_captions()):,} distinct captions).",
        f"- Objective: next-token cross-entropy (padding masked); AdamW lr {cfg['lr']}, weight decay "
        f"{cfg['weight_decay']}, batch {cfg['batch_size']}, linear warm-up then cosine over {cfg['steps']} steps "
        f"(seed {cfg['seed']}), fp32 on CPU: {results['train_seconds']} s of training; loss "
        f"{results['first_loss']:.3f} -> {results['final_loss']:.3f}.",
        "",
        "## Measured (fp16 weights as shipped, 512 sampled captions)",
        "",
        "| text | loss per token | perplexity |",
        "|---|---|---|",
        f"| world captions | {results['eval_loss']:.3f} | {results['eval_perplexity']:.2f} |",
        f"| the same words shuffled | {results['shuffled_loss']:.3f} | {results['shuffled_perplexity']:.2f} |",
        "",
    ]
    return write_card(folder, lines)
