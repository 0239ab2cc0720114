"""Zero-shot prompt ensemble: class prototype = renormalised mean of L2-normalised prompt embeddings.

As openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet.ipynb`` (``zeroshot_classifier``: each class's
template prompts encoded, L2-normalised, averaged, the mean renormalised; logits = scale * normalised image
features @ prototypes). The notebook's scale is the constant ``100.``, CLIP's learned ``logit_scale.exp()``
for the OpenAI weights; fewclip uses the backbone's own ``logit_scale``, the same 100 for those weights and the
right temperature for others (argmax and top-k do not depend on it).

``mean_template_features`` is the other classifier the adapters' code builds from the same prompts: the plain
mean of the raw (unnormalised) embeddings (jusiro/CLAP ``trainers/adapters.py`` ``_get_base_text_features``);
``start_prototypes`` gives the adapters the one their ``prototypes`` option names.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import torch

from fewclip.backbones.protocol import Backbone
from fewclip.configbase import ConfigBlock
from fewclip.heads.base import FeatureSet, HeadBase, Task, normalize, task_backbone
from fewclip.heads.prompts.lengths import ChecksTemplates
from fewclip.heads.registry import register_head


StartPrototypes = Literal["template_mean", "zero_shot"]
PROTOTYPES_HELP = (
    "The class prototypes the head starts from: 'template_mean', the mean of each class's raw template "
    "embeddings (jusiro/CLAP's _get_base_text_features); 'zero_shot', the zero_shot head's ensemble "
    "(normalised embeddings averaged and renormalised), at the raw mean's length. One direction when "
    "there is one template."
)


def mean_template_features(backbone: Backbone, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(C, d) the mean over templates of each class's raw prompt embeddings, not normalised (jusiro/CLAP
    ``_get_base_text_features``' ``text_embeddings.mean(1)``). Its direction is the zero-shot prototype's
    when there is one template; with several, the longer embeddings weigh more."""
    prompts = [template.format(name) for template in templates for name in class_names]
    with torch.no_grad():
        raw = backbone.encode_text(prompts).float()
    return raw.reshape(len(templates), len(class_names), -1).mean(dim=0)


class ZeroShotConfig(ConfigBlock):
    """Zero-shot has no hyperparameters of its own; its templates come from the `prompts` block."""


@register_head
class ZeroShotHead(ChecksTemplates, HeadBase):
    name = "zero_shot"
    paper = "Radford et al., ICML 2021 (CLIP): prompt ensembling"
    official_code = "openai/CLIP"
    paper_selection = "none"  # nothing to choose: CLIP's prompt ensemble, fixed templates
    config_key = None  # the top-level config block of its hyperparameters
    Config = ZeroShotConfig
    published_as = "CLIP"
    transfers = True
    per_template_scores = True

    def fit(self, task: Task, train: FeatureSet | None = None, val: FeatureSet | None = None) -> "ZeroShotHead":
        self.check(task)
        backbone = task_backbone(task, self.name)
        prompts = [template.format(name) for template in task.templates for name in task.class_names]
        text = normalize(backbone.encode_text(prompts))
        self.template_prototypes_ = text.reshape(len(task.templates), len(task.class_names), -1)  # (T, C, d)
        self.prototypes_ = normalize(self.template_prototypes_.mean(dim=0))  # (C, d)
        self.logit_scale_ = torch.tensor(backbone.logit_scale)
        self.templates_ = list(task.templates)
        self.history_: list[dict[str, float]] = []  # nothing is trained, so no epochs to log
        return self

    def transfer(self, backbone: Backbone, class_names: list[str]) -> "ZeroShotHead":
        """The same templates on other class names (base-to-new evaluation)."""
        return ZeroShotHead(self.config).fit(Task(list(class_names), self.templates_, backbone))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(n, d) image features -> (n, C) = logit_scale * cos(image, prototype)."""
        return self.logit_scale_ * normalize(features) @ self.prototypes_.T

    def template_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(T, n, C): the logits each single template would give on its own."""
        return self.logit_scale_ * torch.einsum("nd,tcd->tnc", normalize(features), self.template_prototypes_)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "prototypes": self.prototypes_,
            "template_prototypes": self.template_prototypes_,
            "logit_scale": self.logit_scale_.reshape(1),
        }

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.prototypes_ = tensors["prototypes"]
        self.template_prototypes_ = tensors["template_prototypes"]
        self.logit_scale_ = tensors["logit_scale"].reshape(())
        self.templates_ = list(meta.get("templates", []))

    def trainable_parameters(self) -> int:
        return 0


def start_prototypes(
    backbone: Backbone, class_names: Sequence[str], templates: Sequence[str], kind: StartPrototypes
) -> torch.Tensor:
    """(C, d) unnormalised class prototypes an adapter starts from (see ``PROTOTYPES_HELP``)."""
    raw_mean = mean_template_features(backbone, class_names, templates)
    if kind == "template_mean":
        return raw_mean
    ensemble = ZeroShotHead().fit(Task(list(class_names), list(templates), backbone)).prototypes_
    scaled: torch.Tensor = ensemble * raw_mean.norm(dim=-1, keepdim=True)
    return scaled
