"""CLIP's text tower run on prompt *embeddings* (learned context vectors among token embeddings).

transformers 5's ``CLIPTextModel.forward`` takes token ids only, so this re-runs its steps on given
embeddings: positions added by ``embeddings(inputs_embeds=...)``, the encoder with a causal mask,
``final_layer_norm``, pooling at the EOT position, ``text_projection``. Sequences may be cut to the
longest real prompt: under the causal mask, tokens after EOT never reach it, so this is exact
(tested against ``get_text_features``).
"""

from __future__ import annotations

import torch
from torch import nn


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) additive mask: 0 on and below the diagonal, the dtype's minimum above."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.triu(mask, diagonal=1)[None, None]


class PromptTextTower(nn.Module):
    """Frozen text encoder + projection of a ``CLIPModel``; gradients flow to the prompt embeddings only."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.text_model = clip_model.text_model
        self.text_projection = clip_model.text_projection

    @property
    def width(self) -> int:
        return int(self.text_model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        return int(self.text_model.config.max_position_embeddings)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, width) token embeddings (no positions)."""
        return self.text_model.embeddings.token_embedding(token_ids)

    def forward(self, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """(n, L, width) prompt embeddings, (n,) EOT index -> (n, projection_dim) unnormalised features."""
        hidden = self.text_model.embeddings(inputs_embeds=prompt_embeds)
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        hidden = self.text_model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = self.text_model.final_layer_norm(hidden)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions]
        return self.text_projection(pooled)
