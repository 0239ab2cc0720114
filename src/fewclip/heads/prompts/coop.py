"""CoOp (context optimisation): learned context vectors in front of (or around) the class name,
through the frozen text tower. CLIP stays frozen; only the context trains (16 x 512 = 8,192
parameters for ViT-B/32 with shared context). A trained CoOp reduces to fixed class text features,
so predicting is one matmul.

Follows the released code, KaiyangZhou/CoOp ``trainers/coop.py`` (tested step for step in
``tests/reference/test_coop.py``): ``PromptLearner`` (N(0, 0.02) context, or ``ctx_init``'s word vectors
whose count is the context length; shared or class-specific; class token at the end, middle or front, the
name tokenised with its period), ``CustomCLIP.forward`` (logit scale times the cosine), cross-entropy, and
Dassl's loop as ``configs/trainers/CoOp/*.yaml`` set it: SGD lr 0.002, momentum 0.9, weight decay 5e-4,
batch 32, one warm-up epoch at a constant 1e-5, then the cosine stepped once per epoch, each epoch's last
partial batch dropped.

Deviations:

- precision: the reference trains in fp16 (``TRAINER.COOP.PREC`` defaults to "fp16" in ``train.py``);
  fewclip in fp32 by default, the same computation without fp16's rounding of the context and its
  updates, and portable to CPUs (``precision`` autocasts the text tower; the context stays fp32).
- epochs: the default is 50 (ImageNet's schedule, and the 1-shot one); the reference's few-shot runs
  train 50 / 100 / 100 / 200 / 200 epochs at 1 / 2 / 4 / 8 / 16 shots (``COOP.md``): ``epochs: {1: 50,
  2: 100, 4: 100, 8: 200, 16: 200}``, as ``configs/coop_suite`` sets it.
- the random context is drawn from a generator seeded with the task's seed, the reference's from the
  global generator after Dassl seeds it: the same distribution, other numbers.
- the images: fewclip trains on cached features (one fixed view per image, or ``augment_views`` cached
  random crops + flips); the reference augments every image afresh each epoch.
- the kept model: ``select`` (default ``auto``) may keep an earlier epoch when val is large enough, and
  ``calibrate`` temperature-scales the logits (argmax unchanged); the reference keeps the last epoch
  (Dassl's ``TEST.FINAL_MODEL`` "last_step"): ``select: last`` follows it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from fewclip.backbones.protocol import Backbone
from fewclip.backbones.device import autocast_for
from fewclip.heads.base import FeatureSet, Task, normalize
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.heads.prompts.config import PromptLearningConfig
from fewclip.heads.prompts.learning import (
    assemble,
    build_layout,
    check_prompts_fit,
    checked_fit_inputs,
    starting_context,
)
from fewclip.training.features_loop import unit_options, train_on_features
from fewclip.heads.prompts.base import PromptHeadBase
from fewclip.heads.registry import register_head
from fewclip.training.selection import SELECT_HELP, SelectRule


class CoOpConfig(PromptLearningConfig):
    """The `coop` block, with the reference CoOp defaults (the shared keys: ``PromptLearningConfig``)."""

    class_token_position: Literal["end", "middle", "front"] = Field(
        "end",
        description="Where the class name sits among the context tokens. As the reference, the name is "
        "tokenised with the prompt's period (name + '.'), so ctx_init 'a photo of a' starts exactly at "
        "zero-shot's 'a photo of a {name}.'; middle / front put the context after the name's own token count.",
    )
    class_specific_context: bool = Field(
        False, description="One context per class (C x n_ctx x width); cannot be combined with ctx_init."
    )
    select: SelectRule = Field("auto", description=SELECT_HELP + " The last epoch's context is saved too.")

    @model_validator(mode="after")
    def _init_is_shared(self) -> "CoOpConfig":
        if self.ctx_init and self.class_specific_context:
            raise ValueError(
                "ctx_init and class_specific_context: true cannot be combined (as in the reference CoOp, "
                "ctx_init wins there and gives one shared context); drop ctx_init for per-class contexts, "
                "or set class_specific_context: false"
            )
        return self


class ContextParams(nn.Module):
    """The trainable part of CoOp: context vectors (n_ctx, w) or (C, n_ctx, w)."""

    def __init__(self, ctx: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class CoOpPrompts:
    """Class prompts with learned context -> class text features, on a frozen tower."""

    def __init__(
        self, backbone: Backbone, class_names: list[str], n_ctx: int, position: str, precision: str, key: str
    ) -> None:
        self.tower = backbone.prompt_tower()
        self.device = backbone.device
        self.layout = build_layout(backbone.tokens, class_names, n_ctx, position, self.tower.max_positions, key)  # type: ignore[arg-type]
        with torch.no_grad():
            self.base = self.tower.embed_tokens(self.layout.token_ids.to(self.device)).detach()  # (C, L, w)
        self.precision = precision

    def features(self, ctx: torch.Tensor) -> torch.Tensor:
        """ctx (n_ctx, w) or (C, n_ctx, w) -> (C, d) normalised class text features."""
        ctx = ctx.to(self.device)
        shared_context = ctx.dim() == 2
        if shared_context:
            ctx = ctx.unsqueeze(0).expand(self.base.shape[0], -1, -1)
        shared = self.layout.shared_prefix if shared_context else 1
        with autocast_for(self.precision, self.device):
            prompts = assemble(self.base, ctx, self.layout.ctx_positions.to(self.device))  # (C, L, w)
            eot = self.layout.eot_positions.to(self.device)
            if shared > 1:  # the shared [SOS][context] part runs once, not once per class
                out = self.tower.encode_shared_prefix(prompts[:1, :shared], prompts[None, :, shared:], eot - shared)[0]
            else:
                out = self.tower(prompts, eot)
        return normalize(out.float()).cpu()


class ClassTextScores:
    """How a prompt learner that reduces to fixed class text features scores (CoOp and its kin, TCP): CLIP's logits
    against ``class_text_features_`` (C, d), then its calibration temperature. Listed before ``HeadBase``."""

    logit_scale_: torch.Tensor
    class_text_features_: torch.Tensor
    temperature_: torch.Tensor

    def uncalibrated_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) CLIP logits against the learned class text features, before temperature scaling."""
        return self.logit_scale_ * normalize(features) @ self.class_text_features_.T

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n, C) temperature-scaled logits (same argmax as the uncalibrated ones)."""
        return self.uncalibrated_logits(features) / self.temperature_


@register_head
class CoOpHead(ClassTextScores, PromptHeadBase):
    name = "coop"
    paper = "Zhou et al., IJCV 2022 (CoOp)"
    official_code = "KaiyangZhou/CoOp"
    paper_selection = "validation-free"  # Dassl's TEST.FINAL_MODEL last_step (scripts/coop/main.sh)
    config_key = "coop"
    Config = CoOpConfig
    published_as = "CoOp"

    def check(self, task: Task) -> None:
        """Fail before any training if a class prompt cannot fit the model's positions."""
        check_prompts_fit(task, self.config, self.config.class_token_position, self.name)

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "CoOpHead":
        backbone, train = checked_fit_inputs(self, task, train)
        ctx = starting_context(self, backbone, task, self.config.class_specific_context)
        cfg, n_classes = self.config, len(task.class_names)
        prompts = CoOpPrompts(backbone, task.class_names, cfg.n_ctx, cfg.class_token_position, cfg.precision, self.name)
        params = ContextParams(ctx)
        scale = backbone.logit_scale

        def logits_fn(features: torch.Tensor) -> torch.Tensor:
            return scale * normalize(features) @ prompts.features(params.ctx).T

        settings = cfg.settings(task.shots)
        history, selection, last = train_on_features(
            params,
            logits_fn,
            train,
            val,
            n_classes,
            settings,
            **unit_options(task, cfg),
            train_step=self.train_step(task, prompts, params, scale),
        )
        self.history_, self.selection_, self.best_epoch_ = history, selection, selection.epoch
        self.n_ctx_ = cfg.n_ctx
        self.ctx_ = params.ctx.detach().clone()
        self.last_ctx_ = last["ctx"]
        self.logit_scale_ = torch.tensor(scale)
        with torch.no_grad():
            self.class_text_features_ = prompts.features(self.ctx_)
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def train_step(
        self, task: Task, prompts: CoOpPrompts, params: ContextParams, scale: float
    ) -> Callable[[torch.Tensor, torch.Tensor], float] | None:
        """One step's loss and gradient (None: plain cross-entropy); KgCoOp and ProGrad supply theirs."""
        return None

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "CoOpHead":
        """The same learned context on other class names (base-to-new evaluation)."""
        head = type(self)(self.config)
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        prompts = CoOpPrompts(
            backbone, class_names, self.n_ctx_, self.config.class_token_position, self.config.precision, self.name
        )
        if self.ctx_.dim() == 3:
            raise ValueError("coop: class-specific contexts cannot be transferred to new classes")
        with torch.no_grad():
            head.class_text_features_ = prompts.features(self.ctx_)
        return head

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "ctx": self.ctx_,
            "last_ctx": self.last_ctx_,
            "class_text_features": self.class_text_features_,
            "logit_scale": self.logit_scale_.reshape(1),
            "temperature": self.temperature_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.ctx_, self.last_ctx_ = tensors["ctx"], tensors["last_ctx"]
        self.class_text_features_ = tensors["class_text_features"]
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.temperature_ = tensors.get("temperature", torch.ones(1)).reshape(())  # heads saved before calibration: 1
        self.n_ctx_ = int(self.ctx_.shape[-2])
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return int(self.ctx_.numel()) if hasattr(self, "ctx_") else 0
