"""CLIP-LoRA (Zanella & Ben Ayed, CVPR-W 2024): low-rank adapters in the q/k/v projections of every layer of
both towers, trained end to end on augmented images. The saved head is the adapter weights only; ``attach``
rebuilds the tuned model on the run's backbone before scoring, and ``transfer`` scores other class names
(base-to-new) with the same tuned towers: the tuned text tower encodes the new names in the template.

What follows the reference code (github.com/MaxZanella/CLIP-LoRA; checked step by step against an independent
re-implementation in ``tests/reference/test_clip_lora.py``):

- the defaults of ``run_utils.py``: rank 2, alpha 1, dropout 0.25, lr 2e-4, batch 32, 500 x shots iterations,
  LoRA on q, k, v of all layers of both encoders (``loralib/utils.py`` ``apply_lora``, position 'all',
  encoder 'both');
- the update ``(B A) * alpha / sqrt(rank)`` (``loralib/layers.py`` ``LoRALayer``: peft's ``use_rslora``), A
  Kaiming-uniform and B zero at the start (``init_lora_param``), dropout on the LoRA branch's input only and
  only while training (``LinearLoRA.forward``);
- ``lora.py`` ``run_lora``: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 1e-2), a cosine from lr to 1e-6
  over all iterations stepped after each one, the class texts re-encoded by the tuned text tower (train mode)
  at every iteration, ``logit_scale * cos`` and the mean cross-entropy; epochs over a shuffled loader that
  keeps its last partial batch (``datasets/utils.py`` ``build_data_loader``: ``drop_last=False``) until the
  iteration count is reached;
- the augmentation (``main.py``): a random resized crop (scale 0.08-1, resampled as the model's preprocessing
  resamples: bicubic for CLIP) and a horizontal flip with probability 0.5.

Where it deviates, and why:

- precision: the reference loads CLIP in fp16 on CUDA (its LoRA'd q/k/v projections are rebuilt in fp32)
  and trains under fp16 autocast with a grad scaler; the default here is fp32, which runs anywhere, CPU
  included (``precision: fp16`` or ``bf16`` autocasts on a GPU).
- the template: the run's first ``prompts.templates``. fewclip's default, "a photo of a {}.", is the one every
  CLIP-LoRA dataset uses (``datasets/*.py``: their dataset-specific templates are commented out); a config
  that sets its own prompts (``configs/coop_suite``) gives clip_lora that prompt too.
- the logit scale: the backbone's ``logit_scale.exp()``; the reference fixes 100 (``main.py``), which is the
  value of every OpenAI CLIP it can load.
- the kept weights: ``select`` (default ``auto``: the last iteration's, unless a validation split of at least
  10 images a class shows an earlier epoch clearly better); the reference keeps the last (``VALIDATION =
  False``).
- the batch order and the crops are drawn from fewclip's seeded generators (resumable, identical whatever the
  number of workers or ranks), not from torch's global RNG as the reference's ``DataLoader`` draws them.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fewclip.backbones.protocol import Backbone, TunableTowers
from fewclip.heads.artifacts import StaleArtifact
from fewclip.heads.encoders.config import AdamWTrainingConfig
from fewclip.heads.encoders.lora_layers import lora_scaling, lora_towers, merged_towers
from fewclip.heads.encoders.tuned_towers import TunedTowersHead
from fewclip.heads.registry import register_head


class ClipLoraConfig(AdamWTrainingConfig):
    """The `clip_lora` block, with the reference CLIP-LoRA defaults."""

    rank: int = Field(2, ge=1, description="LoRA rank r.")
    alpha: float = Field(
        1.0,
        gt=0,
        description="LoRA alpha (the update is scaled by alpha / sqrt(rank), as CLIP-LoRA's loralib scales it).",
    )
    dropout: float = Field(0.25, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj"],
        description="Attention projections that get LoRA, "
        "in every layer of both towers (q_proj, k_proj, v_proj, out_proj).",
    )


@register_head
class ClipLoraHead(TunedTowersHead):
    name = "clip_lora"
    paper = "Zanella & Ben Ayed, CVPR-W 2024 (CLIP-LoRA)"
    official_code = "MaxZanella/CLIP-LoRA"
    published_as = "CLIP-LoRA"
    paper_selection = "validation-free"  # run_utils.py VALIDATION = False: the last iteration
    config_key = "clip_lora"
    Config = ClipLoraConfig
    config: ClipLoraConfig
    merges_into_model = True

    def make_towers(self, backbone: Backbone, seed: int) -> TunableTowers:
        cfg = self.config
        return lora_towers(backbone, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, seed)

    def merged_towers(self) -> TunableTowers:
        return merged_towers(self.towers_)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"lora_scaling": torch.tensor([lora_scaling(self.config.rank, self.config.alpha)])}  # trained at

    def check_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = lora_scaling(self.config.rank, self.config.alpha)
        if "lora_scaling" not in tensors or abs(float(tensors["lora_scaling"]) - expected) > 1e-6 * expected:
            raise StaleArtifact(
                "its adapters were trained with fewclip's earlier LoRA scaling (alpha / rank); "
                "this version applies CLIP-LoRA's alpha / sqrt(rank), so they would score wrongly"
            )
