"""A BPE tokenizer in CLIP's format (vocab.json + merges.txt), trained on the world's captions.

Layout as OpenAI's: the 256 byte symbols, the same with ``</w>``, one token per merge in merge order,
then ``<|startoftext|>`` and ``<|endoftext|>`` last. Loadable by ``CLIPTokenizer``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-character table (the base of its BPE vocabulary)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


# CLIP's pre-tokenisation: lower-cased words, numbers, runs of other symbols
_WORDS = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


_BYTE_TABLE = bytes_to_unicode()


def word_symbols(word: str) -> tuple[str, ...]:
    chars = [_BYTE_TABLE[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1] + [chars[-1] + "</w>"])


def train_bpe(texts: Iterable[str], max_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """Learn merges greedily: repeatedly join the most frequent adjacent pair (ties: first seen)."""
    counts = Counter(w for text in texts for w in _WORDS.findall(text.lower()))
    return learn_merges(Counter({word_symbols(w): n for w, n in counts.items()}), max_merges, min_frequency)


def learn_merges(words: Counter[tuple[str, ...]], max_merges: int, min_frequency: int) -> list[tuple[str, str]]:
    """BPE training on words given as symbol tuples with counts (ties: the shorter joined symbol first)."""
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        pair, count = max(pairs.items(), key=lambda kv: (kv[1], -len(kv[0][0] + kv[0][1])))
        if count < min_frequency:
            break
        merges.append(pair)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, n in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return merges


def chain_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that make each given word one token (left to right), for hand-made vocabularies."""
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words)):
        pieces = list(word_symbols(word))
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in merges:
                merges.append(pair)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return merges


def write_clip_tokenizer(folder: Path, merges: Sequence[tuple[str, str]], model_max_length: int = 32) -> int:
    """Write vocab.json, merges.txt (and tokenizer.json via CLIPTokenizer); returns the vocabulary size."""
    from transformers import CLIPTokenizer

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab)
    for left, right in merges:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=model_max_length
    )
    # transformers 5 writes only tokenizer.json here; vocab.json and merges.txt stay beside it
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def gpt2_word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """GPT-2-style merges learned (BPE, run to the end) on the given words, each both at the start of a text
    and after a space (``red`` and ``Ġred``): applied in rank order, they make every such word one token."""
    spelled: Counter[tuple[str, ...]] = Counter()
    for word in sorted(set(words)):  # a fixed order: ties between equally frequent pairs break the same way
        for text in (word, " " + word):
            spelled[tuple(_BYTE_TABLE[b] for b in text.encode("utf-8"))] += 1
    return learn_merges(spelled, max_merges=10**6, min_frequency=1)


def write_gpt2_tokenizer(
    folder: Path,
    merges: Sequence[tuple[str, str]],
    model_max_length: int,
    special_tokens: Sequence[str] = ("<|endoftext|>", "<|pad|>"),
) -> dict[str, int]:
    """Write a GPT-2-format byte-level BPE tokenizer (vocab.json, merges.txt, tokenizer.json,
    tokenizer_config.json) that ``AutoTokenizer.from_pretrained(folder)`` loads; returns the special
    tokens' ids. Layout: the 256 byte symbols, one token per merge, then ``special_tokens`` in order.

    The first special token is BOS, EOS and UNK (as in GPT-2); the second, if given, is a distinct PAD.
    The tokenizer adds no BOS/EOS by itself (GPT-2's behaviour): a caller puts them where it wants them.
    """
    from transformers import GPT2Tokenizer

    vocab = list(_BYTE_TABLE.values())
    seen = set(vocab)
    for left, right in merges:
        if left + right not in seen:
            vocab.append(left + right)
            seen.add(left + right)
    vocab += list(special_tokens)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    main = special_tokens[0]
    pad = special_tokens[1] if len(special_tokens) > 1 else None
    tokenizer = GPT2Tokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        unk_token=main,
        bos_token=main,
        eos_token=main,
        pad_token=pad,
        model_max_length=model_max_length,
    )
    tokenizer.save_pretrained(str(folder))
    return {token: vocab.index(token) for token in special_tokens}
