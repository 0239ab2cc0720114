"""GDA against mrflogs/ICLR24, re-implemented here from reading the official files (not copied): ``utils.py``
``clip_classifier`` (the zero-shot ensemble) and ``cls_acc``; ``main_few_shots.py`` ``run`` (the samples: every
augmented pass, L2-normalised; class means; the KS estimator from ``torch.cov`` of the centred samples; ``W``,
``b`` by ``einsum``; the alpha search over ``[1e-4 .. 100]`` with a strict improvement from alpha 0.1);
``main_base2new.py`` ``run`` (the pooled estimator of the base classes, and the new classes' Gaussians from the
64 nearest samples and 16 copies of the text prototype). Written as the official code is: per-class lists,
float32, ``torch.linalg.pinv``; where it writes ``100.`` the backbone's logit scale stands, and its ``512`` is the
feature dimension (the tiny test model's is not 512)."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from fewclip.backbones import CLIPBackbone
from fewclip.heads import FeatureSet, GdaHead, Task
from fewclip.heads.on_features.gda import ALPHA_GRID
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task

TEMPLATES = ["a photo of a {}.", "an image of a {}."]
NEW_NAMES = ["orange oval", "purple cross", "white ring", "black arrow"]


def clip_classifier(backbone: CLIPBackbone, classnames: list[str], template: list[str]) -> torch.Tensor:
    """(d, C) ``utils.py`` ``clip_classifier``."""
    with torch.no_grad():
        clip_weights = []
        for classname in classnames:
            texts = [t.format(classname.replace("_", " ")) for t in template]
            class_embeddings = backbone.encode_text(texts).float()
            class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)
            class_embedding = class_embeddings.mean(dim=0)
            class_embedding /= class_embedding.norm()
            clip_weights.append(class_embedding)
        return torch.stack(clip_weights, dim=1)


def cls_acc(output: torch.Tensor, target: torch.Tensor) -> float:
    pred = output.topk(1, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * correct[:1].reshape(-1).float().sum(0, keepdim=True).item() / target.shape[0]


def parameter_estimation(train: FeatureSet) -> tuple[torch.Tensor, torch.Tensor]:
    """``vecs``, ``labels`` of ``run``: each augmented pass over the unshuffled cache loader, L2-normalised."""
    passes = [train.features] if train.views is None else [train.views[:, i] for i in range(train.views.shape[1])]
    vecs, labels = [], []
    for image_features in passes:
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        vecs.append(image_features)
        labels.append(train.labels)
    return torch.cat(vecs), torch.cat(labels)


def few_shot_classifier(vecs: torch.Tensor, labels: torch.Tensor, n_cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``main_few_shots.py`` ``run``: class means, the KS estimator, (W (d, C), b (C,))."""
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(n_cls)])
    center_vecs = torch.cat([vecs[labels == i] - mus[i].unsqueeze(0) for i in range(n_cls)])
    cov_inv = center_vecs.shape[1] * torch.linalg.pinv(
        (center_vecs.shape[0] - 1) * center_vecs.T.cov() + center_vecs.T.cov().trace() * torch.eye(center_vecs.shape[1])
    )
    return discriminant(mus, cov_inv, n_cls)


def base2new_base_classifier(vecs: torch.Tensor, labels: torch.Tensor, n_cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``main_base2new.py`` ``run``: the mean of the classes' covariances, pseudo-inverted."""
    mus = torch.cat([vecs[labels == i].mean(dim=0, keepdim=True) for i in range(n_cls)])
    train_cov = torch.cat([vecs[labels == i].T.cov().unsqueeze(0) for i in range(n_cls)])
    return discriminant(mus, torch.linalg.pinv(train_cov.mean(dim=0)), n_cls)


def discriminant(mus: torch.Tensor, cov_inv: torch.Tensor, n_cls: int) -> tuple[torch.Tensor, torch.Tensor]:
    ps = torch.ones(n_cls) * 1.0 / n_cls
    W = torch.einsum("nd, dc -> cn", mus, cov_inv)
    b = ps.log() - torch.einsum("nd, dc, nc -> n", mus, cov_inv, mus) / 2
    return W, b


def base2new_new_classifier(vecs: torch.Tensor, clip_weights_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``main_base2new.py`` ``run``'s synthesised (W_new, b_new), k = 64, the dimension for its 512."""
    k, dim = 64, vecs.shape[1]
    mu = torch.cat(
        [
            torch.cat([vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], w.unsqueeze(0).repeat(16, 1)]).mean(
                dim=0, keepdim=True
            )
            for w in clip_weights_new.T
        ]
    )

    def covariance(vecs: torch.Tensor, mu: Any = 0) -> torch.Tensor:
        N, D = vecs.shape
        return (vecs - mu).T @ (vecs - mu) / (N - 1)

    cov_inv = torch.cat(
        [
            dim
            * torch.linalg.pinv(
                (k - 1) * covariance(vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], mu=w.unsqueeze(0))
                + covariance(vecs[torch.topk(w @ vecs.T, k=k, largest=True)[1]], mu=w.unsqueeze(0)).trace()
                * torch.eye(dim)
            ).unsqueeze(0)
            for w in clip_weights_new.T
        ]
    ).mean(dim=0)
    return discriminant(mu, cov_inv, clip_weights_new.shape[1])


def gda_logits(
    features: torch.Tensor, clip_weights: torch.Tensor, W: torch.Tensor, b: torch.Tensor, scale: float, alpha: float
) -> torch.Tensor:
    """The test logits of ``run`` on ``pre_load_features``' normalised features."""
    features = features / features.norm(dim=-1, keepdim=True)
    return scale * features.float() @ clip_weights.float() + alpha * (features.float() @ W + b)


def search_alpha(logits_at: Callable[[float], torch.Tensor], val_labels: torch.Tensor) -> float:
    best_val_acc = 0
    best_alpha = 0.1
    for alpha in [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0]:
        acc = cls_acc(logits_at(alpha), val_labels)
        if acc > best_val_acc:
            best_val_acc = acc
            best_alpha = alpha
    return best_alpha


def support(dim: int, per_class: int, views: int) -> FeatureSet:
    train = cluster_task(dim, per_class, seed=1, noise=1.5)
    if views == 0:
        return train
    noise = torch.randn(len(train), views, dim, generator=torch.Generator().manual_seed(7))
    return FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # float32 pinv (the reference) against float64 (the head): agreement to 1e-4 of the logits' scale
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_defaults_are_the_few_shot_scripts(make_config: Callable[..., Any]) -> None:
    c = make_config().gda
    assert c.alphas == [0.0001, 0.001, 0.01, 0.1, 1.0, 10.0, 100.0] == ALPHA_GRID
    assert (c.alpha, c.search, c.estimator, c.transfer_neighbours, c.transfer_text_copies) == (0.1, True, "ks", 64, 16)


@pytest.mark.parametrize("views,estimator", [(0, "ks"), (3, "ks"), (3, "pooled")])
def test_gda_logits_are_the_references(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int, estimator: str
) -> None:
    config = make_config("gda.search=false", "gda.calibrate=false", "gda.alpha=1.0", f"gda.estimator={estimator}").gda
    train, test = support(backbone.dim, 4, views), cluster_task(backbone.dim, 4, seed=3)
    head = GdaHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone), train)
    vecs, labels = parameter_estimation(train)
    estimate = few_shot_classifier if estimator == "ks" else base2new_base_classifier
    W, b = estimate(vecs, labels, len(TASK_NAMES))
    expected = gda_logits(
        test.features, clip_classifier(backbone, TASK_NAMES, TEMPLATES), W, b, backbone.logit_scale, 1.0
    )
    assert_logits_close(head.logits(test.features), expected)
    # the GDA part moves the prediction: the test is not passing on the zero-shot logits alone
    zero_shot = gda_logits(
        test.features, clip_classifier(backbone, TASK_NAMES, TEMPLATES), W, b, backbone.logit_scale, 0.0
    )
    assert not torch.equal(expected.argmax(-1), zero_shot.argmax(-1))


def test_search_picks_the_references_alpha(backbone: CLIPBackbone, make_config: Callable[..., Any]) -> None:
    config = make_config("gda.calibrate=false").gda
    train, val = support(backbone.dim, 4, 3), cluster_task(backbone.dim, 3, seed=2, noise=3.0)
    test = cluster_task(backbone.dim, 4, seed=3)
    head = GdaHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone), train, val)
    W, b = few_shot_classifier(*parameter_estimation(train), len(TASK_NAMES))
    clip_weights = clip_classifier(backbone, TASK_NAMES, TEMPLATES)
    alpha = search_alpha(lambda a: gda_logits(val.features, clip_weights, W, b, backbone.logit_scale, a), val.labels)
    assert head.alpha_ == alpha != 0.1  # the grid's own value, and not the starting one
    assert_logits_close(
        head.logits(test.features), gda_logits(test.features, clip_weights, W, b, backbone.logit_scale, alpha)
    )


def test_transfer_synthesises_new_classes_as_main_base2new(
    backbone: CLIPBackbone, make_config: Callable[..., Any]
) -> None:
    config = make_config("gda.search=false", "gda.calibrate=false", "gda.alpha=10.0").gda
    train = support(backbone.dim, 4, 3)  # 6 classes x 4 images x 3 views = 72 samples: the reference's k = 64 fits
    head = GdaHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone), train)
    new = head.transfer(backbone, NEW_NAMES)
    vecs, _ = parameter_estimation(train)
    clip_weights_new = clip_classifier(backbone, NEW_NAMES, TEMPLATES)
    W_new, b_new = base2new_new_classifier(vecs, clip_weights_new)
    test = cluster_task(backbone.dim, 3, seed=5, classes=len(NEW_NAMES))
    expected = gda_logits(test.features, clip_weights_new, W_new, b_new, backbone.logit_scale, 10.0)
    assert_logits_close(new.logits(test.features), expected)
    assert new.logits(test.features).shape == (len(test), len(NEW_NAMES))
    assert head.logits(test.features).shape == (len(test), len(TASK_NAMES))  # the base head is unchanged
