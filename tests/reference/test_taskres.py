"""TaskRes against geekyutao/TaskRes, re-implemented here from reading the official files (not copied):
``trainers/taskres.py`` (``_get_base_text_features``: each class's prompts encoded in one batch, the raw embeddings
averaged; ``TaskResLearner``: a zero residual on that base, ``base + alpha * residual``; ``CustomCLIP.forward``:
logit scale times the cosine; ``TaskRes.forward_backward``: cross-entropy, Dassl's ``model_backward_and_update``,
``update_lr`` after the epoch's last batch) trained as ``train_regular.sh`` runs it
(``configs/trainers/TaskRes/adam_lr2e-3_B256_ep100.yaml`` through KaiyangZhou/Dassl.pytorch: ``build_optimizer``'s
Adam with ``dassl/config/defaults.py``'s WEIGHT_DECAY 5e-4 and betas (0.9, 0.999); ``build_lr_scheduler``'s
cosine over MAX_EPOCH behind one constant 1e-5 warm-up epoch), given fewclip's shuffles and drawn views."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR

import fewclip.heads.on_features.trained_module as trained_module  # its fit_module trains the head
from fewclip.backbones import CLIPBackbone
from fewclip.heads import FeatureSet, Task, TaskResHead
from tests.heads.adapter_tasks import TASK_NAMES, cluster_task
from tests.reference.clap_trainer import ConstantWarmupScheduler, train_loader_batches
from tests.reference.recording import FitRecord, recording

TEMPLATES = ["a photo of a {}.", "an image of a {}."]
YAML = {
    "NAME": "adam",
    "LR": 0.002,
    "MAX_EPOCH": 100,
    "LR_SCHEDULER": "cosine",
    "WARMUP_EPOCH": 1,
    "WARMUP_TYPE": "constant",
    "WARMUP_CONS_LR": 1e-5,
    "BATCH_SIZE": 256,
}  # adam_lr2e-3_B256_ep100.yaml
DASSL_DEFAULTS = {"WEIGHT_DECAY": 5e-4, "ADAM_BETA1": 0.9, "ADAM_BETA2": 0.999}  # dassl/config/defaults.py
RESIDUAL_SCALE = 0.5  # train_regular.sh, every dataset but Flowers102
EPOCHS = 4  # a warm-up epoch and three cosine epochs


class TaskResLearner(nn.Module):
    def __init__(self, alpha: float, base_text_features: torch.Tensor) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("base_text_features", base_text_features)
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(base_text_features))

    def forward(self) -> torch.Tensor:
        return self.base_text_features + self.alpha * self.text_feature_residuals


def get_base_text_features(backbone: CLIPBackbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    with torch.no_grad():
        text_embeddings = []
        for text in classnames:
            text_embeddings.append(backbone.encode_text([template.format(text) for template in templates]).float())
    return torch.stack(text_embeddings).mean(1)


def custom_clip_forward(image_features: torch.Tensor, learner: TaskResLearner, logit_scale: float) -> torch.Tensor:
    text_features = learner()
    image_features = image_features / image_features.norm(dim=-1, keepdim=True)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    return logit_scale * image_features @ text_features.t()


def run_trainer(
    learner: TaskResLearner, logit_scale: float, record: FitRecord, n_images: int, batch_size: int, weight_decay: float
) -> list[float]:
    """Dassl's TrainerX epochs over fewclip's drawn epochs; the learning rate of every optimiser step."""
    optim = torch.optim.Adam(
        learner.parameters(),
        lr=YAML["LR"],
        weight_decay=weight_decay,
        betas=(DASSL_DEFAULTS["ADAM_BETA1"], DASSL_DEFAULTS["ADAM_BETA2"]),
    )
    sched = ConstantWarmupScheduler(
        optim, CosineAnnealingLR(optim, float(len(record.epochs))), YAML["WARMUP_EPOCH"], YAML["WARMUP_CONS_LR"]
    )
    num_batches = train_loader_batches(n_images, batch_size)
    rates = []
    for epoch in record.epochs:
        images, labels = epoch.features[epoch.order], epoch.labels[epoch.order]
        for batch_idx in range(num_batches):
            image = images[batch_idx * batch_size : (batch_idx + 1) * batch_size]
            label = labels[batch_idx * batch_size : (batch_idx + 1) * batch_size]
            output = custom_clip_forward(image, learner, logit_scale)
            loss = F.cross_entropy(output, label)
            optim.zero_grad()
            loss.backward()
            rates.append(optim.param_groups[0]["lr"])
            optim.step()
            if (batch_idx + 1) == num_batches:
                sched.step()
    return rates


def with_views(train: FeatureSet, views: int) -> FeatureSet:
    if views == 0:
        return train
    noise = torch.randn(len(train), views, train.features.shape[1], generator=torch.Generator().manual_seed(7))
    return FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)


def test_defaults_are_train_regular_sh(make_config: Callable[..., Any]) -> None:
    c = make_config().taskres
    assert (c.lr, c.batch_size, c.warmup_epochs, c.warmup_lr, c.weight_decay, c.adam_betas, c.residual_scale) == (
        YAML["LR"],
        YAML["BATCH_SIZE"],
        YAML["WARMUP_EPOCH"],
        YAML["WARMUP_CONS_LR"],
        DASSL_DEFAULTS["WEIGHT_DECAY"],
        (DASSL_DEFAULTS["ADAM_BETA1"], DASSL_DEFAULTS["ADAM_BETA2"]),
        RESIDUAL_SCALE,
    )
    # ep100 files at 1, 2 and 4 shots; ep200 at 8 and 16
    assert [c.epochs_for(shots) for shots in (1, 2, 4, 8, 16)] == [100, 100, 100, 200, 200]
    assert (c.prototypes, c.schedule, c.drop_last, c.view_sampling, c.select, c.calibrate) == (
        "template_mean",
        "dassl",
        True,
        "per_image",
        "last",
        False,
    )


# the last case's weight decay is large enough to matter in 4 epochs: Adam's coupled L2 (Dassl's), not AdamW's
@pytest.mark.parametrize(
    "views,batch_size,weight_decay",
    [
        (0, 8, DASSL_DEFAULTS["WEIGHT_DECAY"]),
        (3, 8, DASSL_DEFAULTS["WEIGHT_DECAY"]),
        (0, 32, DASSL_DEFAULTS["WEIGHT_DECAY"]),
        (0, 8, 2.0),
    ],
)
def test_taskres_trains_as_the_official_code(
    backbone: CLIPBackbone, make_config: Callable[..., Any], views: int, batch_size: int, weight_decay: float
) -> None:
    config = make_config(
        f"taskres.epochs={EPOCHS}",
        f"taskres.batch_size={batch_size}",
        f"taskres.augment_views={views}",
        f"taskres.weight_decay={weight_decay}",
    ).taskres
    train = with_views(cluster_task(backbone.dim, 3, seed=1), views)  # 18 images: 2 batches of 8, or one lone batch
    test = cluster_task(backbone.dim, 4, seed=3)
    with recording(trained_module) as record:
        head = TaskResHead(config).fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=2), train)

    base = get_base_text_features(backbone, TASK_NAMES, TEMPLATES)
    # the frozen base is _get_base_text_features (text encoded in other batch shapes: last-bit differences)
    torch.testing.assert_close(record.initial_state["base"], base, atol=1e-5, rtol=1e-5)
    assert torch.equal(record.initial_state["residual"], torch.zeros_like(base))
    assert len(record.epochs) == EPOCHS and all(
        len(e.batches) == train_loader_batches(len(train), batch_size) for e in record.epochs
    )
    if views:  # one of the cached views of every image per epoch, as Dassl's loader augments each image once
        assert all(len(e.features) == len(train) for e in record.epochs)
    learner = TaskResLearner(RESIDUAL_SCALE, base)
    rates = run_trainer(learner, backbone.logit_scale, record, len(train), batch_size, weight_decay)
    assert record.step_rates == pytest.approx(rates, rel=1e-12, abs=0)  # every step at Dassl's rate of its epoch
    residual = learner.text_feature_residuals.detach()
    torch.testing.assert_close(head.model_.residual, residual, atol=1e-5, rtol=1e-4)
    assert residual.abs().max().item() > 1e-3  # it moved
    with torch.no_grad():
        expected = custom_clip_forward(test.features, learner, backbone.logit_scale)
    torch.testing.assert_close(head.logits(test.features), expected, atol=1e-5, rtol=1e-5)


def test_epochs_follow_the_shot_budget(backbone: CLIPBackbone) -> None:
    """The default {shots: epochs}: 100 epochs at 2 shots, 200 at 8 (one batch each: fast)."""
    train = cluster_task(backbone.dim, 2, seed=1)
    for shots, epochs in ((2, 100), (8, 200)):
        head = TaskResHead().fit(Task(TASK_NAMES, TEMPLATES, backbone, seed=1, shots=shots), train)
        assert len(head.history_) == epochs == head.best_epoch_
