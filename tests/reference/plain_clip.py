"""CLIP's two towers in plain torch, computed as OpenAI's ``clip/model.py`` computes them, on the weights of a
Hugging Face ``CLIPModel`` (the tiny test CLIP). Both official repositories tested here vendor that file
(MaxZanella/CLIP-LoRA ``clip/model.py``, muzairkhattak/multimodal-prompt-learning ``clip/model.py``); the
references run on this module, so neither transformers' forward nor fewclip's is on their path.

- ``ResidualAttentionBlock.forward``: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` with
  ``mlp = c_proj(QuickGELU(c_fc(.)))`` and ``QuickGELU(x) = x * sigmoid(1.702 x)``; the attention is
  ``nn.MultiheadAttention``: q, k, v projections of the same input, per head
  ``softmax(q k^T / sqrt(d_head) + mask) v``, then ``out_proj``.
- ``CLIP.encode_text``: token embeddings + ``positional_embedding``, the causal mask (``-inf`` above the
  diagonal), ``ln_final``, the EOT token's row (``text.argmax(dim=-1)``: EOT is the largest id, and the
  tiny tokenizer pads with it, so argmax finds the first EOT), ``@ text_projection``.
- ``VisionTransformer.forward``: ``conv1`` patches, the class embedding before them, +
  ``positional_embedding``, ``ln_pre``, the blocks (no mask), ``ln_post`` of the class token, ``@ proj``.

The official code runs sequence-first (LND); this runs batch-first (NLD), the tiny model's layout, so that a
reference drawing dropout in the same order as fewclip draws the same masks. Hooks let a reference change what
the official variants change: ``linear`` (CLIP-LoRA's LoRA projections), ``after_embeddings`` (MaPLe's
shallow vision prompts) and ``before_layer`` (MaPLe's deep prompts).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch.nn import functional as F

Linear = Callable[[str, torch.Tensor], torch.Tensor]  # (the layer's parameter prefix, its input) -> its output
Hook = Callable[[int, torch.Tensor], torch.Tensor]  # (layer index, what enters it) -> what enters it instead


class PlainClip:
    """The frozen weights of ``model`` (a transformers ``CLIPModel``) and OpenAI's forward over them."""

    def __init__(self, model: Any, linear: Linear | None = None) -> None:
        self.weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        self.config = model.config
        self.linear = linear or self.frozen_linear

    def frozen_linear(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weights[f"{name}.weight"], self.weights.get(f"{name}.bias"))

    def layer_norm(self, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], eps)

    def block(self, prefix: str, x: torch.Tensor, heads: int, eps: float, mask: torch.Tensor | None) -> torch.Tensor:
        """``ResidualAttentionBlock.forward`` on (n, L, width)."""
        n, length, width = x.shape
        h = self.layer_norm(f"{prefix}.layer_norm1", x, eps)
        q, k, v = [
            self.linear(f"{prefix}.self_attn.{p}_proj", h).reshape(n, length, heads, -1).transpose(1, 2)
            for p in ("q", "k", "v")
        ]  # (n, heads, L, d_head), projected in MultiheadAttention's order
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores + mask
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
        x = x + self.linear(f"{prefix}.self_attn.out_proj", attended)
        h = self.linear(f"{prefix}.mlp.fc1", self.layer_norm(f"{prefix}.layer_norm2", x, eps))
        return x + self.linear(f"{prefix}.mlp.fc2", h * torch.sigmoid(1.702 * h))

    def token_embeddings(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(C, L) ids -> (C, L, width): ``token_embedding(text)``."""
        return self.weights["text_model.embeddings.token_embedding.weight"][token_ids]

    def encode_text(
        self, token_ids: torch.Tensor, embeddings: torch.Tensor | None = None, before_layer: Hook | None = None
    ) -> torch.Tensor:
        """(C, L) token ids (and optionally their (C, L, width) embeddings, e.g. with learned context) -> (C, dim)."""
        cfg = self.config.text_config
        x = self.token_embeddings(token_ids) if embeddings is None else embeddings
        length = x.shape[1]
        x = x + self.weights["text_model.embeddings.position_embedding.weight"][:length]
        mask = torch.full((length, length), float("-inf")).triu(1)
        for index in range(cfg.num_hidden_layers):
            x = before_layer(index, x) if before_layer is not None else x
            x = self.block(f"text_model.encoder.layers.{index}", x, cfg.num_attention_heads, cfg.layer_norm_eps, mask)
        x = self.layer_norm("text_model.final_layer_norm", x, cfg.layer_norm_eps)
        eot = x[torch.arange(x.shape[0]), token_ids.argmax(dim=-1)]
        return eot @ self.weights["text_projection.weight"].T

    def encode_image(
        self,
        pixels: torch.Tensor,
        after_embeddings: Callable[[torch.Tensor], torch.Tensor] | None = None,
        before_layer: Hook | None = None,
    ) -> torch.Tensor:
        """(n, 3, H, W) preprocessed pixels -> (n, dim)."""
        cfg, w = self.config.vision_config, self.weights
        patches = F.conv2d(pixels, w["vision_model.embeddings.patch_embedding.weight"], stride=cfg.patch_size)
        x = patches.flatten(2).transpose(1, 2)  # (n, grid**2, width)
        cls = w["vision_model.embeddings.class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + w["vision_model.embeddings.position_embedding.weight"]
        x = after_embeddings(x) if after_embeddings is not None else x
        x = self.layer_norm("vision_model.pre_layrnorm", x, cfg.layer_norm_eps)
        for index in range(cfg.num_hidden_layers):
            x = before_layer(index, x) if before_layer is not None else x
            x = self.block(f"vision_model.encoder.layers.{index}", x, cfg.num_attention_heads, cfg.layer_norm_eps, None)
        x = self.layer_norm("vision_model.post_layernorm", x[:, 0], cfg.layer_norm_eps)
        return x @ w["visual_projection.weight"].T

    @property
    def logit_scale(self) -> torch.Tensor:
        """``CLIP.logit_scale.exp()``."""
        return self.weights["logit_scale"].exp()

    def logits(self, token_ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """(n, C) ``logit_scale * image @ text.T`` of the normalised features (the references' training logits)."""
        text = normalize(self.encode_text(token_ids))
        image = normalize(self.encode_image(pixels))
        return self.logit_scale * image @ text.T


def words_prompts(
    clip: PlainClip, tokenizer: Any, ctx_init: str, n_ctx: int, classnames: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What MaPLe's ``MultiModalPromptLearner`` and PromptSRC's ``VLPromptLearner`` build in ``__init__`` with
    CTX_INIT and at most 4 context tokens: ``ctx``, the embedding rows 1..n_ctx of the tokenised init words (a leaf
    that trains), the class prompts ``ctx_init + " " + name + "."`` tokenised (C, L), ``token_prefix`` (their SOS
    embedding) and ``token_suffix`` (their embeddings after position n_ctx)."""
    init_ids = tokenizer([ctx_init.replace("_", " ")], return_tensors="pt")["input_ids"]
    ctx = clip.token_embeddings(init_ids)[0, 1 : 1 + n_ctx].clone().requires_grad_()
    prompts = [ctx_init + " " + name.replace("_", " ") + "." for name in classnames]
    tokenized_prompts = tokenizer(prompts, padding=True, return_tensors="pt")["input_ids"]
    embedding = clip.token_embeddings(tokenized_prompts)
    return ctx, tokenized_prompts, embedding[:, :1], embedding[:, 1 + n_ctx :]


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / x.norm(dim=-1, keepdim=True)``, as the official code writes it."""
    return x / x.norm(dim=-1, keepdim=True)
