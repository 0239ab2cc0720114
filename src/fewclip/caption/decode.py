"""Batched greedy and beam-search decoding with the decoder's KV cache.

Written on ``CaptionModel.decoder_step`` rather than ``GenerationMixin.generate`` because the prefix
method keeps its prefix in the cache and the caption at positions 0.. (``caption.model``), which
``generate`` cannot express; for the other methods beam search is tested equal to ``generate``'s.

Beam search follows Hugging Face's (``early_stopping=False``): each step keeps the ``beam_size`` best
running beams out of the 2 * beam_size best continuations; a continuation ending in EOS among the top
``beam_size`` becomes a finished hypothesis scored sum(log p) / length ** length_penalty (length: the
generated tokens, EOS included); an image is done when it has ``beam_size`` finished hypotheses and its
best running beam, normalised at the current length, cannot beat the worst of them. At
``max_length`` the running beams are finished as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fewclip.configbase import ConfigBlock


class DecodeConfig(ConfigBlock):
    """How captions are generated."""

    beam_size: int = Field(1, ge=1, description="1: greedy; more: beam search with this many beams.")
    max_length: int = Field(20, ge=1, description="Most tokens generated per caption (EOS included).")
    length_penalty: float = Field(1.0, description="Beam score = sum log p / length ** length_penalty.")


def strip_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@torch.no_grad()
def generate_ids(
    model: Any, encoder_tokens: torch.Tensor, settings: DecodeConfig = DecodeConfig(), use_cache: bool = True
) -> list[list[int]]:
    """(B, T, encoder width) encoder tokens -> B generated token-id lists (no BOS, no EOS)."""
    model.eval()
    with model.autocast():
        memory = model.memory(encoder_tokens)
        if settings.beam_size == 1:
            return greedy_ids(model, memory, settings.max_length, use_cache)
        return beam_ids(model, memory, settings.beam_size, settings.max_length, settings.length_penalty, use_cache)


def caption_tokens(model: Any, encoder_tokens: torch.Tensor, settings: DecodeConfig = DecodeConfig()) -> list[str]:
    """(B, T, encoder width) -> B captions (decoded strings, special tokens removed, stripped)."""
    return [
        model.tokenizer.decode(ids, skip_special_tokens=True).strip()
        for ids in generate_ids(model, encoder_tokens, settings)
    ]


def _step(model: Any, ids: torch.Tensor, memory: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """Last-position logits (N, V) and the updated cache; without a cache the whole sequence is re-run."""
    if cache is None:
        return model.decoder_step(ids, memory).logits[:, -1].float(), None
    out = model.decoder_step(ids[:, -1:], memory, cache)
    return out.logits[:, -1].float(), model.step_cache(out)


def greedy_ids(model: Any, memory: torch.Tensor, max_length: int, use_cache: bool = True) -> list[list[int]]:
    """Batched greedy decoding from BOS; finished rows are padded with EOS until all are done."""
    batch, device = memory.shape[0], memory.device
    ids = torch.full((batch, 1), model.bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = model.new_cache(batch) if use_cache else None
    for _ in range(max_length):
        logits, cache = _step(model, ids, memory, cache)
        token = logits.argmax(-1).masked_fill(done, model.eos_id)
        ids = torch.cat([ids, token[:, None]], dim=1)
        done |= token == model.eos_id
        if bool(done.all()):
            break
    return [strip_eos(row, model.eos_id) for row in ids[:, 1:].tolist()]


def beam_ids(
    model: Any, memory: torch.Tensor, beams: int, max_length: int, length_penalty: float = 1.0, use_cache: bool = True
) -> list[list[int]]:
    """Batched beam search (see the module doc); returns each image's best hypothesis."""
    batch, device, eos = memory.shape[0], memory.device, model.eos_id
    memory = memory.repeat_interleave(beams, dim=0)  # (B * K, T, n_embd), beams of an image adjacent
    ids = torch.full((batch * beams, 1), model.bos_id, dtype=torch.long, device=device)
    scores = torch.zeros(batch, beams, device=device)
    scores[:, 1:] = float("-inf")  # all beams start equal: only the first may expand at step one
    scores = scores.reshape(-1)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    done = [False] * batch
    cache = model.new_cache(batch * beams) if use_cache else None
    for step in range(max_length):
        logits, cache = _step(model, ids, memory, cache)
        vocab = logits.shape[-1]
        candidates = (scores[:, None] + torch.log_softmax(logits, dim=-1)).reshape(batch, beams * vocab)
        top_scores, top_index = candidates.topk(2 * beams, dim=1)
        length = step + 1  # generated tokens, the new one included
        rows, tokens, new_scores = [], [], []
        for image in range(batch):
            kept = _advance(
                image,
                beams,
                vocab,
                eos,
                length,
                length_penalty,
                top_scores[image].tolist(),
                top_index[image].tolist(),
                ids,
                finished,
                done,
            )
            for row, token, score in kept:
                rows.append(row)
                tokens.append(token)
                new_scores.append(score)
        beam_index = torch.tensor(rows, device=device)
        ids = torch.cat([ids[beam_index], torch.tensor(tokens, device=device)[:, None]], dim=1)
        scores = torch.tensor(new_scores, device=device)
        if cache is not None:
            cache.reorder_cache(beam_index)
        if all(done):
            break
    for image in range(batch):  # beams still running at max_length are finished as they are
        if not done[image]:
            for k in range(beams):
                row = image * beams + k
                _add(
                    finished[image],
                    beams,
                    scores[row].item() / (ids.shape[1] - 1) ** length_penalty,
                    ids[row, 1:].tolist(),
                )
    return [strip_eos(max(hyps, key=lambda h: h[0])[1], eos) for hyps in finished]


def _add(hyps: list[tuple[float, list[int]]], beams: int, score: float, tokens: list[int]) -> None:
    """Keep the ``beams`` best finished hypotheses of an image."""
    hyps.append((score, tokens))
    hyps.sort(key=lambda h: -h[0])
    del hyps[beams:]


def _advance(
    image: int,
    beams: int,
    vocab: int,
    eos: int,
    length: int,
    length_penalty: float,
    top_scores: list[float],
    top_index: list[int],
    ids: torch.Tensor,
    finished: list[list[tuple[float, list[int]]]],
    done: list[bool],
) -> list[tuple[int, int, float]]:
    """One image's step: finish EOS continuations, keep ``beams`` running ones as (row, token, score)."""
    base = image * beams
    if done[image]:  # keep the rows aligned; their values are never used again
        return [(base, eos, 0.0)] * beams
    running: list[tuple[int, int, float]] = []
    for rank, (score, index) in enumerate(zip(top_scores, top_index)):
        row, token = base + index // vocab, index % vocab
        if token == eos:
            if rank < beams:
                _add(finished[image], beams, score / length**length_penalty, ids[row, 1:].tolist() + [eos])
        else:
            running.append((row, token, score))
        if len(running) == beams:
            break
    hyps = finished[image]
    if len(hyps) == beams and hyps[-1][0] >= running[0][2] / length**length_penalty:
        done[image] = True
    return running
