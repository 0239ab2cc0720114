"""CLIP's text tower run on prompt *embeddings* (learned context vectors among token embeddings).

transformers 5's ``CLIPTextModel.forward`` takes token ids only, so this re-runs its steps on given
embeddings: positions added by ``embeddings(inputs_embeds=...)``, the encoder with a causal mask,
``final_layer_norm``, pooling at the EOT position, ``text_projection``. Sequences may be cut to the
longest real prompt: under the causal mask, tokens after EOT never reach it, so this is exact
(tested against ``get_text_features``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, cast, overload

import torch
from torch import nn

if TYPE_CHECKING:  # for annotations only: importing transformers' CLIP modules takes a while
    from transformers.models.clip.modeling_clip import CLIPEncoder, CLIPEncoderLayer, CLIPModel, CLIPTextModel


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 1, L, L) additive mask: 0 on and below the diagonal, the dtype's minimum above."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device)
    return torch.triu(mask, diagonal=1)[None, None]


def replace_rows(hidden: torch.Tensor, start: int, prompt: torch.Tensor) -> torch.Tensor:
    """(n, L, w) hidden states with rows start..start+k replaced by ``prompt``: (k, w), the same rows in every
    sequence, or (n, k, w), each sequence its own (TCP's class-aware tokens)."""
    stop = start + prompt.shape[-2]
    rows = prompt.to(hidden.dtype)
    rows = rows.unsqueeze(0).expand(hidden.shape[0], -1, -1) if rows.dim() == 2 else rows
    return torch.cat([hidden[:, :start], rows, hidden[:, stop:]], dim=1)


class PromptTextTower(nn.Module):
    """Frozen text encoder + projection of a ``CLIPModel``; gradients flow to the prompt embeddings only."""

    def __init__(self, clip_model: CLIPModel) -> None:
        super().__init__()
        self.text_model: CLIPTextModel = clip_model.text_model  # transformers builds it untyped (_from_config)
        self.text_projection = clip_model.text_projection

    @property
    def width(self) -> int:
        return int(self.text_model.config.hidden_size)

    @property
    def max_positions(self) -> int:
        return int(self.text_model.config.max_position_embeddings)

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(..., L) ids -> (..., L, width) token embeddings (no positions)."""
        embeds: torch.Tensor = self.text_model.embeddings.token_embedding(token_ids)
        return embeds

    def forward(self, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        """(n, L, width) prompt embeddings, (n,) EOT index -> (n, projection_dim) unnormalised features."""
        hidden: torch.Tensor = self.text_model.embeddings(inputs_embeds=prompt_embeds)
        mask = causal_mask(hidden.shape[1], hidden.dtype, hidden.device)
        hidden = self.text_model.encoder(inputs_embeds=hidden, attention_mask=mask, is_causal=True).last_hidden_state
        hidden = self.text_model.final_layer_norm(hidden)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions]
        features: torch.Tensor = self.text_projection(pooled)
        return features

    def shared_prefix_parts(self) -> "SharedPrefixParts":
        return SharedPrefixParts(
            positions=self.text_model.embeddings.position_embedding.weight,
            blocks=[hf_block_parts(layer) for layer in hf_encoder_layers(self.text_model.encoder)],
            final=lambda hidden: self.text_projection(self.text_model.final_layer_norm(hidden)),
        )

    def encode_shared_prefix(
        self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor, eot_in_suffix: torch.Tensor
    ) -> torch.Tensor:
        """``encode_shared_prefix`` on this tower (see there)."""
        return encode_shared_prefix(self, prefix_embeds, suffix_embeds, eot_in_suffix)


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(..., L, w) -> (..., H, L, w/H)."""
    split: torch.Tensor = x.unflatten(-1, (n_heads, -1))  # (..., L, H, w/H); torch leaves unflatten untyped
    return split.transpose(-3, -2)


def _pick_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(G, C, ..., S, k), (C,) row per prompt -> (G, C, ..., 1, k): each prompt's row ``rows[c]``."""
    index = rows.view(1, -1, *([1] * (x.dim() - 2))).expand(*x.shape[:-2], 1, x.shape[-1])
    return x.gather(-2, index)


@dataclass(frozen=True)
class BlockParts:
    """One pre-norm transformer block as the shared-prefix encoder sees it, whatever library built it:
    x + scale1(out(attention(norm1(x)))), then x + scale2(mlp(norm2(x)))."""

    norm1: Callable[[torch.Tensor], torch.Tensor]
    qkv: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (..., w) -> q, k, v (..., w)
    out: Callable[[torch.Tensor], torch.Tensor]
    norm2: Callable[[torch.Tensor], torch.Tensor]
    mlp: Callable[[torch.Tensor], torch.Tensor]
    n_heads: int
    scale: float  # attention logit scale, head_dim ** -0.5
    scale1: Callable[[torch.Tensor], torch.Tensor] = nn.Identity()
    scale2: Callable[[torch.Tensor], torch.Tensor] = nn.Identity()


@dataclass(frozen=True)
class SharedPrefixParts:
    """What ``encode_shared_prefix`` needs from a text tower."""

    positions: torch.Tensor  # (max_positions, w) position embeddings, added to token embeddings
    blocks: list[BlockParts]
    final: Callable[[torch.Tensor], torch.Tensor]  # (..., w) EOT hidden state -> (..., dim) feature


class SharedPrefixTower(Protocol):
    """A text tower ``encode_shared_prefix`` runs on; None: its blocks are not ones it can split."""

    def shared_prefix_parts(self) -> SharedPrefixParts | None: ...


def hf_encoder_layers(encoder: CLIPEncoder) -> list[CLIPEncoderLayer]:
    """A transformers ``CLIPEncoder``'s layers, typed (``nn.ModuleList`` types its items as ``nn.Module``)."""
    return cast("list[CLIPEncoderLayer]", list(encoder.layers))


def hf_block_parts(layer: CLIPEncoderLayer) -> BlockParts:
    """A transformers ``CLIPEncoderLayer``."""
    attn = layer.self_attn
    return BlockParts(
        norm1=layer.layer_norm1,
        qkv=lambda x: (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)),
        out=attn.out_proj,
        norm2=layer.layer_norm2,
        mlp=layer.mlp,
        n_heads=attn.num_heads,
        scale=attn.scale,
    )


@overload
def _shared_prefix_layer(
    block: BlockParts, prefix: torch.Tensor, suffix: torch.Tensor, read_rows: None = None
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def _shared_prefix_layer(
    block: BlockParts, prefix: torch.Tensor, suffix: torch.Tensor, read_rows: torch.Tensor
) -> tuple[None, torch.Tensor]: ...
def _shared_prefix_layer(
    block: BlockParts, prefix: torch.Tensor, suffix: torch.Tensor, read_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One transformer block on prompts that share a prefix.

    prefix: (G, P, w), the same for every prompt of a group; suffix: (G, C, S, w), C prompts per group.
    Under the causal mask the prefix never sees the suffix, so it is computed once per group, and each
    suffix attends to its group's prefix keys/values plus its own causal past: the same arithmetic as
    running every full prompt, with the prefix's share done once instead of C times.

    With ``read_rows`` (C,) (the last layer, where only the EOT token is read out) only that suffix row
    of each prompt is computed: (None, (G, C, 1, w)). Keys and values still come from every token.
    """
    n_heads, scale = block.n_heads, block.scale
    n_prefix, n_suffix, n_prompts = prefix.shape[-2], suffix.shape[-2], suffix.shape[1]
    q_p, k_p, v_p = (_heads(x, n_heads) for x in block.qkv(block.norm1(prefix)))  # (G, H, P, hd)
    q_s, k_s, v_s = (_heads(x, n_heads) for x in block.qkv(block.norm1(suffix)))  # (G, C, H, S, hd)
    k_all = torch.cat([k_p[:, None].expand(-1, n_prompts, -1, -1, -1), k_s], dim=-2)  # (G, C, H, P+S, hd)
    v_all = torch.cat([v_p[:, None].expand(-1, n_prompts, -1, -1, -1), v_s], dim=-2)
    allowed = torch.ones(n_suffix, n_prefix + n_suffix, dtype=torch.bool, device=suffix.device)
    allowed[:, n_prefix:] = torch.tril(allowed[:, n_prefix:])

    def finish(h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        h = h + block.scale1(block.out(out.transpose(-3, -2).flatten(-2)))
        return h + block.scale2(block.mlp(block.norm2(h)))

    if read_rows is not None:
        suffix = _pick_rows(suffix, read_rows)  # (G, C, 1, w)
        q_s = _pick_rows(q_s.transpose(-3, -2).flatten(-2), read_rows)  # (G, C, 1, w)
        mask = allowed[read_rows][:, None, None]  # (C, 1, 1, P+S)
        return None, finish(
            suffix,
            nn.functional.scaled_dot_product_attention(_heads(q_s, n_heads), k_all, v_all, attn_mask=mask, scale=scale),
        )
    out_p = nn.functional.scaled_dot_product_attention(q_p, k_p, v_p, is_causal=True, scale=scale)
    out_s = nn.functional.scaled_dot_product_attention(q_s, k_all, v_all, attn_mask=allowed, scale=scale)
    return finish(prefix, out_p), finish(suffix, out_s)


def encode_shared_prefix(
    tower: SharedPrefixTower, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor, eot_in_suffix: torch.Tensor
) -> torch.Tensor:
    """Text features of prompts ``prefix + suffix[c]`` without recomputing the shared prefix.

    ``tower`` offers ``shared_prefix_parts()``. prefix_embeds: (G, P, w) token embeddings (with learned
    context) shared by a group's prompts; suffix_embeds: (G, C, S, w); eot_in_suffix: (C,) EOT index
    within the suffix. Returns (G, C, d), equal (to float rounding) to ``tower(full prompts, eot)``
    (tested). The last layer computes the EOT token only, the one that is read out.
    """
    parts = tower.shared_prefix_parts()
    if parts is None:
        raise ValueError(
            f"encode_shared_prefix: {type(tower).__name__} has blocks it cannot split at the prefix; "
            "run every full prompt through the tower instead"
        )
    n_prefix, n_suffix = prefix_embeds.shape[-2], suffix_embeds.shape[-2]
    prefix = prefix_embeds + parts.positions[:n_prefix]
    suffix = suffix_embeds + parts.positions[n_prefix : n_prefix + n_suffix]
    *blocks, last = parts.blocks
    for block in blocks:
        prefix, suffix = _shared_prefix_layer(block, prefix, suffix)
    _, pooled = _shared_prefix_layer(last, prefix, suffix, eot_in_suffix.to(suffix.device))  # (G, C, 1, w)
    return parts.final(pooled[:, :, 0])
