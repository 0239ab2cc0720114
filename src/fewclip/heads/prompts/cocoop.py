"""CoCoOp (conditional context optimisation): CoOp's context plus a per-image shift from a meta-net.

meta-net: Linear(d -> d/16) -> ReLU -> Linear(-> text width) on the normalised image feature; its
output is added to every context token, so each image gets its own prompts for every class. All
(image, class) prompts of a step go through the text tower in chunked batched calls; under autograd
each chunk is checkpointed, so peak memory is bounded by one chunk (``max_prompts_per_call``), and the
batch size is a free parameter (the reference trains at batch 1).

Follows the released code, KaiyangZhou/CoOp ``trainers/cocoop.py`` (tested step for step in
``tests/reference/test_cocoop.py``): ``PromptLearner`` (context from "a photo of a", 4 vectors; the meta-net
above, PyTorch's default initialisation), ``CustomCLIP.forward`` (each image's shifted context in every
class prompt, logit scale times the cosine, cross-entropy) and Dassl's loop as
``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` sets it: SGD lr 0.002, momentum 0.9, weight
decay 5e-4, 10 epochs, one warm-up epoch at a constant 1e-5, then the cosine stepped once per epoch, each
epoch's last partial batch dropped.

Deviations:

- batch: 8 images per step by default, the reference 1 (one SGD step per image, 8 times the steps);
  ``batch_size: 1`` follows it, as ``configs/coop_suite`` does.
- precision: the reference trains in fp16 (its config sets ``PREC: "fp16"``, the meta-net included);
  fewclip in fp32 by default, without fp16's rounding, and portable to CPUs.
- the meta-net's and any random context's numbers: drawn from generators seeded with the task's seed, the
  reference's after Dassl seeds the global one: the same distributions, other numbers.
- the images: cached features (one fixed view per image, or ``augment_views`` cached random crops +
  flips); the reference augments every image afresh each epoch.
- the kept model: ``select`` / ``calibrate`` as CoOp's (``select: last`` keeps the reference's last epoch).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint as grad_checkpoint

from fewclip.backbones.protocol import Backbone
from fewclip.backbones.device import autocast_for
from fewclip.heads.base import FeatureSet, Task, normalize
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.heads.prompts.coop import CoOpPrompts
from fewclip.heads.prompts.config import PromptLearningConfig
from fewclip.heads.prompts.learning import assemble, check_prompts_fit, checked_fit_inputs, starting_context
from fewclip.training.features_loop import unit_options, train_on_features
from fewclip.heads.prompts.base import PromptHeadBase
from fewclip.heads.registry import register_head


class CoCoOpConfig(PromptLearningConfig):
    """The `cocoop` block, with the reference CoCoOp defaults (batch size is free here)."""

    n_ctx: int = Field(4, ge=1, description="Context tokens; with ctx_init, its word count.")
    ctx_init: str | None = Field("a photo of a", description="Words whose token embeddings initialise the context.")
    epochs: int | dict[int, int] = Field(10, description="Epochs, or {shots: epochs} per shot budget.")
    batch_size: int = Field(8, ge=1, description="Images per step; every image runs all class prompts.")
    max_prompts_per_call: int = Field(1024, ge=1, description="Memory budget: prompts per text-tower call.")


class CoCoOpParams(nn.Module):
    def __init__(self, ctx: torch.Tensor, image_dim: int) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx)  # (n_ctx, w)
        hidden = max(image_dim // 16, 1)
        self.meta_net = nn.Sequential(nn.Linear(image_dim, hidden), nn.ReLU(), nn.Linear(hidden, ctx.shape[-1]))


@register_head
class CoCoOpHead(PromptHeadBase):
    name = "cocoop"
    paper = "Zhou et al., CVPR 2022 (CoCoOp)"
    official_code = "KaiyangZhou/CoOp"
    paper_selection = "validation-free"  # Dassl's last epoch, fixed hyper-parameters (scripts/cocoop/*.sh), as CoOp
    config_key = "cocoop"
    Config = CoCoOpConfig
    published_as = "CoCoOp"
    needs_text_at_predict = True
    has_differentiable_logits = True

    # -- the model -------------------------------------------------------------------------------

    def _conditional_logits(
        self, params: CoCoOpParams, prompts: CoOpPrompts, features: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """(b, d) image features -> (b, C) logits, every (image, class) prompt through the tower.

        Each image's [SOS][shifted context] prefix is shared by its C prompts and computed once; images
        go through the tower in chunks of at most ``max_prompts_per_call`` prompts (checkpointed under
        autograd when there are several, so memory is bounded by one chunk).
        """
        image = normalize(features.float()).to(prompts.device)
        shifted = (
            params.ctx.to(prompts.device)[None] + params.meta_net.to(prompts.device)(image)[:, None]
        )  # (b, n_ctx, w)
        n_classes = prompts.base.shape[0]
        per_chunk = max(1, self.config.max_prompts_per_call // n_classes)
        outputs = []
        # one chunk holds its activations either way: recomputing it in backward would only cost time
        checkpointed = torch.is_grad_enabled() and shifted.shape[0] > per_chunk
        for start in range(0, shifted.shape[0], per_chunk):
            chunk = shifted[start : start + per_chunk]
            if checkpointed:
                outputs.append(grad_checkpoint(self._tower_call, prompts, chunk, use_reentrant=False))
            else:
                outputs.append(self._tower_call(prompts, chunk))
        text = normalize(torch.cat(outputs).float())  # (b, C, d)
        return (scale * torch.einsum("bd,bcd->bc", image, text)).cpu()

    @staticmethod
    def _tower_call(prompts: CoOpPrompts, shifted: torch.Tensor) -> torch.Tensor:
        """(g, n_ctx, w) per-image contexts -> (g, C, d) text features of every class prompt."""
        n_images, n_classes = shifted.shape[0], prompts.base.shape[0]
        shared = prompts.layout.shared_prefix
        eot = prompts.layout.eot_positions.to(prompts.device)
        with autocast_for(prompts.precision, prompts.device):
            full = assemble(
                prompts.base[None],
                shifted[:, None].expand(-1, n_classes, -1, -1),
                prompts.layout.ctx_positions.to(prompts.device),
            )  # (g, C, L, w)
            if shared > 1:
                out = prompts.tower.encode_shared_prefix(full[:, 0, :shared], full[:, :, shared:], eot - shared)
            else:
                out = prompts.tower(full.flatten(0, 1), eot.repeat(n_images)).unflatten(0, (n_images, n_classes))
        return out.float()

    # -- the contract ----------------------------------------------------------------------------

    def check(self, task: Task) -> None:
        """Fail before any training if a class prompt cannot fit the model's positions."""
        check_prompts_fit(task, self.config, "end", "cocoop")

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "CoCoOpHead":
        backbone, train = checked_fit_inputs(self, task, train)
        ctx = starting_context(self, backbone, task)
        cfg, n_classes = self.config, len(task.class_names)
        torch.manual_seed(task.seed)  # the meta-net's default init draws from the global generator
        params = CoCoOpParams(ctx, train.features.shape[1])
        self.attach(backbone, task.class_names, cfg.n_ctx)
        scale = backbone.logit_scale

        def logits_fn(features: torch.Tensor) -> torch.Tensor:
            return self._conditional_logits(params, self.prompts_, features, scale)

        history, selection, _ = train_on_features(
            params,
            logits_fn,
            train,
            val,
            n_classes,
            cfg.settings(task.shots),
            **unit_options(task, cfg),
        )
        self.history_, self.selection_, self.best_epoch_, self.n_ctx_ = history, selection, selection.epoch, cfg.n_ctx
        self.params_ = params.requires_grad_(False)
        self.logit_scale_ = torch.tensor(scale)
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def attach(self, backbone: Backbone, class_names: list[str], n_ctx: int | None = None) -> "CoCoOpHead":
        """Bind the frozen text tower and class names (needed to predict: prompts depend on the image)."""
        n_ctx = n_ctx if n_ctx is not None else self.n_ctx_
        self.prompts_ = CoOpPrompts(backbone, list(class_names), n_ctx, "end", self.config.precision, "cocoop")
        return self

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "CoCoOpHead":
        head = CoCoOpHead(self.config)
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        return head.attach(backbone, class_names)

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) logits before temperature scaling, without gradients."""
        if not hasattr(self, "prompts_"):
            raise RuntimeError("cocoop: call attach(backbone, class_names) after loading, before predicting")
        with torch.no_grad():
            chunks = [
                self._conditional_logits(self.params_, self.prompts_, features[i : i + 256], float(self.logit_scale_))
                for i in range(0, features.shape[0], 256)
            ]
        return torch.cat(chunks) if chunks else torch.zeros(0, self.prompts_.base.shape[0])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) temperature-scaled logits (same argmax as the uncalibrated ones)."""
        return self.uncalibrated_logits(features) / self.temperature_

    def differentiable_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits with autograd on (for saliency); ``logits`` runs without gradients."""
        return (
            self._conditional_logits(self.params_, self.prompts_, features, float(self.logit_scale_))
            / self.temperature_
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"params.{k}": v for k, v in self.params_.state_dict().items()}
        tensors["logit_scale"] = self.logit_scale_.reshape(1)
        tensors["temperature"] = self.temperature_.reshape(1)
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        ctx = tensors["params.ctx"]
        image_dim = tensors["params.meta_net.0.weight"].shape[1]
        self.params_ = CoCoOpParams(ctx.clone(), image_dim).requires_grad_(False)
        self.params_.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("params.")})
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.temperature_ = tensors.get("temperature", torch.ones(1)).reshape(())  # heads saved before calibration: 1
        self.n_ctx_ = int(ctx.shape[0])
        self.best_epoch_ = meta.get("best_epoch")
        self.history_ = meta.get("history", [])

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params_.parameters()) if hasattr(self, "params_") else 0
