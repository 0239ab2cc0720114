"""MaPLe's deep multimodal prompts and the frozen Hugging Face CLIP towers run with them.

What the reference (github.com/muzairkhattak/multimodal-prompt-learning: ``trainers/maple.py``,
``clip/model.py``: ``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``) does, re-done on
transformers' ``CLIPModel`` layer by layer:

- text: the prompt ``[SOS] [ctx]*n_ctx [rest of ctx_init] [name tokens] [.] [EOT]`` enters as token
  embeddings with ``ctx`` at positions 1..n_ctx, plus the position embeddings (so ``ctx`` gets positions, as
  the reference adds ``positional_embedding`` to the whole prompt). Before layers 1..depth-1 those n_ctx
  positions of the hidden states are *replaced* by that layer's deep text prompt (no position embedding
  added). Then the causal encoder, ``final_layer_norm``, the EOT token, ``text_projection``.
- vision: the n_ctx vision prompts are appended *after* the class and patch tokens, after the position
  embeddings were added to those (the prompts get none), and *before* ``pre_layrnorm`` (CLIP's ``ln_pre``),
  which therefore normalises them too. Before layers 1..depth-1 the last n_ctx tokens are replaced by that
  layer's deep vision prompt. The image feature is ``post_layernorm`` of the class token, projected.
- coupling: the vision prompts are functions of the text prompts, ``proj(ctx)`` at layer 0 and
  ``deep_proj[i](deep_text[i])`` before layer i + 1, each a Linear(text width -> vision width). Only these
  tensors train; with ``coupling`` off there are no vision prompts at all (text-only deep prompting) and the
  image tower is the frozen one, exactly.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fewclip.backbones.prompt_tower import causal_mask


class MaplePrompts(nn.Module):
    """The learned tensors: ``ctx`` (n_ctx, text width), ``deep_text`` (depth - 1 of (n_ctx, text width)),
    and with coupling ``proj`` and ``deep_proj`` (depth - 1 Linears, text width -> vision width)."""

    def __init__(self, ctx: torch.Tensor, depth: int, coupling: bool, vision_width: int) -> None:
        super().__init__()
        n_ctx, width = ctx.shape
        self.ctx = nn.Parameter(ctx.clone())
        self.deep_text = nn.ParameterList([nn.Parameter(torch.randn(n_ctx, width) * 0.02) for _ in range(depth - 1)])
        self.coupling = coupling
        if coupling:
            self.proj = nn.Linear(width, vision_width)
            one = nn.Linear(width, vision_width)  # the reference clones one layer: every deep projection starts alike
            self.deep_proj = nn.ModuleList([copy.deepcopy(one) for _ in range(depth - 1)])

    @property
    def n_ctx(self) -> int:
        return int(self.ctx.shape[0])

    def vision(self) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """(shallow (n_ctx, vision width) or None, deep vision prompts, one per layer 1..depth-1)."""
        if not self.coupling:
            return None, []
        return self.proj(self.ctx), [layer(prompt) for layer, prompt in zip(self.deep_proj, self.deep_text)]


def run_layer(layer: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, recompute: bool,
              **kwargs: Any) -> torch.Tensor:
    """One ``CLIPEncoderLayer``; ``recompute``: its activations are recomputed in the backward pass."""
    if recompute and torch.is_grad_enabled():
        return checkpoint(layer, hidden, mask, use_reentrant=False, **kwargs)
    return layer(hidden, mask, **kwargs)


def replace_rows(hidden: torch.Tensor, start: int, prompt: torch.Tensor) -> torch.Tensor:
    """(n, L, w) hidden states with rows start..start+k replaced by ``prompt`` (k, w), for every sequence."""
    stop = start + prompt.shape[0]
    rows = prompt.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :start], rows, hidden[:, stop:]], dim=1)


def text_hidden(clip_model: nn.Module, prompt_embeds: torch.Tensor, deep_text: list[torch.Tensor],
                recompute: bool = False,
                on_layer: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """(C, L, w) prompt token embeddings (ctx already at 1..n_ctx) -> (C, L, w) final-layer-normed states.

    ``deep_text[i]`` replaces positions 1..n_ctx before layer i + 1; ``on_layer(i, hidden)`` sees each layer's
    input (tests)."""
    text = clip_model.text_model
    hidden = text.embeddings(inputs_embeds=prompt_embeds)
    mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
    for index, layer in enumerate(text.encoder.layers):
        if 1 <= index <= len(deep_text):
            hidden = replace_rows(hidden, 1, deep_text[index - 1])
        if on_layer is not None:
            on_layer(index, hidden)
        hidden = run_layer(layer, hidden, mask, recompute, is_causal=True)
    return text.final_layer_norm(hidden)


def text_features(clip_model: nn.Module, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor,
                  deep_text: list[torch.Tensor], recompute: bool = False) -> torch.Tensor:
    """(C, L, w) prompt embeddings, (C,) EOT index -> (C, dim) unnormalised text features."""
    hidden = text_hidden(clip_model, prompt_embeds, deep_text, recompute)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions.to(hidden.device)]
    return clip_model.text_projection(pooled)


def image_features(clip_model: nn.Module, pixels: torch.Tensor, shallow: torch.Tensor | None,
                   deep_vision: list[torch.Tensor], recompute: bool = False,
                   on_layer: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None) -> torch.Tensor:
    """(n, 3, H, W) pixels -> (n, dim) unnormalised image features with the vision prompts.

    ``shallow`` (k, vision width) is appended after the patch tokens before ``pre_layrnorm``; ``deep_vision[i]``
    replaces the last k tokens before layer i + 1. ``shallow`` None: the frozen tower (no prompts).
    ``on_layer(i, hidden)`` sees what enters layer i; a tensor it returns enters instead (saliency's route)."""
    vision = clip_model.vision_model
    hidden = vision.embeddings(pixels.to(vision.embeddings.patch_embedding.weight.device))  # (n, 1 + P, w)
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
    return clip_model.visual_projection(vision.post_layernorm(hidden[:, 0]))


def tower_layers(clip_model: nn.Module) -> tuple[int, int]:
    """(text layers, vision layers) of a transformers ``CLIPModel``."""
    return len(clip_model.text_model.encoder.layers), len(clip_model.vision_model.encoder.layers)
