"""CLIP-SVD (Koleilat, Rivaz & Xiao, arXiv 2025): every weight matrix of every block of both towers (attention q,
k, v and output projections, both MLP layers) is factored W = U diag(s) V^T once, U and V stay frozen and only the
singular values s train, end to end on augmented images. The saved head is the singular values only; ``attach``
factors the run's backbone again (U and V are functions of its weights) and puts them in, and ``transfer`` scores
other class names (base-to-new) with the same tuned towers: the tuned text tower encodes the new names.

What follows the reference code (github.com/HealthX-Lab/CLIP-SVD; checked step by step against an independent
re-implementation in ``tests/reference/test_clip_svd.py``):

- the factorisation (``svf_utils/svf_torch.py``): ``resolver`` with ``global_low_rank_ratio`` 1.0 (``main.py``'s
  ``--rank`` default) keeps every singular value (``round_to_nearest``: min(out, in) rounded down to a multiple of
  4, which every CLIP width is); ``d_nsvd``: ``torch.svd`` of the (out, in) weight; ``SVD_Linear``: ``fc_V``
  (V^T), the singular values ``vector_S`` initialised to s, ``fc_U`` (U) with the layer's bias: W x + b unchanged;
- which matrices (``train.py`` ``run_training``, ``svf_utils/PlainHeadAttention.py``): each block's fused
  attention in-projection is split into separate q, k, v projections (``set_parameters``) so that each is factored
  alone, the output projection too; ``svf_utils/utils.py`` ``set_clip_trainable_parameters`` trains only the
  ``vector_S`` of q, k, v, the output projection and both MLP layers of the blocks of ``include_train_layers``
  ("all" in every ``configs/*/*.yaml``) of both encoders (``train_image_encoder``, ``train_text_encoder``: true);
  everything else is frozen;
- the training (``train.py`` ``run_training``, the few-shot protocol of ``scripts/fewshot.sh``): AdamW over all
  parameters (only the singular values have gradients; betas 0.9/0.999, weight decay 0.01 of
  ``configs/few_shot/*.yaml``), lr 5e-4 (every natural-image dataset's ``configs/few_shot`` value), a cosine to
  1e-6 over ``n_iters * shots`` iterations (``main.py``: ``n_iters`` 200) stepped after each one, batch 32, the
  class texts re-encoded by the tuned text tower at every iteration, ``logit_scale * cos`` and the mean
  cross-entropy, epochs over a shuffled loader that keeps its last partial batch (``datasets/utils.py``
  ``build_data_loader``: ``drop_last=False``);
- the augmentation (``main.py``): a random resized crop (scale 0.08-1, bicubic) and a horizontal flip with
  probability 0.5.

Where fewclip differs, and why:

- the forward: the reference runs x -> V^T x -> s * . -> U . + b (two products per token); here each layer
  rebuilds W = U diag(s) V^T once per forward and applies it (one product per token): the same function, up to
  fp32 rounding, with fewer operations for a batch of images and less activation memory. Only the chosen
  matrices are factored (the reference factors every ``nn.Linear`` and freezes the unchosen ones: the same
  function, up to rounding). The factorisation runs in float64 (the reference: float32), so that W is rebuilt
  to fp32 rounding and a loaded head gets the same U and V on any device (a sign shared by a column of U and
  one of V may differ between devices; it leaves W unchanged).
- ``layers``: block indices (default every block of each tower); the reference's ``include_train_layers``
  names index sets written for 12-block towers ("all" is 0-11, so on ViT-L/14's 24-block image tower it tunes
  only the first half).
- precision: the reference trains under fp16 autocast (no grad scaler) in an fp32 model; the default here is
  fp32, which runs anywhere (``precision: fp16`` autocasts on a GPU, with a grad scaler).
- the template: the run's first ``prompts.templates`` (fewclip's default "a photo of a {}."); the reference's
  ``configs/*/*.yaml`` give each dataset one template (e.g. DTD's "{} texture.").
- the logit scale: the backbone's ``logit_scale.exp()``; the reference fixes 100 (``main.py``), the value of
  every OpenAI CLIP.
- base-to-new: the reference trains the base classes with another loop (``run_other_training``:
  ``train_epochs`` epochs, lr 4e-4 in ``configs/base2new``, a cosine whose period is ``train_epochs`` but
  stepped after every batch); fewclip trains every split with the few-shot loop above.
- the kept weights: ``select`` (default ``auto``: the last iteration's, unless a validation split of at least
  10 images a class shows an earlier epoch clearly better); the reference keeps the last (``VALIDATION =
  False``).
- the batch order and the crops are drawn from fewclip's seeded generators (resumable, identical whatever the
  number of workers or ranks), not from torch's global RNG as the reference's ``DataLoader`` draws them.
- the library: Hugging Face's CLIP only (``needs`` ``lora_targets``: the backbones whose ``tunable_towers`` list
  their blocks' separate linear layers); OpenCLIP fuses q, k and v into one in-projection, so it is refused
  when the config is loaded.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn
from torch.nn import functional as F

from fewclip.backbones.protocol import Backbone, BlockLinear, TunableTowers
from fewclip.heads.encoders.config import AdamWTrainingConfig
from fewclip.heads.encoders.tuned_towers import TunedTowersHead, folded_copy
from fewclip.heads.registry import register_head

Target = Literal["q", "k", "v", "out", "mlp"]
TARGET_OF_KIND: dict[str, Target] = {"q": "q", "k": "k", "v": "v", "out": "out", "fc1": "mlp", "fc2": "mlp"}


class ClipSvdConfig(AdamWTrainingConfig):
    """The `clip_svd` block, with the reference CLIP-SVD few-shot defaults (natural images, ViT-B/16)."""

    lr: float = Field(
        5e-4,
        gt=0,
        description="AdamW learning rate (cosine to min_lr over all iterations; CLIP-SVD's configs/few_shot value "
        "for natural images).",
    )
    iterations_per_shot: int = Field(200, ge=1, description="Optimiser steps = iterations_per_shot x shots.")
    towers: list[Literal["text", "vision"]] = Field(
        ["text", "vision"], min_length=1, description="The towers whose singular values train."
    )
    targets: list[Target] = Field(
        ["q", "k", "v", "out", "mlp"],
        min_length=1,
        description="The weight matrices of a block whose singular values train: the attention's q, k, v and "
        "output projections, mlp (both MLP layers).",
    )
    layers: list[int] | None = Field(
        None, description="Block indices (0 first) whose matrices train, in each chosen tower; null: every block."
    )

    @field_validator("layers")
    @classmethod
    def _non_negative(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or min(value) < 0):
            raise ValueError(f"layers {value}: give block indices >= 0 (0 is the first block), or null for every block")
        return value


def thin_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U (m, r), s (r,), V^T (r, n)) with ``matrix`` = U diag(s) V^T, r = min(m, n), s descending. A wide matrix
    is factored through its transpose: LAPACK's divide and conquer took 5 to 7 times longer on the (768, 3072)
    MLP output layer of ViT-B than on its (3072, 768) transpose (measured on a CPU)."""
    if matrix.shape[0] >= matrix.shape[1]:
        left, values, right = torch.linalg.svd(matrix, full_matrices=False)
        return left, values, right
    right_t, values, left_t = torch.linalg.svd(matrix.T, full_matrices=False)
    return left_t.T, values, right_t.T


class SingularValueLinear(nn.Module):
    """An ``nn.Linear`` factored as W = U diag(s) V^T (CLIP-SVD's ``SVD_Linear``): U (out, r) and V^T (r, in)
    frozen buffers, the singular values s (r,) the one trained tensor, the bias kept and frozen."""

    left: torch.Tensor
    right: torch.Tensor

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        left, values, right = thin_svd(weight.double())
        self.register_buffer("left", left.to(weight.dtype), persistent=False)  # U: rebuilt from the backbone
        self.register_buffer("right", right.to(weight.dtype), persistent=False)  # V^T
        self.singular_values = nn.Parameter(values.to(weight.dtype))
        self.bias = linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) U diag(s) V^T."""
        return (self.left * self.singular_values) @ self.right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def plain_linear(layer: SingularValueLinear) -> nn.Linear:
    """The ``nn.Linear`` that ``layer`` computes: weight U diag(s) V^T with the tuned s, the same bias."""
    weight = layer.weight
    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    linear.to(device=weight.device, dtype=weight.dtype)
    linear.weight.copy_(weight)
    if layer.bias is not None:
        linear.bias.copy_(layer.bias)
    return linear


def chosen_linears(towers: TunableTowers, config: ClipSvdConfig) -> list[BlockLinear]:
    """The blocks' linear layers whose singular values train under ``config`` (``towers``, ``targets``,
    ``layers``); an index in ``layers`` that no chosen tower has is an error."""
    linears = [b for b in towers.block_linears() if b.tower in config.towers]
    if config.layers is not None:
        beyond = sorted(set(config.layers) - {b.layer for b in linears})
        if beyond:
            depth = max(b.layer for b in linears) + 1
            raise ValueError(
                f"clip_svd.layers: blocks {beyond} do not exist in the chosen towers of this model ({depth} blocks "
                f"at the most, 0 first); give indices below {depth} or null for every block"
            )
    return [
        b
        for b in linears
        if TARGET_OF_KIND[b.kind] in config.targets and (config.layers is None or b.layer in config.layers)
    ]


def svd_towers(backbone: Backbone, config: ClipSvdConfig) -> TunableTowers:
    """The backbone's towers, copied, every parameter frozen, with the chosen linear layers factored
    (``SingularValueLinear``): only their singular values train. The copy starts as the frozen model (to fp32
    rounding of U diag(s) V^T)."""
    towers = backbone.tunable_towers()
    towers.module.requires_grad_(False)
    for block in chosen_linears(towers, config):
        parent, _, attribute = block.module.rpartition(".")
        owner = towers.module.get_submodule(parent)
        setattr(owner, attribute, SingularValueLinear(getattr(owner, attribute)))
    towers.module.to(backbone.device)
    return towers


@register_head
class ClipSvdHead(TunedTowersHead):
    name = "clip_svd"
    paper = "Koleilat, Rivaz & Xiao, arXiv 2025 (CLIP-SVD)"
    official_code = "HealthX-Lab/CLIP-SVD"
    published_as = "CLIP-SVD"
    paper_selection = "validation-free"  # the CLIP-LoRA loop it reuses: the last iteration, fixed settings
    config_key = "clip_svd"
    Config = ClipSvdConfig
    config: ClipSvdConfig

    merges_into_model = True

    def make_towers(self, backbone: Backbone, seed: int) -> TunableTowers:
        return svd_towers(backbone, self.config)  # deterministic: the seed draws nothing

    def merged_towers(self) -> TunableTowers:
        return folded_copy(self.towers_, SingularValueLinear, plain_linear)
