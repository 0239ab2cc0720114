"""OpenCLIP's towers run on what prompt learning feeds them: the text tower on prompt embeddings
(``OpenCLIPPromptTower``, equal to ``model.encode_text``), both towers with MaPLe's deep prompts
(``OpenCLIPDeepPromptTowers``), and the patch tokens a ViT's last block attends over (saliency).

MaPLe's reference (github.com/muzairkhattak/multimodal-prompt-learning ``clip/model.py``:
``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``) is written on OpenAI's CLIP, whose layout
OpenCLIP keeps, so the prompts enter here block by block as there (and as ``hf_deep_prompts`` describes):
text prompt rows 1..k replaced before blocks 1..depth-1; the shallow vision prompts appended after the
class and patch tokens and their positions, before ``ln_pre``; the last k vision tokens replaced before
blocks 1..depth-1; the class token through ``ln_post`` and ``proj``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fewclip.backbones.prompt_tower import BlockParts, SharedPrefixParts, encode_shared_prefix, replace_rows

PROMPT_POOLING = ("argmax", "eos")  # text towers read at the EOT position: what prompt learning needs


class OpenCLIPPromptTower(nn.Module):
    """OpenCLIP's text tower run on prompt embeddings (``width``, ``max_positions``, ``embed_tokens``,
    ``forward(embeds, eot)``, ``encode_shared_prefix``)."""

    attn_mask: torch.Tensor  # a buffer: (context_length, context_length) additive causal mask

    def __init__(self, model: Any) -> None:
        """``model``: an OpenCLIP ``CLIP`` (Any: open_clip ships no type hints)."""
        super().__init__()
        pooling = getattr(model, "text_pool_type", None)
        if not hasattr(model, "token_embedding") or pooling not in PROMPT_POOLING or model.attn_mask is None:
            raise ValueError(
                f"prompt learning needs a causal text tower read at the EOT token; this OpenCLIP model's "
                f"text tower ({type(model).__name__}, pooling {pooling!r}) is not one: use zero_shot or "
                f"linear_probe with it"
            )
        self.token_embedding: nn.Embedding = model.token_embedding
        self.positional_embedding: nn.Parameter = model.positional_embedding  # (context_length, width)
        self.transformer: Any = model.transformer  # OpenCLIP's Transformer: its resblocks, get_cast_dtype()
        self.ln_final: nn.LayerNorm = model.ln_final
        self.text_projection: nn.Parameter | nn.Linear | None = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)
        blocks = list(self.transformer.resblocks)
        # OpenCLIP's plain blocks take the shared-prefix fast path; any other block runs every full prompt
        self.plain_blocks = all(
            type(b).__name__ == "ResidualAttentionBlock" and not hasattr(b, "ln_1_kv") for b in blocks
        )

    @property
    def width(self) -> int:
        return int(self.token_embedding.embedding_dim)

    @property
    def max_positions(self) -> int:
        return int(self.positional_embedding.shape[0])

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        embeds: torch.Tensor = self.token_embedding(token_ids)
        return embeds

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.text_projection is None:
            return pooled
        if isinstance(self.text_projection, nn.Linear):
            projected: torch.Tensor = self.text_projection(pooled)
            return projected
        return pooled @ self.text_projection

    def forward(self, prompt_embeds: torch.Tensor, eot_positions: torch.Tensor) -> torch.Tensor:
        length = prompt_embeds.shape[1]
        cast = self.transformer.get_cast_dtype()
        hidden = prompt_embeds.to(cast) + self.positional_embedding[:length].to(cast)
        hidden = self.transformer(hidden, attn_mask=self.attn_mask[:length, :length])
        hidden = self.ln_final(hidden)
        return self.project(hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions])

    def shared_prefix_parts(self) -> SharedPrefixParts | None:
        """The blocks as ``BlockParts``; None when one is not OpenCLIP's plain ``ResidualAttentionBlock``."""
        if not self.plain_blocks:
            return None
        return SharedPrefixParts(
            positions=self.positional_embedding,
            blocks=[_block_parts(b) for b in self.transformer.resblocks],
            final=lambda hidden: self.project(self.ln_final(hidden)),
        )

    def encode_shared_prefix(
        self, prefix_embeds: torch.Tensor, suffix_embeds: torch.Tensor, eot_in_suffix: torch.Tensor
    ) -> torch.Tensor:
        if self.plain_blocks:
            return encode_shared_prefix(self, prefix_embeds, suffix_embeds, eot_in_suffix)
        groups, prompts = suffix_embeds.shape[:2]  # any other block: every full prompt (the same result, slower)
        full = torch.cat([prefix_embeds[:, None].expand(-1, prompts, -1, -1), suffix_embeds], dim=2)
        out = self(full.flatten(0, 1), (eot_in_suffix + prefix_embeds.shape[1]).repeat(groups))
        features: torch.Tensor = out.unflatten(0, (groups, prompts))  # torch leaves unflatten untyped
        return features


def _block_parts(block: Any) -> BlockParts:
    """An OpenCLIP ``ResidualAttentionBlock`` (Any: open_clip ships no type hints)."""
    attn: nn.MultiheadAttention = block.attn  # one packed in-projection

    def qkv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = nn.functional.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        return q, k, v

    return BlockParts(
        norm1=block.ln_1,
        qkv=qkv,
        out=attn.out_proj,
        norm2=block.ln_2,
        mlp=block.mlp,
        n_heads=attn.num_heads,
        scale=attn.head_dim**-0.5,
        scale1=block.ls_1,
        scale2=block.ls_2,
    )


def is_plain_vit(visual: nn.Module) -> bool:
    """An OpenCLIP ``VisionTransformer`` whose feature is its class token (no attentional pooler, batch first):
    where vision prompts can be appended and saliency reads a patch grid."""
    return (
        hasattr(visual, "transformer")
        and hasattr(visual, "class_embedding")
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
        and getattr(visual.transformer, "batch_first", True)
    )


@contextlib.contextmanager
def vit_last_block_patches(visual: Any, trailing: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """While active, the patch tokens a ViT's last block normalises for its attention (``ln_1``'s output: at its
    input a LayerNorm's scale invariance makes gradient x activation vanish, see ``hf_saliency``) are captured
    as a (n, gh, gw, width) view on the forward graph, under ``"grid"``. ``trailing``: tokens after the patches
    left out (MaPLe's vision prompts). ``visual``: an OpenCLIP ``VisionTransformer`` (Any: open_clip ships no
    type hints)."""
    captured: dict[str, torch.Tensor] = {}

    def route(_module: Any, _args: Any, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (n, prefix + P + trailing, w), batch first
        end = tokens.shape[1] - trailing
        prefix = end - int(round((end - 1) ** 0.5)) ** 2
        grid_size = int(round((end - prefix) ** 0.5))
        grid = tokens[:, prefix:end].reshape(len(tokens), grid_size, grid_size, -1)
        if grid.requires_grad:
            grid.retain_grad()  # .backward() callers read grid.grad
        captured["grid"] = grid
        return torch.cat([tokens[:, :prefix], grid.flatten(1, 2), tokens[:, end:]], dim=1)

    handle = visual.transformer.resblocks[-1].ln_1.register_forward_hook(route)
    try:
        yield captured
    finally:
        handle.remove()


def run_block(block: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None, recompute: bool) -> torch.Tensor:
    """One OpenCLIP residual block; ``recompute``: its activations are recomputed in the backward pass."""
    if recompute and torch.is_grad_enabled():
        out: torch.Tensor = checkpoint(block, hidden, None, None, mask, use_reentrant=False)
    else:
        out = block(hidden, attn_mask=mask)
    return out


class OpenCLIPDeepPromptTowers:
    """A frozen OpenCLIP model's towers run with deep prompts (``DeepPromptTowers``).

    Text: any text tower prompt learning can use (``OpenCLIPPromptTower`` checks it). Vision prompts need a
    plain ViT (``is_plain_vit``); with another image tower (a ResNet) ``vision_layers`` is 0, so MaPLe runs only
    without vision prompts (``maple.coupling: false``) and is refused with them (its depth check).
    """

    def __init__(self, model: Any) -> None:
        """``model``: an OpenCLIP ``CLIP`` (Any: open_clip ships no type hints)."""
        self.text = OpenCLIPPromptTower(model)
        if not getattr(self.text.transformer, "batch_first", True):
            raise ValueError("maple: this OpenCLIP text tower runs sequence-first; fewclip reads batch-first tokens")
        self.visual: Any = model.visual  # OpenCLIP's image tower: a VisionTransformer, ModifiedResNet, ...
        self.text_width, self.text_layers = self.text.width, len(self.text.transformer.resblocks)
        vit = is_plain_vit(self.visual)
        self.vision_width = int(self.visual.transformer.width) if vit else 0
        self.vision_layers = len(self.visual.transformer.resblocks) if vit else 0

    def text_features(
        self,
        prompt_embeds: torch.Tensor,
        eot_positions: torch.Tensor,
        deep_text: Sequence[torch.Tensor | None],
        recompute: bool = False,
    ) -> torch.Tensor:
        text = self.text
        length = prompt_embeds.shape[1]
        cast = text.transformer.get_cast_dtype()
        hidden = prompt_embeds.to(cast) + text.positional_embedding[:length].to(cast)
        mask = text.attn_mask[:length, :length]
        for index, block in enumerate(text.transformer.resblocks):
            prompt = deep_text[index - 1] if 1 <= index <= len(deep_text) else None
            if prompt is not None:
                hidden = replace_rows(hidden, 1, prompt)
            hidden = run_block(block, hidden, mask, recompute)
        hidden = text.ln_final(hidden)
        return text.project(
            hidden[torch.arange(hidden.shape[0], device=hidden.device), eot_positions.to(hidden.device)]
        )

    def image_features(
        self,
        pixels: torch.Tensor,
        shallow: torch.Tensor | None,
        deep_vision: Sequence[torch.Tensor],
        recompute: bool = False,
    ) -> torch.Tensor:
        visual = self.visual
        if not self.vision_layers:
            if shallow is not None:
                raise ValueError(
                    f"maple: vision prompts need a ViT image tower read at its class token; this OpenCLIP "
                    f"model's is {type(visual).__name__}: set maple.coupling: false or choose a ViT"
                )
            features: torch.Tensor = visual(pixels.to(next(visual.parameters()).device))
            return features
        x: torch.Tensor = visual.conv1(pixels.to(visual.conv1.weight.device))  # (n, w, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (n, P, w)
        cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = visual.patch_dropout(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
        if shallow is not None:
            x = replace_rows(x, x.shape[1], shallow)  # appended: nothing after it to keep
        x = visual.ln_pre(x)
        for index, block in enumerate(visual.transformer.resblocks):
            if shallow is not None and 1 <= index <= len(deep_vision):
                x = replace_rows(x, x.shape[1] - shallow.shape[0], deep_vision[index - 1])
            x = run_block(block, x, None, recompute)
        pooled: torch.Tensor = visual.ln_post(x[:, 0])
        return pooled @ visual.proj if visual.proj is not None else pooled

    def saliency_pass(
        self, pixels: torch.Tensor, shallow: torch.Tensor | None, deep_vision: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.vision_layers:
            raise ValueError(
                f"saliency: no patch tokens known for OpenCLIP image tower {type(self.visual).__name__} "
                "with deep prompts; set output.saliency_images: 0"
            )
        trailing = 0 if shallow is None else shallow.shape[0]
        with vit_last_block_patches(self.visual, trailing) as captured:
            features = self.image_features(pixels, shallow, deep_vision)
        return features, captured["grid"]
