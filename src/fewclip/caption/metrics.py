"""Caption metrics: CIDEr-D and BLEU-4 as the COCO caption evaluation computes them, CLIPScore and
RefCLIPScore (Hessel et al. 2021) from CLIP features.

Tokenisation. The COCO evaluation (``pycocoevalcap``) runs the Stanford PTB tokenizer in Java, lower-cased,
and drops punctuation tokens. fewclip needs no Java: ``tokenize`` lower-cases and keeps runs of letters
and digits, with inner hyphens and apostrophes (``well-known``, ``don't``); every other character
separates words and is dropped. It differs from PTB only on contractions (PTB splits ``don't`` into
``do n't``) and rare symbols; the same tokenisation is applied to candidates and references.

The scores are computed over already tokenised text exactly as ``pycocoevalcap``'s ``Cider`` and ``Bleu``
do (the tests compare them to 1e-6), including their quirks, kept so numbers are comparable with
published ones: CIDEr-D's length penalty counts bigrams (words - 1), and its document frequencies are
taken over the references of the evaluated set itself.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from fewclip.backbones.protocol import Backbone

_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*")
Ngrams = Counter  # n-gram tuple -> count, for n = 1..4 together

CLIP_SCORE_WEIGHT = 2.5  # w in CLIP-S = w * max(cos, 0): rescales the typical cosine range to about [0, 1]


def tokenize(text: str) -> str:
    """Lower-cased words joined by single spaces (punctuation dropped)."""
    return " ".join(_TOKEN.findall(text.lower()))


def ngram_counts(text: str, n: int = 4) -> Ngrams:
    """Counts of every 1..n-gram of a tokenised (space-separated) text."""
    words = text.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _check_keys(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]) -> None:
    if set(references) != set(candidates):
        missing, extra = sorted(set(references) - set(candidates)), sorted(set(candidates) - set(references))
        raise ValueError(
            f"candidates and references must cover the same images; without a candidate: "
            f"{missing[:5]}, without references: {extra[:5]}"
        )
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"images without reference captions: {empty[:5]}")


def cider_d(
    references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], n: int = 4, sigma: float = 6.0
) -> tuple[float, dict[str, float]]:
    """CIDEr-D of tokenised ``candidates`` (image -> caption) against ``references`` (image -> captions):
    (corpus score = mean of the per-image scores, per-image scores).

    Per image: for each n-gram order, the tf-idf vectors of candidate and each reference (idf over the
    evaluated images' reference sets: log(N) - log(df)); the candidate's weights clipped by the reference's,
    dotted with the reference's, over both norms; times the Gaussian length penalty
    exp(-(l_c - l_r)^2 / (2 sigma^2)) (lengths in bigrams, as pycocoevalcap counts them); averaged over
    orders and references; times 10.
    """
    _check_keys(references, candidates)
    keys = list(candidates)
    ref_counts = {k: [ngram_counts(r, n) for r in references[k]] for k in keys}
    document_frequency: Counter = Counter()
    for counts in ref_counts.values():
        document_frequency.update({g for c in counts for g in c})
    log_images = math.log(float(len(keys)))

    def tfidf(counts: Ngrams) -> tuple[list[dict[tuple[str, ...], float]], list[float], int]:
        vectors: list[dict[tuple[str, ...], float]] = [{} for _ in range(n)]
        for gram, tf in counts.items():
            vectors[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
        norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vectors]
        bigrams = sum(c for g, c in counts.items() if len(g) == 2)
        return vectors, norms, bigrams

    scores: dict[str, float] = {}
    for key in keys:
        cand_vec, cand_norm, cand_len = tfidf(ngram_counts(candidates[key], n))
        total = np.zeros(n)
        for counts in ref_counts[key]:
            ref_vec, ref_norm, ref_len = tfidf(counts)
            penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2))
            for order in range(n):
                dot = sum(
                    min(w, ref_vec[order].get(g, 0.0)) * ref_vec[order].get(g, 0.0) for g, w in cand_vec[order].items()
                )
                if cand_norm[order] != 0 and ref_norm[order] != 0:
                    dot /= cand_norm[order] * ref_norm[order]
                total[order] += dot * penalty
        scores[key] = float(np.mean(total) / len(ref_counts[key]) * 10.0)
    return float(np.mean(list(scores.values()))), scores


def bleu(
    references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], n: int = 4
) -> tuple[float, dict[str, float]]:
    """BLEU-n of tokenised captions as pycocoevalcap's ``Bleu(n)`` with its 'closest' reference length:
    (corpus BLEU-n from clipped n-gram matches summed over images, per-image BLEU-n).

    Each image's effective reference length is the reference length closest to the candidate's (ties: the
    shorter); the brevity penalty exp(1 - r/c) applies when c < r. pycocoevalcap's smoothing constants
    (1e-15 added to matches, 1e-9 to guesses and lengths) are kept.
    """
    _check_keys(references, candidates)
    tiny, small = 1e-15, 1e-9
    correct_total, guess_total = [0] * n, [0] * n
    test_total, ref_total = 0, 0
    per_image: dict[str, float] = {}
    for key, candidate in candidates.items():
        ref_lengths = [len(r.split()) for r in references[key]]
        max_counts: Counter = Counter()
        for ref in references[key]:
            max_counts |= ngram_counts(ref, n)  # | keeps each n-gram's largest count over references
        counts = ngram_counts(candidate, n)
        length = len(candidate.split())
        ref_length = min((abs(r - length), r) for r in ref_lengths)[1]
        guess = [max(0, length - k) for k in range(n)]
        correct = [0] * n
        for gram, count in counts.items():
            correct[len(gram) - 1] += min(max_counts.get(gram, 0), count)
        per_image[key] = _bleu_from_counts(correct, guess, length, ref_length, n, tiny, small)
        correct_total = [a + b for a, b in zip(correct_total, correct)]
        guess_total = [a + b for a, b in zip(guess_total, guess)]
        test_total, ref_total = test_total + length, ref_total + ref_length
    corpus = _bleu_from_counts(correct_total, guess_total, test_total, ref_total, n, tiny, small)
    return corpus, per_image


def _bleu_from_counts(
    correct: Sequence[int], guess: Sequence[int], length: float, ref_length: float, n: int, tiny: float, small: float
) -> float:
    product = 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
    score = product ** (1.0 / n)
    ratio = (length + tiny) / (ref_length + small)
    return score * math.exp(1 - 1 / ratio) if ratio < 1 else score


@dataclass(frozen=True)
class TextScores:
    """Corpus CIDEr-D and BLEU-4 and their per-image values (keyed like the inputs)."""

    cider: float
    bleu4: float
    cider_per_image: dict[str, float]
    bleu4_per_image: dict[str, float]


def text_scores(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str]) -> TextScores:
    """CIDEr-D and BLEU-4 of raw captions: ``tokenize`` is applied to both sides first."""
    refs = {key: [tokenize(r) for r in texts] for key, texts in references.items()}
    cands = {key: tokenize(text) for key, text in candidates.items()}
    cider, cider_each = cider_d(refs, cands)
    bleu4, bleu_each = bleu(refs, cands, n=4)
    return TextScores(cider, bleu4, cider_each, bleu_each)


def clip_scores(
    image_features: torch.Tensor,
    caption_features: torch.Tensor,
    reference_features: Sequence[torch.Tensor] | None = None,
    weight: float = CLIP_SCORE_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIPScore and RefCLIPScore per caption, from CLIP features (any scale: they are normalised here).

    image_features (n, d), caption_features (n, d), reference_features: n tensors (k_i, d), the references
    of each image. Following Hessel et al. 2021 (eqs. 1 and 2):

    - CLIP-S(c, v) = w * max(cos(c, v), 0), w = 2.5;
    - RefCLIP-S(c, R, v) = H-Mean(CLIP-S(c, v), max(max_{r in R} cos(c, r), 0)), the harmonic mean
      2ab / (a + b), taken as 0 when either term is 0 (its limit). The reference term is not scaled by w.
      (The authors' released code omits the outer max(., 0); the two agree unless every reference has a
      negative cosine with the caption.)

    Returns (clip_s (n,), ref_clip_s (n,) or None without references).
    """
    image = torch.nn.functional.normalize(image_features.double(), dim=-1)
    caption = torch.nn.functional.normalize(caption_features.double(), dim=-1)
    if image.shape != caption.shape:
        raise ValueError(
            f"image features {tuple(image.shape)} and caption features {tuple(caption.shape)} "
            "must have the same shape (one caption per image)"
        )
    clip_s = weight * (image * caption).sum(-1).clamp(min=0)  # (n,)
    if reference_features is None:
        return clip_s, None
    if len(reference_features) != len(caption):
        raise ValueError(f"{len(reference_features)} reference sets for {len(caption)} captions")
    best = torch.stack(
        [
            (torch.nn.functional.normalize(refs.double(), dim=-1) @ cap).max()
            for refs, cap in zip(reference_features, caption)
        ]
    ).clamp(min=0)  # (n,)
    denominator = clip_s + best
    ref_clip_s = torch.where(
        denominator > 0, 2 * clip_s * best / denominator.clamp(min=1e-300), torch.zeros_like(denominator)
    )
    return clip_s, ref_clip_s


def image_pixels(backbone: Backbone, paths: Sequence[Path | str]) -> torch.Tensor:
    """(n, 3, H, W) pixels of image files, preprocessed as ``backbone`` expects."""
    from fewclip.data.images import read_image

    return torch.from_numpy(np.stack([backbone.transform(read_image(path)) for path in paths]))


def encode_and_score(
    backbone: Backbone,
    pixels: torch.Tensor,
    captions: Sequence[str],
    references: Sequence[Sequence[str]] | None = None,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIPScore and RefCLIPScore of ``captions`` for images given as preprocessed ``pixels`` (n, 3, H, W),
    with any fewclip backbone (``backbone.encode_images`` / ``backbone.encode_text``)."""
    image_features = torch.cat(
        [backbone.encode_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    )
    caption_features = backbone.encode_text(list(captions))
    if references is None:
        return clip_scores(image_features, caption_features)
    flat = [r for refs in references for r in refs]
    flat_features = backbone.encode_text(flat)
    bounds = np.cumsum([0] + [len(refs) for refs in references])
    per_image = [flat_features[bounds[i] : bounds[i + 1]] for i in range(len(references))]
    return clip_scores(image_features, caption_features, per_image)
