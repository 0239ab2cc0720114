"""The jusiro/CLAP adapters' training, re-written from reading the official files (not copied), shared by the
equivalence tests of clip_adapter, zs_lp and clap.

- jusiro/CLAP ``trainers/adapters.py`` ``_get_base_text_features``: each class's template prompts encoded in one
  batch, their raw embeddings averaged (``text_embeddings.mean(1)``, no normalisation).
- ``configs/trainers/SGD_lr1e-1_B256_ep300.yaml`` read by KaiyangZhou/Dassl.pytorch ``dassl/optim/optimizer.py``
  ``build_optimizer`` (SGD; ``dassl/config/defaults.py``: MOMENTUM 0.9, SGD_DAMPNING 0, SGD_NESTEROV False) and
  ``dassl/optim/lr_scheduler.py`` ``build_lr_scheduler`` (``CosineAnnealingLR(optimizer, float(MAX_EPOCH))``
  wrapped in ``ConstantWarmupScheduler``, WARMUP_RECOUNT True).
- ``TrainerXCostume.run_epoch``: ``num_batches = len(self.train_loader_x)`` (Dassl's ``build_data_loader``:
  ``drop_last=is_train and len(data_source) >= batch_size`` over the images), the pool of all features
  (``extract_features``: the augmented passes concatenated rep after rep) shuffled, batch b =
  ``features[b * bs:(b + 1) * bs]``; ``ADAPTER.forward_backward``: cross-entropy (+ the constraint), Dassl's
  ``model_backward_and_update`` (zero_grad, backward, step), ``update_lr`` after the epoch's last batch.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

from fewclip.heads import FeatureSet
from tests.reference.recording import FitRecord

YAML = {
    "LR": 0.1,
    "MAX_EPOCH": 300,
    "WARMUP_EPOCH": 1,
    "WARMUP_CONS_LR": 1e-5,
    "WEIGHT_DECAY": 0.0,
    "BATCH_SIZE": 256,
}  # SGD_lr1e-1_B256_ep300.yaml
DASSL_DEFAULTS = {"MOMENTUM": 0.9, "SGD_DAMPNING": 0, "SGD_NESTEROV": False}


def base_text_features(backbone: Any, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """(C, d) ``_get_base_text_features``: per class, its prompts' raw embeddings averaged."""
    with torch.no_grad():
        per_class = [backbone.encode_text([t.format(name) for t in templates]).float() for name in class_names]
    return torch.stack(per_class).mean(1)


class ConstantWarmupScheduler(LRScheduler):
    """Dassl's: ``warmup_epoch`` epochs at ``cons_lr``, then the successor's rates (it steps the successor)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, successor: LRScheduler, warmup_epoch: int, cons_lr: float
    ) -> None:
        self.successor, self.warmup_epoch, self.cons_lr = successor, warmup_epoch, cons_lr
        super().__init__(optimizer)

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


def build_optimizer_and_scheduler(
    params: list[nn.Parameter], lr: float, epochs: int, warmup_epochs: int, warmup_lr: float
) -> tuple[torch.optim.Optimizer, LRScheduler]:
    optimizer = torch.optim.SGD(
        params,
        lr=lr,
        momentum=DASSL_DEFAULTS["MOMENTUM"],
        weight_decay=YAML["WEIGHT_DECAY"],
        dampening=DASSL_DEFAULTS["SGD_DAMPNING"],
        nesterov=DASSL_DEFAULTS["SGD_NESTEROV"],
    )
    scheduler: LRScheduler = CosineAnnealingLR(optimizer, float(epochs))
    if warmup_epochs > 0:
        scheduler = ConstantWarmupScheduler(optimizer, scheduler, warmup_epochs, warmup_lr)
    return optimizer, scheduler


def train_loader_batches(n_images: int, batch_size: int) -> int:
    """``len(self.train_loader_x)``: Dassl's train loader over the images."""
    loader = torch.utils.data.DataLoader(range(n_images), batch_size=batch_size, drop_last=n_images >= batch_size)
    return len(loader)


def pool(features: torch.Tensor, labels: torch.Tensor, views: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``extract_features(partition="train", reps=V)``: pass after pass over the images, concatenated."""
    if views is None:
        return features, labels
    return torch.cat([views[:, rep] for rep in range(views.shape[1])]), labels.repeat(views.shape[1])


def pool_order(fewclip_order: torch.Tensor, n_images: int, n_views: int) -> torch.Tensor:
    """fewclip's shuffle of its pool (image-major: row i*V + v is view v of image i) as the same shuffle of the
    reference's pool (pass-major: row v*n + i)."""
    if n_views == 0:
        return fewclip_order
    return (fewclip_order % n_views) * n_images + fewclip_order // n_views


def run_epochs(
    params: list[nn.Parameter],
    forward: Callable[[torch.Tensor], torch.Tensor],
    constraint: Callable[[], torch.Tensor] | None,
    features: torch.Tensor,
    labels: torch.Tensor,
    n_images: int,
    orders: Sequence[torch.Tensor],
    batch_size: int,
    lr: float,
    warmup_epochs: int,
    warmup_lr: float,
) -> list[float]:
    """Train ``params`` for ``len(orders)`` epochs as the CLAP trainer does; ``orders[e]`` is epoch e's shuffle of
    the pool. Returns the learning rate of every optimiser step."""
    epochs = len(orders)
    optimizer, scheduler = build_optimizer_and_scheduler(params, lr, epochs, warmup_epochs, warmup_lr)
    num_batches = train_loader_batches(n_images, batch_size)
    rates = []
    for order in orders:
        x, y = features[order], labels[order]
        for batch in range(num_batches):
            xb, yb = x[batch * batch_size : (batch + 1) * batch_size], y[batch * batch_size : (batch + 1) * batch_size]
            loss = F.cross_entropy(forward(xb), yb)
            if constraint is not None:
                loss = loss + constraint()
            optimizer.zero_grad()
            loss.backward()
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            if batch + 1 == num_batches:
                scheduler.step()
    return rates


def forward_lp(prototypes: torch.Tensor, logit_scale: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """``CustomCLIP.forward_lp``: cosine of the normalised features and prototypes times the logit scale."""

    def forward(features: torch.Tensor) -> torch.Tensor:
        image_features_norm = features / features.norm(dim=-1, keepdim=True)
        prototypes_norm = prototypes / prototypes.norm(dim=-1, keepdim=True)
        return image_features_norm @ prototypes_norm.t() * logit_scale

    return forward


# --- what the equivalence tests of clip_adapter, zs_lp and clap share -------------------------------------------

TEMPLATES = ["a photo of a {}.", "an image of a {}."]  # two: the raw mean and the normalised ensemble differ
EPOCHS = 4  # a warm-up epoch and three cosine epochs
# (cached views, batch size) for 18 support images: 2 batches of 8 with the last 2 images dropped; 2 batches of 8
# cut from the 54 pooled views; one batch of 32 pooled views (fewer images than a batch: Dassl keeps the lone batch)
CASES = [(0, 8), (3, 8), (3, 32)]


def with_views(train: FeatureSet, views: int) -> FeatureSet:
    """``train`` with ``views`` cached augmented features per image (0: none)."""
    if views == 0:
        return train
    noise = torch.randn(len(train), views, train.features.shape[1], generator=torch.Generator().manual_seed(7))
    return FeatureSet(train.features, train.labels, train.features[:, None] + 0.5 * noise)


def reference_pool_orders(
    record: FitRecord, train: FeatureSet
) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The reference's pool and, per epoch, fewclip's shuffle as the same shuffle of that pool (checked row for
    row: the batches hold the same features)."""
    n_views = 0 if train.views is None else train.views.shape[1]
    x, y = pool(train.features, train.labels, train.views)
    orders = []
    for epoch in record.epochs:
        order = pool_order(epoch.order, len(train), n_views)
        assert torch.equal(epoch.features[epoch.order], x[order]) and torch.equal(epoch.labels[epoch.order], y[order])
        orders.append(order)
    return x, y, orders
