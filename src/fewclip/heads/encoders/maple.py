"""MaPLe (Khattak et al., CVPR 2023, "MaPLe: Multi-modal Prompt Learning"): learned prompts in the first
``depth`` layers of both towers, the vision prompts projected from the text prompts (the coupling), trained end
to end on augmented images with CLIP frozen. The learned tensors: ``maple_prompts``; how they enter the towers
is the backbone's (``Backbone.deep_prompt_towers``, the ``deep_prompts`` capability: ``backbones.hf_deep_prompts``
for a Hugging Face CLIP, ``backbones.open_clip_towers`` for OpenCLIP, whose vision prompts need a ViT; a library
without it is refused when the config is loaded). The saved head holds only the learned tensors (+ the logit
scale); ``attach`` rebuilds the prompted towers on the run's backbone, and ``transfer`` scores other class names
with the same prompts (base-to-new).

What follows the reference code (github.com/muzairkhattak/multimodal-prompt-learning, trained through
Dassl.pytorch; checked step by step against an independent re-implementation in
``tests/reference/test_maple.py``):

- the base-to-new setting's defaults (``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``): 2 context
  tokens initialised from the first tokens of "a photo of a" (the prompt is "a photo of a {name}." with its
  first ``n_ctx`` tokens after SOS learned, the rest fixed: ``trainers/maple.py``
  ``MultiModalPromptLearner``), prompt depth 9, deep text prompts drawn from N(0, 0.02), the projections with
  torch's default Linear init, the deep ones all starting equal (``_get_clones``); batch 4, 5 epochs;
- the prompted towers (``clip/model.py`` ``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``) and the
  loss (``CustomCLIP.forward``: the model's ``logit_scale.exp()`` times the cosine, mean cross-entropy), the
  class texts re-encoded at every step;
- Dassl's training: SGD lr 0.0035, momentum 0.9, weight decay 5e-4 (``dassl/config/defaults.py``), one
  warm-up epoch at a constant 1e-5, then a cosine over the 5 epochs with the rate set once per epoch
  (``build_lr_scheduler``, stepped after an epoch's last batch: ``encoder_schedule``); the train loader drops
  an epoch's last partial batch when there are at least ``batch_size`` images (``drop_last``,
  ``dassl/data/data_manager.py`` ``build_data_loader``); random resized crop + flip; the last epoch's prompts.

Where it deviates, and why:

- precision: the reference trains in fp16 (``PREC: "fp16"``: CLIP, the context and the shallow projection,
  which it casts with ``self.proj.half()``, in half precision, and SGD steps on them so); the default here is
  fp32, which runs anywhere, CPU included (``precision: bf16`` / ``fp16`` autocast on a GPU).
- widths: the reference hard-codes ViT-B/16's 512 (text) and 768 (vision) for the deep prompts and the
  projections; here they are the model's own widths (the same on ViT-B/16). ViT-B/16: 3,555,072 trained
  parameters, as the reference.
- ``ctx_init``: the reference ignores it when ``N_CTX > 4`` (a random context after "X" placeholders); here it
  initialises the context whenever it is given (and must be at least ``n_ctx`` tokens), so a setting is never
  silently dropped. ``ctx_init: null`` is the random context.
- the kept epoch: ``select`` (default ``auto``: the last epoch unless a validation split of at least 10 images
  a class shows an earlier one clearly better); the reference tests the last epoch.
- the batch order, the crops and the initial random tensors are drawn from fewclip's seeded generators
  (resumable, identical whatever the number of workers or ranks), not in the reference's order from torch's
  global RNG.

Its cross-dataset setting (ImageNet source) is lr 0.0026, 2 epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from fewclip.backbones.capabilities import require
from fewclip.backbones.protocol import Backbone, DeepPromptTowers, TextTokens
from fewclip.heads.base import ImageSet, Task, normalize
from fewclip.heads.encoders.config import EncoderTrainingConfig
from fewclip.heads.encoders.maple_prompts import MaplePrompts
from fewclip.heads.prompts.learning import context_init_ids, name_and_period_ids
from fewclip.training.features_loop import DROP_LAST_HELP, batch_count
from fewclip.heads.encoders.base import EncoderHeadBase
from fewclip.heads.registry import register_head


class MapleConfig(EncoderTrainingConfig):
    """The `maple` block, with the reference MaPLe defaults (base-to-new, ViT-B/16)."""

    depth: int = Field(
        9,
        ge=1,
        description="Prompt depth J: prompts enter layer 0 and replace the previous ones "
        "before layers 1..J-1 of both towers (at most the towers' layer count).",
    )
    n_ctx: int = Field(2, ge=1, description="Learned context tokens (text) and vision prompt tokens per layer.")
    ctx_init: str | None = Field(
        "a photo of a",
        description="The prompt's words before the class name; its first "
        "n_ctx tokens initialise the context and train, the rest stay fixed. null: n_ctx "
        "context vectors drawn from N(0, 0.02) before the name.",
    )
    coupling: bool = Field(
        True,
        description="Vision prompts projected from the text prompts (Linear text width -> "
        "vision width per layer); false: no vision prompts, the image tower stays frozen.",
    )
    lr: float = Field(0.0035, gt=0, description="SGD learning rate after the warm-up (cosine over all epochs).")
    momentum: float = Field(0.9, ge=0, description="SGD momentum.")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay.")
    batch_size: int = Field(
        4,
        ge=1,
        description="Images per optimiser step (the global batch under "
        "torchrun: each of N ranks takes batch_size / N).",
    )
    epochs: int = Field(5, ge=1, description="Epochs over the training images.")
    drop_last: bool = Field(True, description=DROP_LAST_HELP)
    warmup_epochs: int = Field(1, ge=0, description="Epochs at the constant warmup_lr before the cosine.")
    warmup_lr: float = Field(1e-5, gt=0, description="The warm-up's constant learning rate.")


def prompt_token_ids(
    tokens: TextTokens, class_names: list[str], n_ctx: int, ctx_init: str | None, max_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, L) token ids of ``[SOS] ctx_init-tokens name. [EOT]`` (``ctx_init`` null: n_ctx SOS placeholders),
    padded with EOT to the longest, and the (C,) EOT positions. The name and its period are tokenised together
    (as the reference tokenises the whole prompt)."""
    init = context_init_ids(tokens, ctx_init) if ctx_init else [tokens.sos_id] * n_ctx
    if len(init) < n_ctx:
        raise ValueError(
            f"maple.ctx_init {ctx_init!r} is {len(init)} token(s) for this model's tokenizer but "
            f"maple.n_ctx is {n_ctx}: its first n_ctx tokens initialise the context; lower maple.n_ctx "
            "or use a longer ctx_init (or ctx_init: null for a random context)"
        )
    rows = []
    for name in class_names:
        name_ids, period = name_and_period_ids(tokens, name)
        ids = [tokens.sos_id, *init, *name_ids, *period, tokens.eot_id]
        if len(ids) > max_positions:
            raise ValueError(
                f"maple: the prompt for class {name!r} needs {len(ids)} tokens ({len(init)} of "
                f"maple.ctx_init / n_ctx, {len(name_ids)} for the name, SOS, '.', EOT) but the model "
                f"has {max_positions} text positions; shorten the class name (dataset.rename) or "
                "maple.ctx_init"
            )
        rows.append(ids)
    length = max(len(r) for r in rows)
    token_ids = torch.tensor([r + [tokens.eot_id] * (length - len(r)) for r in rows], dtype=torch.long)
    return token_ids, torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)


class MapleNet(nn.Module):
    """Frozen CLIP + MaPLe prompts as a module (pixels -> logits): what the trainer (and DDP) wraps. Only the
    prompts are registered; the frozen towers are held outside the module tree (DDP need not broadcast them)."""

    def __init__(self, backbone: Backbone, class_names: list[str], config: MapleConfig, seed: int) -> None:
        super().__init__()
        self.towers: DeepPromptTowers = backbone.deep_prompt_towers()  # not an nn.Module: not registered
        self.recompute = config.gradient_checkpointing
        self.logit_scale = float(backbone.logit_scale)
        self.n_ctx = config.n_ctx
        token_ids, self.eot_positions = prompt_token_ids(
            backbone.tokens, class_names, config.n_ctx, config.ctx_init, backbone.max_text_positions
        )
        with torch.no_grad():
            self.base_embeds = backbone.prompt_tower().embed_tokens(token_ids.to(backbone.device)).detach()  # (C, L, w)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if config.ctx_init:  # the init words' own embeddings, as the reference
                ctx = self.base_embeds[0, 1 : 1 + config.n_ctx].float().cpu()
            else:
                ctx = torch.randn(config.n_ctx, self.towers.text_width) * 0.02
            self.prompts = MaplePrompts(ctx, config.depth, config.coupling, self.towers.vision_width)
        self.prompts.to(backbone.device)

    def class_text_features(self) -> torch.Tensor:
        """(C, dim) normalised text features of the class prompts with the current prompts."""
        prompts = self.prompts
        embeds = self.base_embeds
        ctx = prompts.ctx.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)
        embeds = torch.cat([embeds[:, :1], ctx, embeds[:, 1 + self.n_ctx :]], dim=1)
        out = self.towers.text_features(embeds, self.eot_positions, list(prompts.deep_text), self.recompute)
        return normalize(out.float())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, dim) normalised image features through the prompted vision tower."""
        shallow, deep = self.prompts.vision()
        return normalize(self.towers.image_features(pixels, shallow, deep, self.recompute).float())

    def saliency_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, dim) normalised image features and the normalised patch tokens the last vision layer attends
        over, (n, g, g, w), on one autograd graph (``DeepPromptTowers.saliency_pass``: the CLS token and the
        appended vision prompts are left out of the grid)."""
        shallow, deep = self.prompts.vision()
        features, patches = self.towers.saliency_pass(pixels, shallow, deep)
        return normalize(features.float()), patches

    def forward(self, pixels: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 3, H, W) -> (n, C) logits; the text is re-encoded (each step, as the reference) unless given."""
        text = self.class_text_features() if text is None else text
        return self.logit_scale * self.image_features(pixels) @ text.T


@register_head
class MapleHead(EncoderHeadBase):
    name = "maple"
    paper = "Khattak et al., CVPR 2023 (MaPLe)"
    official_code = "muzairkhattak/multimodal-prompt-learning"
    paper_selection = "validation-free"  # Dassl's last epoch, fixed hyper-parameters (scripts/maple/*.sh)
    config_key = "maple"
    Config = MapleConfig
    published_as = "MaPLe"
    needs = frozenset({"deep_prompts"})
    needs_advice = {"vision_prompts": "set maple.coupling: false (deep text prompts only)"}
    config: MapleConfig

    @classmethod
    def needs_for(cls, config: MapleConfig) -> frozenset[str]:
        """Deep prompts; with ``coupling``, prompts in the image tower too."""
        return cls.needs | ({"vision_prompts"} if config.coupling else set())

    def check(self, task: Task) -> None:
        """Fail before any training: a backbone without deep prompts, a depth beyond the towers, prompts that do
        not fit."""
        backbone = task.backbone
        if backbone is None:
            raise ValueError("maple needs the backbone (Task.backbone is None)")
        require(self.name, self.needs, backbone)
        cfg = self.config
        towers = backbone.deep_prompt_towers()
        text_layers, vision_layers = towers.text_layers, towers.vision_layers
        if cfg.coupling and not vision_layers:
            raise ValueError(
                f"maple.coupling: vision prompts need a ViT image tower read at its class token; this "
                f"{backbone.config.library} model's image tower takes none: set maple.coupling: false "
                "(deep text prompts only) or choose a ViT model"
            )
        layers = min(text_layers, vision_layers) if cfg.coupling else text_layers
        if cfg.depth > layers:
            raise ValueError(
                f"maple.depth {cfg.depth} exceeds the model's {layers} layers "
                f"(text {text_layers}, vision {vision_layers}); set maple.depth to at most {layers}"
            )
        prompt_token_ids(backbone.tokens, task.class_names, cfg.n_ctx, cfg.ctx_init, backbone.max_text_positions)

    def _build(self, backbone: Backbone, class_names: list[str], seed: int) -> None:
        self.net_ = MapleNet(backbone, class_names, self.config, seed)
        self.device_ = backbone.device

    def fit(self, task: Task, train: ImageSet | None = None, val: ImageSet | None = None) -> "MapleHead":
        if not isinstance(train, ImageSet) or len(train) == 0:
            raise ValueError("maple trains on images: fit needs an ImageSet of training images")
        self.check(task)
        backbone = task.backbone
        assert backbone is not None  # check() refuses a task without one
        cfg = self.config
        self._build(backbone, task.class_names, task.seed)
        self.logit_scale_ = torch.tensor(self.net_.logit_scale)
        steps_per_epoch = batch_count(len(train), cfg.batch_size, cfg.drop_last)
        plan = cfg.plan(
            cfg.epochs * steps_per_epoch,
            lr=cfg.lr,
            min_lr=0.0,
            weight_decay=cfg.weight_decay,
            optimizer="sgd",
            momentum=cfg.momentum,
            warmup_epochs=cfg.warmup_epochs,
            warmup_lr=cfg.warmup_lr,
            steps_per_epoch=steps_per_epoch,
        )
        self.train_net(self.net_, task, backbone, train, val, plan)
        self._finish()
        return self

    def _finish(self) -> None:
        """Eval mode, and the class text features computed once for scoring."""
        self.net_.eval()
        with torch.no_grad():
            self.class_text_features_ = self.net_.class_text_features()

    def attach(self, backbone: Backbone, class_names: list[str]) -> None:
        """Rebuild the prompted towers on ``backbone`` for ``class_names`` from the learned tensors."""
        state = self.prompts_state_
        self._build(backbone, class_names, 0)
        expected = set(self.net_.prompts.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"maple: the saved prompts ({sorted(state)[:4]}...) do not fit this model and maple "
                f"block ({sorted(expected)[:4]}...); the model or the maple block changed: retrain "
                "with `fewclip train`"
            )
        self.net_.prompts.load_state_dict({k: v.to(self.device_) for k, v in state.items()})
        self.net_.logit_scale = float(self.logit_scale_)
        self._finish()

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "MapleHead":
        """The same learned prompts on other class names (base-to-new: the new classes' prompts carry the same
        context, deep prompts and vision prompts)."""
        head = type(self)(self.config)
        skip = {"net_", "class_text_features_", "device_"}
        head.__dict__.update({k: v for k, v in self.__dict__.items() if k.endswith("_") and k not in skip})
        head.saved_prompts_ = self.prompts_state_
        head.attach(backbone, class_names)
        return head

    @torch.no_grad()
    def image_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) preprocessed images -> (n, C) logits through the prompted towers, on the CPU."""
        self.net_.eval()
        logits: torch.Tensor = self.net_(pixels.to(self.device_), self.class_text_features_)
        return logits.float().cpu()

    def image_saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, C) logits with autograd and the patch tokens entering the prompted vision tower's last layer,
        (n, g, g, width), on one graph (what ``fewclip.saliency`` backpropagates through); the class texts are
        constants here."""
        self.net_.eval()
        features, patches = self.net_.saliency_features(pixels.to(self.device_))
        return self.net_.logit_scale * features @ self.class_text_features_.T, patches

    @property
    def prompts_state_(self) -> dict[str, torch.Tensor]:
        """The learned tensors (ctx, deep text prompts, projections), on the CPU."""
        saved: dict[str, torch.Tensor] | None = self.__dict__.get("saved_prompts_")
        if saved is not None:
            return saved
        return {k: v.detach().cpu().clone() for k, v in self.net_.prompts.state_dict().items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            **{f"prompts.{k}": v for k, v in self.prompts_state_.items()},
            "logit_scale": self.logit_scale_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.saved_prompts_ = {k[len("prompts.") :]: v for k, v in tensors.items() if k.startswith("prompts.")}
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        if "net_" not in vars(self) and "saved_prompts_" not in vars(self):
            return 0
        return sum(int(v.numel()) for v in self.prompts_state_.values())
