"""Frozen encoder outputs for training: computed once into a content-addressed cache, or on the fly.

The encoder is frozen, so its tokens (CLS + patches, (T, width) per image) are the same every epoch.
When all of them fit ``budget_mb`` they are encoded once into a ``FeatureCache`` (``fewclip.features``:
shards with checksums, keyed by image sha1) under a key that hashes the encoder fingerprint (weights,
preprocessing, precision, which output), stored flattened as (T * width) rows. Otherwise every batch
runs the encoder again. Both give the same tokens (tested through the training loss).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from fewclip.data.images import decode_image, read_file
from fewclip.features import FeatureCache, Job, encode_jobs


class _FlatEncoder:
    """``encode_jobs``'s backbone interface over a caption model: (B, 3, H, W) -> (B, T * width) float32."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_images(pixels).flatten(1).cpu()


def encoder_cache_mb(model: Any, n_images: int) -> float:
    """Disk the cached tokens of ``n_images`` images take (float32)."""
    return n_images * model.encoder_tokens * model.encoder_width * 4 / 2**20


class EncoderTokens:
    """Encoder tokens of images by sha1, (n, T, width) float32 on the model's device.

    ``images`` maps each image's sha1 (of its file bytes) to its file. With a ``cache_root`` and the
    tokens within ``budget_mb`` they are all encoded now (``cached`` is True; images already in the
    cache are not encoded again); otherwise each call encodes its images.
    ``failures`` lists (image, reason) for files that were unreadable or changed since hashed.
    """

    def __init__(
        self,
        model: Any,
        images: Mapping[str, Path],
        cache_root: Path | None,
        budget_mb: float,
        batch_size: int = 64,
        threads: int = 2,
        progress: bool = False,
    ) -> None:
        self.model, self.images = model, dict(images)
        self.shape = (model.encoder_tokens, model.encoder_width)
        self.cached = cache_root is not None and encoder_cache_mb(model, len(self.images)) <= budget_mb
        self.failures: list[tuple[str, str]] = []
        self.cache: FeatureCache | None = None
        if self.cached:
            assert cache_root is not None
            self.cache = FeatureCache(Path(cache_root), model.encoder_fingerprint())
            jobs = [Job(sha1, Path(path), str(path), model.transform, sha1) for sha1, path in self.images.items()]
            self.failures = encode_jobs(
                jobs, _FlatEncoder(model), self.cache, batch_size, threads, progress, desc="encoder tokens"
            )

    def __call__(self, sha1s: Sequence[str]) -> torch.Tensor:
        if self.cache is not None:
            flat = torch.from_numpy(self.cache.get(list(sha1s)))
            return flat.reshape(len(sha1s), *self.shape).to(self.model.device_)
        return self.model.encode_images(torch.from_numpy(np.stack([self._pixels(s) for s in sha1s])))

    def _pixels(self, sha1: str) -> np.ndarray:
        path = self.images[sha1]
        data = read_file(path)
        if hashlib.sha1(data).hexdigest() != sha1:
            raise ValueError(
                f"{path}: the file changed after it was listed (its sha1 is no longer {sha1}); "
                "prepare the caption data again"
            )
        return self.model.transform(decode_image(data, str(path)))
