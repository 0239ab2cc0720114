"""Deep prompts (MaPLe) in a frozen Hugging Face ``CLIPModel``, layer by layer (``DeepPromptTowers``).

What the MaPLe reference (github.com/muzairkhattak/multimodal-prompt-learning: ``clip/model.py``:
``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``) does, re-done on transformers' towers:

- text: the prompt enters as token embeddings (learned rows among them) plus the position embeddings.
  Before layers 1..depth-1 the prompt rows 1..k of the hidden states are *replaced* by that layer's deep
  text prompt (no position embedding added). Then the causal encoder, ``final_layer_norm``, the EOT token,
  ``text_projection``.
- vision: the k shallow vision prompts are appended *after* the class and patch tokens, after the position
  embeddings were added to those (the prompts get none), and *before* ``pre_layrnorm`` (CLIP's ``ln_pre``),
  which therefore normalises them too. Before layers 1..depth-1 the last k tokens are replaced by that
  layer's deep vision prompt. The image feature is ``post_layernorm`` of the class token, projected.
  Without prompts (``shallow`` None) the image tower is the frozen one, exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fewclip.backbones.hf_saliency import last_layer_patches
from fewclip.backbones.prompt_tower import causal_mask, replace_rows

if TYPE_CHECKING:  # for annotations only: importing transformers' CLIP modules takes a while
    from transformers.models.clip.modeling_clip import CLIPModel, CLIPTextModel, CLIPVisionModel


def run_layer(
    layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, recompute: bool, **kwargs: Any
) -> torch.Tensor:
    """One ``CLIPEncoderLayer``; ``recompute``: its activations are recomputed in the backward pass."""
    if recompute and torch.is_grad_enabled():
        out: torch.Tensor = checkpoint(layer, hidden, mask, use_reentrant=False, **kwargs)
    else:
        out = layer(hidden, mask, **kwargs)
    return out


def text_hidden(
    clip_model: CLIPModel,
    prompt_embeds: torch.Tensor,
    deep_text: list[torch.Tensor | None],
    recompute: bool = False,
    on_layer: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """(C, L, w) prompt token embeddings (ctx already at 1..n_ctx) -> (C, L, w) final-layer-normed states.

    ``deep_text[i]`` ((k, w) or (C, k, w)) replaces positions 1..k before layer i + 1 (None: not that layer);
    ``on_layer(i, hidden)`` sees each layer's input (tests)."""
    text: CLIPTextModel = clip_model.text_model  # transformers builds it untyped (_from_config)
    hidden: torch.Tensor = text.embeddings(inputs_embeds=prompt_embeds)
    mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
    for index, layer in enumerate(text.encoder.layers):
        prompt = deep_text[index - 1] if 1 <= index <= len(deep_text) else None
        if prompt is not None:
            hidden = replace_rows(hidden, 1, prompt)
        if on_layer is not None:
            on_layer(index, hidden)
        hidden = run_layer(layer, hidden, mask, recompute, is_causal=True)
    hidden = text.final_layer_norm(hidden)
    return hidden


def text_features(
    clip_model: CLIPModel,
    prompt_embeds: torch.Tensor,
    eot_positions: torch.Tensor,
    deep_text: list[torch.Tensor | None],
    recompute: bool = False,
) -> torch.Tensor:
    """(C, L, w) prompt embeddings, (C,) EOT index -> (C, dim) unnormalised text features."""
    hidden = text_hidden(clip_model, prompt_embeds, deep_text, recompute)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions.to(hidden.device)]
    features: torch.Tensor = clip_model.text_projection(pooled)
    return features


def image_features(
    clip_model: CLIPModel,
    pixels: torch.Tensor,
    shallow: torch.Tensor | None,
    deep_vision: list[torch.Tensor],
    recompute: bool = False,
    on_layer: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """(n, 3, H, W) pixels -> (n, dim) unnormalised image features with the vision prompts.

    ``shallow`` (k, vision width) is appended after the patch tokens before ``pre_layrnorm``; ``deep_vision[i]``
    replaces the last k tokens before layer i + 1. ``shallow`` None: the frozen tower (no prompts).
    ``on_layer(i, hidden)`` sees what enters layer i; a tensor it returns enters instead (saliency's route)."""
    vision: CLIPVisionModel = clip_model.vision_model
    hidden: torch.Tensor = vision.embeddings(pixels.to(vision.embeddings.patch_embedding.weight.device))  # (n, 1+P, w)
    if shallow is not None:
        hidden = replace_rows(hidden, hidden.shape[1], shallow)  # appended: nothing after it to keep
    hidden = vision.pre_layrnorm(hidden)
    for index, layer in enumerate(vision.encoder.layers):
        if shallow is not None and 1 <= index <= len(deep_vision):
            hidden = replace_rows(hidden, hidden.shape[1] - shallow.shape[0], deep_vision[index - 1])
        if on_layer is not None:
            routed = on_layer(index, hidden)
            hidden = hidden if routed is None else routed
        hidden = run_layer(layer, hidden, None, recompute)
    features: torch.Tensor = clip_model.visual_projection(vision.post_layernorm(hidden[:, 0]))
    return features


class HFDeepPromptTowers:
    """A frozen ``CLIPModel``'s towers run with deep prompts (``DeepPromptTowers``)."""

    def __init__(self, clip_model: CLIPModel) -> None:
        self.clip_model = clip_model
        text: CLIPTextModel = clip_model.text_model
        vision: CLIPVisionModel = clip_model.vision_model
        self.text_width = int(text.config.hidden_size)
        self.vision_width = int(vision.config.hidden_size)
        self.text_layers = len(text.encoder.layers)
        self.vision_layers = len(vision.encoder.layers)

    def text_features(
        self,
        prompt_embeds: torch.Tensor,
        eot_positions: torch.Tensor,
        deep_text: Sequence[torch.Tensor | None],
        recompute: bool = False,
    ) -> torch.Tensor:
        return text_features(self.clip_model, prompt_embeds, eot_positions, list(deep_text), recompute)

    def image_features(
        self,
        pixels: torch.Tensor,
        shallow: torch.Tensor | None,
        deep_vision: Sequence[torch.Tensor],
        recompute: bool = False,
    ) -> torch.Tensor:
        return image_features(self.clip_model, pixels, shallow, list(deep_vision), recompute)

    def saliency_pass(
        self, pixels: torch.Tensor, shallow: torch.Tensor | None, deep_vision: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The CLS token and the appended vision prompts are left out of the grid (``last_layer_patches``)."""
        trailing = 0 if shallow is None else shallow.shape[0]
        with last_layer_patches(self.clip_model, trailing=trailing) as captured:
            features = image_features(self.clip_model, pixels, shallow, list(deep_vision), False)
        return features, captured["patches"]
