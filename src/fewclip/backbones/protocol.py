"""What every backbone offers. Heads, the pipeline, ``predict`` and saliency use only this.

A backbone is a frozen CLIP: an image tower with its preprocessing, a text tower with its tokenizer,
and the learned temperature. Prompt learning needs more than ``encode_text``: token ids with their
start/end tokens (``TextTokens``) and the text tower run on given token *embeddings*
(``PromptTower``). Saliency needs the spatial activations that feed the image embedding
(``saliency_pass``). Every implementation is checked by the backbone contract suite
(``tests/backbones/test_contract.py``), which runs over every registered backbone.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from fewclip.backbones.config import ModelConfig
from fewclip.backbones.preprocess import ImageTransform


@runtime_checkable
class TextTokens(Protocol):
    """The text tower's tokenizer, reduced to what prompts are built from."""

    sos_id: int  # start of text
    eot_id: int  # end of text: the position the text feature is read at

    def word_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` alone (no start/end tokens)."""

    def counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as the tower reads it (start and end included), never truncated."""


@runtime_checkable
class PromptTower(Protocol):
    """The frozen text tower run on prompt embeddings; gradients flow to the embeddings only."""

    width: int  # token embedding width
    max_positions: int  # token positions, start and end included

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, width) token embeddings, without positions."""

    def __call__(self, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """(n, L, width) embeddings, (n,) EOT index -> (n, dim) unnormalised text features.

        Causal: tokens after EOT never reach it, so any L from the longest prompt up gives the same
        features (tested against the library's own ``encode_text``).
        """

    def encode_shared_prefix(self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor,
                             eot_in_suffix: torch.Tensor) -> torch.Tensor:
        """Features of prompts ``prefix + suffix[c]`` ((G, P, w), (G, C, S, w), (C,)) -> (G, C, dim), equal to
        running every full prompt; the shared prefix may be computed once per group."""


@runtime_checkable
class Backbone(Protocol):
    """A frozen CLIP. Features are projected and *unnormalised*, float32 on the CPU."""

    config: ModelConfig
    device: torch.device
    transform: ImageTransform  # PIL image -> (3, H, W) float32 pixels, the model's own preprocessing
    tokens: TextTokens
    image_batches_encoded: int  # counted so tests and logs can see cache hits

    @property
    def dim(self) -> int: ...

    @property
    def max_text_positions(self) -> int: ...

    @property
    def logit_scale(self) -> float: ...

    def autocast(self) -> contextlib.AbstractContextManager[Any]: ...

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes an image feature (architecture, weight files' hash, preprocessing,
        precision): the feature cache's key."""

    def encode_images(self, pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(n, 3, H, W) pixels from ``transform`` -> (n, dim)."""

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> (n, dim); a text longer than ``max_text_positions`` is an error naming it."""

    def prompt_tower(self) -> PromptTower: ...

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features (n, dim), float32 on the CPU, and the spatial activations they are computed
        from, (n, gh, gw, c), both on one autograd graph with ``retain_grad`` on the activations: a
        ViT's patch tokens entering its last layer, a ResNet's last convolutional stage before the
        attention pooling."""
