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

    def encode_shared_prefix(self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor,
                             eot_in_suffix: torch.Tensor) -> torch.Tensor:
        """``encode_shared_prefix`` on this tower (see there)."""
        return encode_shared_prefix(self, prefix_embeds, suffix_embeds, eot_in_suffix)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., L, w) -> (..., H, L, w/H)."""
    return x.unflatten(-1, (n_heads, -1)).transpose(-3, -2)


def _pick_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(G, C, ..., S, k), (C,) row per prompt -> (G, C, ..., 1, k): each prompt's row ``rows[c]``."""
    index = rows.view(1, -1, *([1] * (x.dim() - 2))).expand(*x.shape[:-2], 1, x.shape[-1])
    return x.gather(-2, index)


def _shared_prefix_layer(layer: nn.Module, prefix: torch.Tensor, suffix: torch.Tensor,
                         read_rows: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One CLIPEncoderLayer on prompts that share a prefix.

    prefix: (G, P, w), the same for every prompt of a group; suffix: (G, C, S, w), C prompts per group.
    Under the causal mask the prefix never sees the suffix, so it is computed once per group, and each
    suffix attends to its group's prefix keys/values plus its own causal past: the same arithmetic as
    running every full prompt, with the prefix's share done once instead of C times.

    With ``read_rows`` (C,) (the last layer, where only the EOT token is read out) only that suffix row
    of each prompt is computed: (None, (G, C, 1, w)). Keys and values still come from every token.
    """
    attn = layer.self_attn
    n_heads, scale = attn.num_heads, attn.scale
    n_prefix, n_suffix, n_prompts = prefix.shape[-2], suffix.shape[-2], suffix.shape[1]
    normed_p, normed_s = layer.layer_norm1(prefix), layer.layer_norm1(suffix)
    k_p, v_p = _heads(attn.k_proj(normed_p), n_heads), _heads(attn.v_proj(normed_p), n_heads)  # (G, H, P, hd)
    k_s, v_s = _heads(attn.k_proj(normed_s), n_heads), _heads(attn.v_proj(normed_s), n_heads)  # (G, C, H, S, hd)
    k_all = torch.cat([k_p[:, None].expand(-1, n_prompts, -1, -1, -1), k_s], dim=-2)  # (G, C, H, P+S, hd)
    v_all = torch.cat([v_p[:, None].expand(-1, n_prompts, -1, -1, -1), v_s], dim=-2)
    allowed = torch.ones(n_suffix, n_prefix + n_suffix, dtype=torch.bool, device=suffix.device)
    allowed[:, n_prefix:] = torch.tril(allowed[:, n_prefix:])

    def finish(h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = h + attn.out_proj(out.transpose(-3, -2).flatten(-2))
        return h + layer.mlp(layer.layer_norm2(h))

    if read_rows is not None:
        suffix = _pick_rows(suffix, read_rows)  # (G, C, 1, w)
        q_s = _heads(attn.q_proj(_pick_rows(normed_s, read_rows)), n_heads)  # (G, C, H, 1, hd)
        mask = allowed[read_rows][:, None, None]  # (C, 1, 1, P+S)
        return None, finish(suffix, nn.functional.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=mask,
                                                                               scale=scale))
    q_p, q_s = _heads(attn.q_proj(normed_p), n_heads), _heads(attn.q_proj(normed_s), n_heads)
    out_p = nn.functional.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True, scale=scale)
    out_s = nn.functional.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=allowed, scale=scale)
    return finish(prefix, out_p), finish(suffix, out_s)


def encode_shared_prefix(tower: PromptTextTower, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor,
                         eot_in_suffix: torch.Tensor) -> torch.Tensor:
    """Text features of prompts ``prefix + suffix[c]`` without recomputing the shared prefix.

    prefix_embeds: (G, P, w) token embeddings (with learned context) shared by a group's prompts;
    suffix_embeds: (G, C, S, w); eot_in_suffix: (C,) EOT index within the suffix. Returns (G, C, d),
    equal (to float rounding) to ``tower(full prompts, eot)`` (tested). The last layer computes the EOT
    token only, the one that is read out.
    """
    n_prefix, n_suffix = prefix_embeds.shape[-2], suffix_embeds.shape[-2]
    positions = tower.text_model.embeddings.position_embedding.weight
    prefix = prefix_embeds + positions[:n_prefix]
    suffix = suffix_embeds + positions[n_prefix : n_prefix + n_suffix]
    *layers, last = tower.text_model.encoder.layers
    for layer in layers:
        prefix, suffix = _shared_prefix_layer(layer, prefix, suffix)
    _, pooled = _shared_prefix_layer(last, prefix, suffix, eot_in_suffix.to(suffix.device))  # (G, C, 1, w)
    return tower.text_projection(tower.text_model.final_layer_norm(pooled[:, :, 0]))
