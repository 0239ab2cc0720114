"""Tip-Adapter against gaopengcuhk/Tip-Adapter, re-implemented from the official files: ``utils.py``
``clip_classifier`` (the zero-shot ensemble), ``build_cache_model`` (keys: the support features averaged over the
augmented passes, L2-normalised, as (d, N); values: one-hot labels), ``main.py`` ``run_tip_adapter`` (the
logits) and ``utils.py`` ``search_hp`` (the grid, beta-major, strict improvement of val accuracy). Where the
reference writes ``100.``, CLIP's ``logit_scale.exp()``, the backbone's ``logit_scale`` stands (the tiny test
model's is not 100)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch.nn import functional as F

from fewclip.backbones import CLIPBackbone
from fewclip.heads import FeatureSet, Task, TipAdapterHead
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task


TEMPLATES = ["a photo of a {}.", "an image of a {}."]
IMAGENET_YAML = {
    "search_scale": [7, 3],
    "search_step": [200, 20],
    "init_beta": 1,
    "init_alpha": 1.17,
}  # configs/imagenet.yaml


def clip_classifier(backbone: CLIPBackbone, classnames: list[str], template: list[str]) -> torch.Tensor:
    with torch.no_grad():
        clip_weights = []
        for classname in classnames:
            class_embeddings = backbone.encode_text([t.format(classname.replace("_", " ")) for t in template])
            class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)
            class_embedding = class_embeddings.mean(dim=0)
            class_embedding /= class_embedding.norm()
            clip_weights.append(class_embedding)
        return torch.stack(clip_weights, dim=1)  # (d, C)


def build_cache_model(passes: list[torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``passes``: the support features of each augmented pass over the (unshuffled) cache loader."""
    cache_keys = torch.cat([p.unsqueeze(0) for p in passes], dim=0).mean(dim=0)
    cache_keys /= cache_keys.norm(dim=-1, keepdim=True)
    return cache_keys.permute(1, 0), F.one_hot(labels).float()


def tip_logits(
    features: torch.Tensor,
    cache_keys: torch.Tensor,
    cache_values: torch.Tensor,
    clip_weights: torch.Tensor,
    scale: float,
    alpha: float,
    beta: float,
    affinity: torch.Tensor | None = None,
) -> torch.Tensor:
    """``run_tip_adapter``'s logits on normalised ``features`` (``pre_load_features``); Tip-Adapter-F passes the
    trained adapter's ``affinity``."""
    affinity = features @ cache_keys if affinity is None else affinity
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
    clip_logits = scale * features @ clip_weights
    return clip_logits + cache_logits * alpha


def cls_acc(output: torch.Tensor, target: torch.Tensor) -> float:
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * correct[:1].reshape(-1).float().sum(0, keepdim=True).item() / target.shape[0]


def search_hp(
    cfg: dict[str, Any], logits_at: Callable[[float, float], torch.Tensor], labels: torch.Tensor
) -> tuple[float, float]:
    beta_list = [i * (cfg["search_scale"][0] - 0.1) / cfg["search_step"][0] + 0.1 for i in range(cfg["search_step"][0])]
    alpha_list = [
        i * (cfg["search_scale"][1] - 0.1) / cfg["search_step"][1] + 0.1 for i in range(cfg["search_step"][1])
    ]
    best_acc, best_beta, best_alpha = 0.0, 0.0, 0.0
    for beta in beta_list:
        for alpha in alpha_list:
            acc = cls_acc(logits_at(alpha, beta), labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha


def support(views: int) -> FeatureSet:
    train = cluster_task(32, 2, seed=1, noise=1.5)
    if views == 0:
        return train
    noise = torch.randn(len(train), views, 32, generator=torch.Generator().manual_seed(7))
    return FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)


def augmented_passes(train: FeatureSet) -> list[torch.Tensor]:
    return [train.features] if train.views is None else [train.views[:, v] for v in range(train.views.shape[1])]


def normalized(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def test_defaults_are_the_imagenet_config(make_config: Callable[..., Any]) -> None:
    c = make_config().tip_adapter
    assert (c.search_scale_beta, c.search_scale_alpha, c.search_steps_beta, c.search_steps_alpha, c.beta, c.alpha) == (
        *IMAGENET_YAML["search_scale"],
        *IMAGENET_YAML["search_step"],
        IMAGENET_YAML["init_beta"],
        IMAGENET_YAML["init_alpha"],
    )


@pytest.mark.parametrize("views", [0, 10])
def test_tip_adapter_logits_are_the_references(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int
) -> None:
    config = make_config("tip_adapter.search=false", "tip_adapter.calibrate=false").tip_adapter
    train, test = support(views), cluster_task(backbone.dim, 4, seed=3)
    head = TipAdapterHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone), train)
    cache_keys, cache_values = build_cache_model(augmented_passes(train), train.labels)
    torch.testing.assert_close(head.model_.keys, cache_keys.T, atol=1e-6, rtol=1e-5)
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    expected = tip_logits(
        normalized(test.features),
        cache_keys,
        cache_values,
        clip_weights,
        backbone.logit_scale,
        IMAGENET_YAML["init_alpha"],
        IMAGENET_YAML["init_beta"],
    )
    # text encoded in other batch shapes, sums in another order: 1e-5
    torch.testing.assert_close(head.logits(test.features), expected, atol=1e-5, rtol=1e-5)


def test_search_returns_the_references_grid_values(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    cfg = {**IMAGENET_YAML, "search_step": [40, 10]}  # a coarser grid: the same search, fewer points
    config = make_config("tip_adapter.search_steps_beta=40", "tip_adapter.search_steps_alpha=10").tip_adapter
    train, val = support(10), cluster_task(backbone.dim, 4, seed=2, noise=1.5)
    head = TipAdapterHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone), train, val)
    cache_keys, cache_values = build_cache_model(augmented_passes(train), train.labels)
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    val_features = normalized(val.features)
    best_beta, best_alpha = search_hp(
        cfg,
        lambda alpha, beta: tip_logits(
            val_features, cache_keys, cache_values, clip_weights, backbone.logit_scale, alpha, beta
        ),
        val.labels,
    )
    # the same grid point, returned as the grid's own float (the index picked is what two code paths agree on)
    assert (head.alpha_, head.beta_) == (best_alpha, best_beta)
    assert (head.alpha_, head.beta_) != (IMAGENET_YAML["init_alpha"], IMAGENET_YAML["init_beta"])
