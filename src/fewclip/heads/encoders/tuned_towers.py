"""What the heads that train inside a copy of both towers share (clip_lora, clip_svd): training end to end on
augmented images with CLIP-LoRA's loop, scoring through the tuned towers, transfer to other class names, and a
saved head that holds only the trained tensors.

A head subclasses ``TunedTowersHead`` and says how its copy is built (``make_towers``: the backbone's
``tunable_towers()`` with the method's trainable parameters in it; only those have ``requires_grad``) and, if
it needs to, what else its saved file holds (``extra_state`` / ``check_saved``). The trained tensors keep the
copy's parameter names, so ``attach`` rebuilds the tuned model from them on the run's backbone.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from fewclip.backbones.capabilities import require
from fewclip.backbones.protocol import Backbone, TunableTowers
from fewclip.heads.base import ImageSet, Task, normalize
from fewclip.heads.encoders.base import EncoderHeadBase
from fewclip.heads.encoders.config import AdamWTrainingConfig
from fewclip.heads.prompts.lengths import check_template_task


def class_text_features(towers: TunableTowers, prompts: Sequence[str]) -> torch.Tensor:
    """(C, d) normalised text features of the class prompts through the (tuned) text tower."""
    return normalize(towers.text_features(prompts))


def image_features(towers: TunableTowers, pixels: torch.Tensor) -> torch.Tensor:
    """(n, d) normalised image features of preprocessed pixels through the (tuned) vision tower."""
    return normalize(towers.image_features(pixels))


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (``requires_grad``), copied to the CPU: what a saved head holds."""
    return {name: param.detach().cpu().clone() for name, param in model.named_parameters() if param.requires_grad}


def load_trained(model: nn.Module, state: dict[str, torch.Tensor], head: str) -> None:
    """Put saved trained tensors into ``model``, a copy built with the same settings; ``head`` names the head in
    the error raised when they do not fit."""
    expected = {name: tuple(param.shape) for name, param in model.named_parameters() if param.requires_grad}
    saved = {name: tuple(value.shape) for name, value in state.items()}
    if saved != expected:
        missing, extra = sorted(set(expected) - set(saved))[:3], sorted(set(saved) - set(expected))[:3]
        reshaped = sorted(n for n in set(saved) & set(expected) if saved[n] != expected[n])[:3]
        raise ValueError(
            f"{head}: saved trained weights do not fit this model (missing {missing}, unexpected {extra}, "
            f"other shapes {reshaped}); the run's model or the {head} block changed: retrain with `fewclip train`"
        )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device, param.dtype))


class TunedLogits(nn.Module):
    """The head's tuned CLIP as a module (pixels -> logits), what the trainer (and DDP) wraps."""

    def __init__(self, head: "TunedTowersHead") -> None:
        super().__init__()
        self.model = head.model_
        self.head = [head]  # a list: not registered as a submodule

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head[0].train_logits(pixels)


class TunedTowersHead(EncoderHeadBase):
    """Trains ``make_towers``'s trainable parameters with CLIP-LoRA's loop (``AdamWTrainingConfig.adamw_plan``):
    each step re-encodes the class prompts (the task's first template) through the tuned text tower and scores
    ``logit_scale * cos`` against the tuned image features. Not registered: a head subclasses it."""

    needs: ClassVar[frozenset[str]] = frozenset({"lora_targets"})
    merges_into_model: ClassVar[bool] = False  # merged_towers(): its training folded into the library's plain model
    config: AdamWTrainingConfig

    def make_towers(self, backbone: Backbone, seed: int) -> TunableTowers:
        """The backbone's ``tunable_towers()`` with the method's trainable parameters in them, on its device."""
        raise NotImplementedError

    def merged_towers(self) -> TunableTowers:
        """A copy of the tuned towers with the training folded into the library's plain model (a head that
        ``merges_into_model``); after ``attach``."""
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors the saved head holds besides the trained ones and ``logit_scale``."""
        return {}

    def check_saved(self, tensors: dict[str, torch.Tensor]) -> None:
        """Raise ``StaleArtifact`` if saved tensors cannot be read as this version reads them."""

    def check(self, task: Task) -> None:
        if task.backbone is not None:
            require(self.name, self.needs, task.backbone)
        check_template_task(Task(task.class_names, task.templates[:1], task.backbone), self.name)

    @property
    def model_(self) -> nn.Module:
        """The tuned copy of the backbone's model (the library's own module, carrying the trained parameters)."""
        return self.towers_.module

    def _build(self, backbone: Backbone, seed: int) -> None:
        self.towers_: TunableTowers = self.make_towers(backbone, seed)
        self.backbone_, self.device_ = backbone, backbone.device

    def fit(self, task: Task, train: ImageSet | None = None, val: ImageSet | None = None) -> "TunedTowersHead":
        if task.backbone is None:
            raise ValueError(f"{self.name} needs the backbone (Task.backbone is None)")
        if not isinstance(train, ImageSet) or len(train) == 0:
            raise ValueError(f"{self.name} trains on images: fit needs an ImageSet of training images")
        self.check(task)
        cfg = self.config
        self.template_ = task.templates[0]
        self._build(task.backbone, task.seed)
        self.prompts_ = [self.template_.format(name) for name in task.class_names]
        self.logit_scale_ = torch.tensor(task.backbone.logit_scale)
        if cfg.gradient_checkpointing:
            self.towers_.checkpoint_activations()
        with torch.random.fork_rng(devices=[]):  # dropout draws from torch's RNG: seeded, and saved in checkpoints
            torch.manual_seed(task.seed + task.ranks.rank * 1_000_003)  # each rank its own dropout stream
            net = TunedLogits(self)
            self.train_net(net, task, task.backbone, train, val, cfg.adamw_plan(task.shots), template=self.template_)
        self.model_.eval()
        return self

    def train_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, C) with autograd through both tuned towers (text re-encoded each step, as the
        reference does)."""
        text = class_text_features(self.towers_, self.prompts_)
        return self.logit_scale_.to(self.device_) * image_features(self.towers_, pixels) @ text.T

    def _tune(self, backbone: Backbone) -> None:
        """The tuned model on ``backbone``: rebuilt from the trained tensors once (after ``load_head``), kept
        while the backbone stays the same one."""
        if vars(self).get("backbone_") is backbone:
            return
        trained = self.trained_  # read before _build replaces model_ (a fitted head's tensors live in it)
        self._build(backbone, 0)
        load_trained(self.model_, trained, self.name)
        self.model_.eval()

    def attach(self, backbone: Backbone, class_names: list[str]) -> None:
        """Score ``class_names`` with the tuned model on ``backbone`` (after ``load_head``)."""
        self._tune(backbone)
        self.prompts_ = [self.template_.format(name) for name in class_names]

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "TunedTowersHead":
        """The head for other class names (base-to-new): the same tuned towers -- one model, shared with this
        head, not copied -- with the tuned text tower encoding the new names in the head's template."""
        self._tune(backbone)
        other = type(self)(self.config)
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
        trained state: the key holds the prompts and every trained tensor's version counter, which any in-place
        change (an optimiser step, ``load_trained``) bumps."""
        versions = tuple(p._version for p in self.model_.parameters() if p.requires_grad)
        key = (id(self.model_), tuple(self.prompts_), versions)
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
    def trained_(self) -> dict[str, torch.Tensor]:
        """The trained tensors by the copy's parameter names (on the CPU)."""
        return self.__dict__.get("saved_trained_") or trained_state(self.model_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.trained_, "logit_scale": self.logit_scale_.reshape(1), **self.extra_state()}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.check_saved(tensors)
        extra = {"logit_scale", *self.extra_state()}
        self.saved_trained_ = {k: v for k, v in tensors.items() if k not in extra}
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.template_ = meta.get("templates", ["a photo of a {}."])[0]
        self.best_epoch_ = meta.get("best_epoch")

    def trainable_parameters(self) -> int:
        if "towers_" not in vars(self) and "saved_trained_" not in vars(self):
            return 0
        return sum(int(v.numel()) for v in self.trained_.values())


def folded_copy(towers: TunableTowers, kind: type, plain: Callable[[Any], nn.Module]) -> TunableTowers:
    """A copy of ``towers`` whose every ``kind`` layer is replaced by ``plain(layer)``, the library's own layer with
    the training folded in (``merged_towers``); the copy is frozen and the tuned towers are left as they are."""
    folded = copy.copy(towers)
    folded.module = copy.deepcopy(towers.module)
    tuned = [(name, layer) for name, layer in folded.module.named_modules() if isinstance(layer, kind)]
    with torch.no_grad():
        for name, layer in tuned:
            parent, _, child = name.rpartition(".")
            setattr(folded.module.get_submodule(parent), child, plain(layer))
    folded.module.requires_grad_(False)
    return folded
