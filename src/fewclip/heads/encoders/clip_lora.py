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

from typing import Any

import torch
from torch import nn
from pydantic import Field

from fewclip.backbones.capabilities import require
from fewclip.backbones.protocol import Backbone, TunableTowers
from fewclip.heads.base import ImageSet, Task, normalize
from fewclip.heads.encoders.config import EncoderTrainingConfig
from fewclip.heads.artifacts import StaleArtifact
from fewclip.heads.encoders.lora_layers import (
    adapter_state,
    class_text_features,
    image_features,
    is_lora,
    load_adapter,
    lora_scaling,
    lora_towers,
)
from fewclip.heads.prompts.lengths import check_template_task
from fewclip.heads.encoders.base import EncoderHeadBase
from fewclip.heads.registry import register_head


class ClipLoraConfig(EncoderTrainingConfig):
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
    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (cosine to min_lr over all iterations).")
    min_lr: float = Field(1e-6, ge=0, description="The cosine schedule's final learning rate.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    iterations_per_shot: int = Field(500, ge=1, description="Optimiser steps = iterations_per_shot x shots.")
    drop_last: bool = Field(
        False,
        description="Drop each epoch's last partial batch when there are at least "
        "batch_size training images (Dassl's loader); false: train on it too, as CLIP-LoRA's "
        "loader does (drop_last=False).",
    )


class TunedLogits(nn.Module):
    """The head's tuned CLIP as a module (pixels -> logits), what the trainer (and DDP) wraps."""

    def __init__(self, head: "ClipLoraHead") -> None:
        super().__init__()
        self.model = head.model_
        self.head = [head]  # a list: not registered as a submodule

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head[0].train_logits(pixels)


@register_head
class ClipLoraHead(EncoderHeadBase):
    name = "clip_lora"
    paper = "Zanella & Ben Ayed, CVPR-W 2024 (CLIP-LoRA)"
    official_code = "MaxZanella/CLIP-LoRA"
    published_as = "CLIP-LoRA"
    paper_selection = "validation-free"  # run_utils.py VALIDATION = False: the last iteration
    config_key = "clip_lora"
    Config = ClipLoraConfig
    needs = frozenset({"lora_targets"})
    config: ClipLoraConfig

    def check(self, task: Task) -> None:
        if task.backbone is not None:
            require(self.name, self.needs, task.backbone)
        check_template_task(Task(task.class_names, task.templates[:1], task.backbone), self.name)

    @property
    def model_(self) -> nn.Module:
        """The tuned copy of the backbone's model (the library's own module, carrying the adapters)."""
        return self.towers_.module

    def _build(self, backbone: Backbone, seed: int) -> None:
        cfg = self.config
        self.towers_: TunableTowers = lora_towers(backbone, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets, seed)
        self.backbone_, self.device_ = backbone, backbone.device

    def fit(self, task: Task, train: ImageSet | None = None, val: ImageSet | None = None) -> "ClipLoraHead":
        if task.backbone is None:
            raise ValueError("clip_lora needs the backbone (Task.backbone is None)")
        if not isinstance(train, ImageSet) or len(train) == 0:
            raise ValueError("clip_lora trains on images: fit needs an ImageSet of training images")
        self.check(task)
        cfg = self.config
        self.template_ = task.templates[0]
        self._build(task.backbone, task.seed)
        self.prompts_ = [self.template_.format(name) for name in task.class_names]
        self.logit_scale_ = torch.tensor(task.backbone.logit_scale)
        plan = cfg.plan(
            cfg.iterations_per_shot * max(task.shots, 1), lr=cfg.lr, min_lr=cfg.min_lr, weight_decay=cfg.weight_decay
        )
        if cfg.gradient_checkpointing:
            self.towers_.checkpoint_activations()
        with torch.random.fork_rng(devices=[]):  # dropout draws from torch's RNG: seeded, and saved in checkpoints
            torch.manual_seed(task.seed + task.ranks.rank * 1_000_003)  # each rank its own dropout stream
            self.train_net(TunedLogits(self), task, task.backbone, train, val, plan, template=task.templates[0])
        self.model_.eval()
        return self

    def train_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, C) with autograd through both tuned towers (text re-encoded each step, as the
        reference does)."""
        text = class_text_features(self.towers_, self.prompts_)
        return self.logit_scale_.to(self.device_) * image_features(self.towers_, pixels) @ text.T

    def _tune(self, backbone: Backbone) -> None:
        """The tuned model on ``backbone``: rebuilt from the adapter weights once (after ``load_head``), kept
        while the backbone stays the same one."""
        if vars(self).get("backbone_") is backbone:
            return
        adapter = self.adapter_  # read before _build replaces model_ (a fitted head's adapter lives in it)
        self._build(backbone, 0)
        load_adapter(self.model_, adapter)
        self.model_.eval()

    def attach(self, backbone: Backbone, class_names: list[str]) -> None:
        """Score ``class_names`` with the tuned model on ``backbone`` (after ``load_head``)."""
        self._tune(backbone)
        self.prompts_ = [self.template_.format(name) for name in class_names]

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "ClipLoraHead":
        """The head for other class names (base-to-new): the same tuned towers -- one model, shared with this
        head, not copied -- with the tuned text tower encoding the new names in the head's template."""
        self._tune(backbone)
        other = ClipLoraHead(self.config)
        other.__dict__.update({key: value for key, value in vars(self).items() if key != "config"})
        other.prompts_ = [self.template_.format(name) for name in class_names]
        return other

    @torch.no_grad()
    def image_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) preprocessed images -> (n, C) logits through the tuned towers, on the CPU."""
        self.model_.eval()
        logits = self.logit_scale_.to(self.device_) * image_features(self.towers_, pixels) @ self.scoring_text().T
        return logits.float().cpu()

    @torch.no_grad()
    def scoring_text(self) -> torch.Tensor:
        """(C, d) class text features through the tuned text tower (eval mode), encoded once per class list and
        adapter state: the key holds the prompts and every LoRA tensor's version counter, which any in-place
        change (an optimiser step, ``load_adapter``) bumps."""
        lora = tuple(p._version for n, p in self.model_.named_parameters() if is_lora(n))
        key = (id(self.model_), tuple(self.prompts_), lora)
        cached = vars(self).get("text_cache_")
        if cached is None or cached[0] != key:
            self.model_.eval()
            self.text_cache_ = (key, class_text_features(self.towers_, self.prompts_))
        return self.text_cache_[1]

    def image_saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C) logits with autograd and the patch tokens entering the tuned vision tower's last layer,
        (n, g, g, width), on one graph: what ``fewclip.saliency`` backpropagates through (the backbone's
        ``saliency_pass`` for the frozen towers). The class texts are constants here: the map is the image's."""
        self.model_.eval()
        features, activations = self.towers_.saliency_pass(pixels)
        text = self.scoring_text()
        return self.logit_scale_.to(self.device_) * normalize(features) @ text.T, activations

    @property
    def adapter_(self) -> dict[str, torch.Tensor]:
        return self.__dict__.get("saved_adapter_") or adapter_state(self.model_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        scaling = torch.tensor([lora_scaling(self.config.rank, self.config.alpha)])  # what the adapters were trained at
        return {**self.adapter_, "logit_scale": self.logit_scale_.reshape(1), "lora_scaling": scaling}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        expected = lora_scaling(self.config.rank, self.config.alpha)
        if "lora_scaling" not in tensors or abs(float(tensors["lora_scaling"]) - expected) > 1e-6 * expected:
            raise StaleArtifact(
                "its adapters were trained with fewclip's earlier LoRA scaling (alpha / rank); "
                "this version applies CLIP-LoRA's alpha / sqrt(rank), so they would score wrongly"
            )
        self.saved_adapter_ = {k: v for k, v in tensors.items() if k not in ("logit_scale", "lora_scaling")}
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.template_ = meta.get("templates", ["a photo of a {}."])[0]
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return (
            sum(int(v.numel()) for v in self.adapter_.values())
            if ("towers_" in vars(self) or "saved_adapter_" in vars(self))
            else 0
        )
