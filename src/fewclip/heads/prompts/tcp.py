"""TCP (Yao et al., CVPR 2024, "TCP: Textual-based Class-aware Prompt tuning for Visual-Language Model"): CoOp's
learned context, plus class-aware tokens that a small network, the Textual Knowledge Embedding (TKE), maps from
each class's frozen zero-shot text embedding and that replace the context rows at a middle layer of the text
tower; trained with KgCoOp's text-consistency term. CLIP stays frozen and only text-side tensors train, so it
trains on cached image features; a trained TCP reduces to fixed class text features (predicting is one matmul),
and any class name gets its tokens from its own text embedding (``transfer``, base-to-new). Inserting tokens
inside the text tower is the backbone's ``deep_prompts`` capability (``DeepPromptTowers.text_features`` with
per-class rows at one layer); a library without it is refused when the config is loaded.

Follows the released code, htyao89/Textual-based_Class-aware_prompt_tuning ``trainers/tcp.py`` and
``trainers/clip_text/model.py`` (tested step for step in ``tests/reference/test_tcp.py``):

- the prompt (``PromptLearner.__init__``, CTX_INIT False in ``configs/trainers/TCP/vit_b16_ep100_ctxv1.yaml``,
  N_CTX 4 in ``scripts/base2new_train.sh``): ``[SOS] [ctx]*4 name. [EOT]``, the 4 shared context vectors drawn
  from N(0, 0.02);
- the TKE (``PromptLearner.meta_net``): Linear(d, d / 4) -> QuickGELU -> Linear(d / 4, 4 x width), PyTorch's
  default initialisation, applied to the normalised zero-shot text features ``w_c^clip`` of the classes; its
  output, (C, 4, width), is each class's class-aware tokens;
- the insertion (``ResidualAttentionBlock_MaPLe.forward``, ``layers=[8]``, ``weights=[1.0]``): before text layer
  8 (0-based, of ViT-B/16's 12) the hidden rows 1..4 (the context's) are replaced by the class's tokens
  (``1.0 * tokens + 0.0 * rows``); the other layers run as CLIP's; ``TextEncoder.forward``'s ``ln_final``, EOT
  row and projection;
- the loss (``CustomCLIP.forward``): the model's ``logit_scale.exp()`` times the cosine, cross-entropy, plus
  ``8.0 * (1 - mean_c cos(w_c, w_c^clip))``, KgCoOp's term with its weight written in the code (the script's
  ``TRAINER.COOP.W`` 1.0 reaches the text encoder, whose ``weights=[1.0]`` overrides it: it changes nothing);
- the schedule (the yaml, Dassl's defaults and the README's change to Dassl's optimiser): Adam, lr 0.002, betas
  (0.9, 0.999), eps 1e-3, weight decay 5e-4 (L2); batch 32, 50 epochs, one warm-up epoch at a constant 1e-5,
  then the cosine stepped once per epoch; each epoch's last partial batch dropped (Dassl's loader).

Where fewclip differs, and why:

- the layer: ``layer: null`` (the default) is two thirds up the text tower, ``layers * 2 // 3``, which is the
  reference's 8 on every 12-layer CLIP text tower (ViT-B/32, ViT-B/16, ViT-L/14) and still a middle layer on
  smaller or larger towers (the world's and the tests' tiny CLIPs), where the reference's fixed 8 would not
  exist or would sit low. ``layer: 8`` fixes it.
- widths: the reference hard-codes 4 class-aware tokens of width 512 (ViT-B/16's); here there are ``n_ctx``
  tokens (4 by default: the reference's N_CTX) of the tower's width, so they always replace the context rows.
- the template: the reference appends a suffix per dataset to the learned prompt (``CUSTOM_TEMPLATES``: "X X X
  X {}, a type of pet.") and encodes ``w_c^clip`` from one hand-written template per dataset
  (``CUSTOM_TEMPLATES_ori``); fewclip's learned prompt is ``[ctx] name.`` on every dataset (as CoOp's and
  KgCoOp's) and ``w_c^clip`` is the zero-shot prototype of the run's ``prompts.templates`` (with several, their
  renormalised mean): give the reference's template there to train toward the same features.
- precision: the reference trains in fp16 (CLIP, the context, the TKE and Adam's updates; hence its eps 1e-3);
  fewclip in fp32 by default, portable to CPUs (``precision`` autocasts the text tower). eps stays 1e-3: in
  fp32 it still damps Adam's steps where gradients are small, and the published numbers trained with it.
- the protocols: the release has one script, base-to-new (16 shots, 50 epochs; for ImageNet and SUN397 it then
  evaluates ``--load-epoch 25``, a checkpoint the 50-epoch yaml never writes); the few-shot and cross-dataset
  settings are not released, so every shot budget trains with the same yaml here.
- as CoOp's (``coop.py``): random draws from fewclip's seeded generators, cached features instead of fresh
  augmentation each epoch, and ``select`` / ``calibrate`` (``select: last`` keeps the last epoch, as the
  reference).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from fewclip.backbones.capabilities import require
from fewclip.backbones.device import autocast_for
from fewclip.backbones.protocol import Backbone, DeepPromptTowers
from fewclip.heads.base import FeatureSet, Task, normalize, task_backbone
from fewclip.heads.on_features.zero_shot import ZeroShotHead
from fewclip.heads.prompts.config import PromptLearningConfig
from fewclip.heads.prompts.coop import ClassTextScores
from fewclip.heads.prompts.kgcoop import guidance_term
from fewclip.heads.prompts.learning import (
    assemble,
    build_layout,
    check_prompts_fit,
    checked_fit_inputs,
    starting_context,
)
from fewclip.heads.prompts.base import PromptHeadBase
from fewclip.heads.registry import register_head
from fewclip.training.calibration import calibrate, temperature_tensor
from fewclip.training.features_loop import FeatureTrainSettings, settings_of, train_on_features, unit_options
from fewclip.training.schedule import EpochsByShots


class TcpConfig(PromptLearningConfig):
    """The `tcp` block, with the reference's base-to-new settings (``vit_b16_ep100_ctxv1.yaml``, N_CTX 4)."""

    n_ctx: int = Field(
        4, ge=1, description="Learned context tokens, and the class-aware tokens that replace them at `layer`."
    )
    ctx_init: str | None = Field(
        None,
        description="Words whose token embeddings initialise the context; null: N(0, 0.02) (the reference's "
        "CTX_INIT False).",
    )
    layer: int | None = Field(
        None,
        ge=1,
        description="The text layer (0-based) before which the class-aware tokens replace the context rows; "
        "null: layers * 2 // 3, the reference's 8 on a 12-layer CLIP text tower.",
    )
    reduction: int = Field(4, ge=1, description="The TKE's hidden width: the embedding dim // reduction.")
    weight: float = Field(
        8.0, ge=0, description="Weight of KgCoOp's term, weight * (1 - mean_c cos(w_c, w_c^clip)) (the code's 8.0)."
    )
    epochs: EpochsByShots = Field(50, description="Epochs, or {shots: epochs} per shot budget.")
    batch_size: int = Field(32, ge=1, description="Support images per optimiser step.")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam", description="'adam' (the reference's OPTIM.NAME, with adam_betas, adam_eps); 'sgd' (with momentum)."
    )
    lr: float = Field(0.002, gt=0, description="Learning rate after warm-up (cosine-annealed).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum (optimizer: sgd).")
    weight_decay: float = Field(5e-4, ge=0, description="Weight decay, added to the gradient (L2, as Dassl's).")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="Adam's betas (Dassl's ADAM_BETA1, ADAM_BETA2).")
    adam_eps: float = Field(1e-3, gt=0, description="Adam's eps (the reference's README sets 1e-3 in Dassl).")

    def settings(self, shots: int) -> FeatureTrainSettings:
        # momentum 0 with Adam: the loop's SGD is replaced (``make_optimizer``); its betas are this block's
        return settings_of(self, self.epochs_for(shots), momentum=0.0 if self.optimizer == "adam" else None)

    def make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        """Dassl's ``build_optimizer`` for OPTIM.NAME (adam: with the reference's eps)."""
        if self.optimizer == "adam":
            return torch.optim.Adam(
                params, lr=self.lr, betas=self.adam_betas, eps=self.adam_eps, weight_decay=self.weight_decay
            )
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class QuickGELU(nn.Module):
    """CLIP's GELU approximation, x * sigmoid(1.702 x): the TKE's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TcpParams(nn.Module):
    """What trains: the shared context (n_ctx, width) and the TKE, d -> hidden -> n_ctx x width (PyTorch's default
    Linear init, drawn from the global generator)."""

    def __init__(self, ctx: torch.Tensor, dim: int, hidden: int) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx)
        n_ctx, width = ctx.shape
        self.tke = nn.Sequential(
            OrderedDict(
                [
                    ("linear1", nn.Linear(dim, hidden)),
                    ("gelu", QuickGELU()),
                    ("linear2", nn.Linear(hidden, n_ctx * width)),
                ]
            )
        )

    def class_tokens(self, class_text: torch.Tensor) -> torch.Tensor:
        """(C, d) normalised zero-shot text features -> (C, n_ctx, width) class-aware tokens."""
        tokens: torch.Tensor = self.tke(class_text)
        return tokens.reshape(class_text.shape[0], *self.ctx.shape)


def insert_layer(config: TcpConfig, text_layers: int) -> int:
    """The layer the class-aware tokens enter before: ``layer``, or two thirds up a tower of ``text_layers``."""
    layer = config.layer if config.layer is not None else text_layers * 2 // 3
    if not 1 <= layer < text_layers:
        raise ValueError(
            f"tcp.layer {layer} is not a middle layer of this model's {text_layers}-layer text tower (the tokens "
            f"replace rows before layer 1..{text_layers - 1}); set tcp.layer between 1 and {text_layers - 1}, or "
            "null for two thirds up"
        )
    return layer


class TcpPrompts:
    """The class prompts ``[SOS] [ctx] name. [EOT]`` on the frozen tower, with the class-aware tokens replacing
    the context rows before ``layer`` -> class text features."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: list[str],
        zero_shot_text: torch.Tensor,
        config: TcpConfig,
        layer: int,
    ) -> None:
        self.towers: DeepPromptTowers = backbone.deep_prompt_towers()
        self.device = backbone.device
        self.layout = build_layout(
            backbone.tokens, class_names, config.n_ctx, "end", backbone.max_text_positions, "tcp"
        )
        token_ids = self.layout.token_ids.to(self.device)
        with torch.no_grad():
            self.base = backbone.prompt_tower().embed_tokens(token_ids).detach()  # (C, L, w)
        self.zero_shot_text = zero_shot_text  # (C, d) normalised: the TKE's input and the consistency target
        self.layer, self.precision = layer, config.precision

    def features(self, params: TcpParams) -> torch.Tensor:
        """(C, d) normalised class text features with ``params``' context and class-aware tokens."""
        n_classes = self.base.shape[0]
        ctx = params.ctx.to(self.device).unsqueeze(0).expand(n_classes, -1, -1)
        tokens = params.class_tokens(self.zero_shot_text).to(self.device)  # (C, n_ctx, w)
        deep_text: list[torch.Tensor | None] = [None] * (self.layer - 1) + [tokens]
        with autocast_for(self.precision, self.device):
            prompts = assemble(self.base, ctx, self.layout.ctx_positions.to(self.device))  # (C, L, w)
            out = self.towers.text_features(prompts, self.layout.eot_positions.to(self.device), deep_text)
        return normalize(out.float()).cpu()


def zero_shot_text(backbone: Backbone, class_names: list[str], templates: list[str]) -> torch.Tensor:
    """(C, d) the classes' normalised zero-shot prototypes: the frozen textual knowledge the TKE maps."""
    return ZeroShotHead().fit(Task(list(class_names), list(templates), backbone)).prototypes_


@register_head
class TcpHead(ClassTextScores, PromptHeadBase):
    name = "tcp"
    paper = "Yao et al., CVPR 2024 (TCP)"
    official_code = "htyao89/Textual-based_Class-aware_prompt_tuning"
    paper_selection = "validation-free"  # Dassl's last epoch (TEST.FINAL_MODEL), fixed weight
    config_key = "tcp"
    Config = TcpConfig
    published_as = "TCP"
    needs = frozenset({"deep_prompts"})
    config: TcpConfig

    def check(self, task: Task) -> None:
        """Fail before any training: a backbone without deep prompts, a layer outside the text tower, a class
        prompt that does not fit."""
        backbone = task_backbone(task, self.name)
        require(self.name, self.needs, backbone)
        insert_layer(self.config, backbone.deep_prompt_towers().text_layers)
        check_prompts_fit(task, self.config, "end", self.name)

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "TcpHead":
        backbone, train = checked_fit_inputs(self, task, train)
        cfg = self.config
        ctx = starting_context(self, backbone, task)
        with torch.random.fork_rng(devices=[]):  # the TKE's default init draws from the global generator
            torch.manual_seed(task.seed)
            params = TcpParams(ctx, backbone.dim, max(backbone.dim // cfg.reduction, 1))
        self.layer_ = insert_layer(cfg, backbone.deep_prompt_towers().text_layers)
        self.prompt_templates_ = list(task.templates)
        target = zero_shot_text(backbone, task.class_names, self.prompt_templates_)
        prompts = TcpPrompts(backbone, task.class_names, target, cfg, self.layer_)
        scale = backbone.logit_scale

        def logits_fn(features: torch.Tensor) -> torch.Tensor:
            return scale * normalize(features) @ prompts.features(params).T

        def step(features: torch.Tensor, labels: torch.Tensor) -> float:
            class_text = prompts.features(params)  # (C, d) normalised
            logits = scale * normalize(features) @ class_text.T
            consistency = guidance_term(class_text, target, "code")
            loss = nn.functional.cross_entropy(logits.float(), labels) + cfg.weight * consistency
            loss.backward()
            return float(loss.item())

        history, selection, _ = train_on_features(
            params,
            logits_fn,
            train,
            val,
            len(task.class_names),
            cfg.settings(task.shots),
            **unit_options(task, cfg),
            train_step=step,
            make_optimizer=cfg.make_optimizer,
        )
        self.history_, self.selection_, self.best_epoch_ = history, selection, selection.epoch
        self.params_ = params.requires_grad_(False)
        self.logit_scale_ = torch.tensor(scale)
        with torch.no_grad():
            self.class_text_features_ = prompts.features(params)
        self.calibration_ = calibrate(cfg.calibrate, val, self.uncalibrated_logits)
        self.temperature_ = temperature_tensor(self.calibration_)
        return self

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "TcpHead":
        """The same context and TKE on other class names (base-to-new): each new class's tokens from its own
        zero-shot text embedding (the run's templates)."""
        head = type(self)(self.config)
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_")})
        head.check(Task(list(class_names), self.prompt_templates_, backbone))
        target = zero_shot_text(backbone, class_names, self.prompt_templates_)
        prompts = TcpPrompts(backbone, list(class_names), target, self.config, self.layer_)
        with torch.no_grad():
            head.class_text_features_ = prompts.features(self.params_)
        return head

    def state_dict(self) -> dict[str, torch.Tensor]:
        tensors = {f"params.{k}": v for k, v in self.params_.state_dict().items()}
        return tensors | {
            "class_text_features": self.class_text_features_,
            "logit_scale": self.logit_scale_.reshape(1),
            "temperature": self.temperature_.reshape(1),
            "layer": torch.tensor([self.layer_]),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        learned = {k[len("params.") :]: v for k, v in tensors.items() if k.startswith("params.")}
        hidden, dim = learned["tke.linear1.weight"].shape
        with torch.random.fork_rng(devices=[]):  # the init is overwritten: leave the global generator as it was
            self.params_ = TcpParams(learned["ctx"].clone(), int(dim), int(hidden))
        self.params_.load_state_dict(learned)
        self.params_.requires_grad_(False)
        self.class_text_features_ = tensors["class_text_features"]
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.temperature_ = tensors["temperature"].reshape(())
        self.layer_ = int(tensors["layer"].item())
        self.prompt_templates_ = list(meta.get("templates", []))
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        return sum(int(p.numel()) for p in self.params_.parameters()) if hasattr(self, "params_") else 0
