"""What every backbone offers. Everything outside ``backbones/`` (heads, the pipeline, ``predict``,
saliency, captioning) uses only this: no library's modules, no ``backbone.model``.

A backbone is a frozen CLIP: an image tower with its preprocessing, a text tower with its tokenizer,
and the learned temperature. Prompt learning needs more than ``encode_text``: token ids with their
start/end tokens (``TextTokens``) and the text tower run on given token *embeddings*
(``PromptTower``). Saliency needs the spatial activations that feed the image embedding
(``saliency_pass``).

Methods that tune or read inside the towers need more, and not every library gives it; a backbone
class declares what it offers in ``offers`` (names from ``CAPABILITIES``), a head or captioning method
declares what it ``needs``, and a head that cannot run on the chosen library is refused when the
config is loaded (``backbones.capabilities``):

- ``lora_targets``: ``tunable_towers()``, a trainable copy of both towers whose attention projections
  LoRA may wrap and whose blocks' weight matrices CLIP-SVD may factor (``TunableTowers``);
- ``deep_prompts``: ``deep_prompt_towers()``, both towers run with prompts replacing token rows between
  their layers (MaPLe; TCP's class-aware tokens at one middle text layer; ``DeepPromptTowers``);
- ``image_tokens``: ``image_tokens(pixels)``, the image tower's output tokens (captioning).

A backbone that does not offer one raises ``NotOffered`` from its method. Every implementation is
checked by the backbone contract suite (``tests/backbones/test_backbone_contract.py``), which runs over
every registered backbone and each capability it offers.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import nn

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

    @property
    def width(self) -> int:
        """Token embedding width."""

    @property
    def max_positions(self) -> int:
        """Token positions, start and end included."""

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, width) token embeddings, without positions."""

    def __call__(self, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """(n, L, width) embeddings, (n,) EOT index -> (n, dim) unnormalised text features.

        Causal: tokens after EOT never reach it, so any L from the longest prompt up gives the same
        features (tested against the library's own ``encode_text``).
        """

    def encode_shared_prefix(
        self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor, eot_in_suffix: torch.Tensor
    ) -> torch.Tensor:
        """Features of prompts ``prefix + suffix[c]`` ((G, P, w), (G, C, S, w), (C,)) -> (G, C, dim), equal to
        running every full prompt; the shared prefix may be computed once per group."""


CAPABILITIES: dict[str, str] = {
    "lora_targets": "a trainable copy of both towers whose attention projections LoRA may wrap and whose blocks' "
    "linear layers may be replaced (tunable_towers)",
    "deep_prompts": "both towers run with prompts replacing token rows between layers (deep_prompt_towers)",
    "vision_prompts": "the image tower takes prompt tokens between its layers (a ViT read at its class token)",
    "image_tokens": "the image tower's output tokens, a global token then the patches (image_tokens)",
}


class NotOffered(ValueError):
    """A capability asked of a backbone that does not offer it (see ``Backbone.offers``), or that this model
    of its library cannot give (an OpenCLIP ResNet has no image tokens)."""

    def __init__(self, library: str, capability: str, why: str = "") -> None:
        self.library, self.capability = library, capability
        super().__init__(
            f"the {library} backbone does not offer {capability} ({CAPABILITIES[capability]})"
            + (f": {why}" if why else "; choose another model.library for the method that needs it")
        )


@dataclass(frozen=True)
class BlockLinear:
    """One ``nn.Linear`` of a transformer block of a ``TunableTowers`` copy (what CLIP-SVD factors)."""

    tower: str  # "text" or "vision"
    layer: int  # the block's index in its tower, 0 first
    kind: str  # "q", "k", "v", "out" (attention projections), "fc1", "fc2" (the MLP's two layers)
    module: str  # its dotted name in ``TunableTowers.module`` (``get_submodule``)


@runtime_checkable
class TunableTowers(Protocol):
    """A trainable copy of a backbone's two towers (the backbone itself stays frozen and shared).

    ``module`` is the library's own model, copied: what adapters are injected into (``lora_targets`` names
    the attention projections of every block of both towers that may be wrapped), what trains, and whose
    parameter names a saved adapter carries. Features are unnormalised, float32, on the backbone's device,
    with autograd through ``module``'s trainable parameters.
    """

    module: nn.Module
    lora_targets: tuple[str, ...]  # module names (the last part of a dotted name) LoRA may wrap, e.g. q_proj

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) pixels from the backbone's ``transform`` -> (n, dim)."""

    def text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> (n, dim), through the (tuned) text tower."""

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``Backbone.saliency_pass``, through the (tuned) image tower; features stay on the device."""

    def checkpoint_activations(self) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (less memory)."""

    def block_linears(self) -> list[BlockLinear]:
        """Every separate ``nn.Linear`` of every block of both towers (q, k, v, out, fc1, fc2), text tower first;
        not the towers' final projections."""

    def save_pretrained(self, folder: Path) -> None:
        """``module`` and its tokenizer as the library's own model folder, which that library loads alone (merge
        any adapters into ``module`` first: an injected adapter is not part of the library's model)."""


@runtime_checkable
class DeepPromptTowers(Protocol):
    """The frozen towers run with deep prompts (MaPLe, TCP): gradients flow to the prompts only.

    Text: the prompt embeddings (with learned rows among the token embeddings) get positions; before text
    layer i + 1 the hidden rows 1..k are replaced by ``deep_text[i]``: (k, text_width), the same in every prompt
    (MaPLe), or (C, k, text_width), one per prompt (TCP's class-aware tokens); None leaves layer i + 1's rows as
    they are (tokens that enter at a middle layer only). Vision: ``shallow``
    (k, vision_width) is appended after the class and patch tokens (after their positions, before the
    tower's first norm); before vision layer i + 1 the last k rows are replaced by ``deep_vision[i]``.
    ``recompute``: each layer's activations are recomputed in the backward pass.
    """

    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int

    def text_features(
        self,
        prompt_embeds: torch.Tensor,
        eot_positions: torch.Tensor,
        deep_text: Sequence[torch.Tensor | None],
        recompute: bool = False,
    ) -> torch.Tensor:
        """(C, L, text_width) embeddings, (C,) EOT index -> (C, dim) unnormalised text features."""

    def image_features(
        self,
        pixels: torch.Tensor,
        shallow: torch.Tensor | None,
        deep_vision: Sequence[torch.Tensor],
        recompute: bool = False,
    ) -> torch.Tensor:
        """(n, 3, H, W) pixels -> (n, dim) unnormalised image features; ``shallow`` None: the frozen tower."""

    def saliency_pass(
        self, pixels: torch.Tensor, shallow: torch.Tensor | None, deep_vision: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image_features`` and the normalised patch tokens the last layer attends over (n, gh, gw, width),
        prompts left out of the grid, on one autograd graph (``Backbone.saliency_pass``)."""


@runtime_checkable
class Backbone(Protocol):
    """A frozen CLIP. Features are projected and *unnormalised*, float32 on the CPU."""

    offers: ClassVar[frozenset[str]]  # names from CAPABILITIES
    config: ModelConfig
    device: torch.device
    transform: ImageTransform  # PIL image -> (3, H, W) float32 pixels, the model's own preprocessing
    image_batches_encoded: int  # counted so tests and logs can see cache hits

    @property
    def tokens(self) -> TextTokens: ...

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

    def image_encoder(self) -> nn.Module:
        """The frozen image tower as a module: (n, 3, H, W) pixels -> (n, dim) float32 features, as
        ``encode_images`` computes them at fp32 but on the pixels' device, with no autocast, batch counting or
        copy to the CPU; what ``fewclip export --format onnx`` traces. It shares the backbone's weights."""

    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Strings -> (n, dim); a text longer than ``max_text_positions`` is an error naming it."""

    def prompt_tower(self) -> PromptTower: ...

    def saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image features (n, dim), float32 on the CPU, and the spatial activations they are computed
        from, (n, gh, gw, c), both on one autograd graph with ``retain_grad`` on the activations: a
        ViT's patch tokens entering its last layer, a ResNet's last convolutional stage before the
        attention pooling."""

    def tunable_towers(self) -> TunableTowers:
        """A trainable copy of both towers (``lora_targets``; ``NotOffered`` otherwise)."""

    def deep_prompt_towers(self) -> DeepPromptTowers:
        """The towers run with deep prompts (``deep_prompts``; ``NotOffered`` otherwise)."""

    @property
    def image_token_shape(self) -> tuple[int, int]:
        """(T, width) of ``image_tokens``: one global token and the patch grid."""

    def image_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) pixels -> (n, T, width) float32 on the device, no autograd: the image tower's output
        tokens before its final norm and projection, the global (class) token first (``image_tokens``)."""

    def image_tokens_fingerprint(self) -> dict[str, Any]:
        """``fingerprint`` for ``image_tokens`` outputs: the cache key of stored image tokens."""
