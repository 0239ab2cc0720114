"""What every head that tunes inside the encoders shares: it trains on images (``ImageSet``s) and scores pixels
with ``image_logits``; cached image features came from the frozen towers, so it cannot score them."""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from fewclip.backbones.protocol import Backbone
from fewclip.heads.base import HeadBase, ImageSet, Task
from fewclip.training.images_loop import EncoderTrainer, TrainPlan
from fewclip.training.selection import Selection


class EncoderHeadBase(HeadBase):
    """A ``HeadBase`` with the flags every encoder-tuning head turns on, and whose ``logits`` (on frozen features)
    refuses. It reads the class names through its tuned text tower (``uses_text``), so it classifies any other names
    (``transfers``) once ``attach(backbone, class_names)`` has rebuilt its tuned model (``needs_text_at_predict``),
    checks its prompts before training (``checks_task``) and keeps the epoch its selection rule picks."""

    tunes_encoders = True
    uses_text = True
    uses_shots = True
    transfers = True
    needs_text_at_predict = True
    checks_task = True
    selects_epoch = True
    device_: torch.device
    history_: list[dict[str, float]]
    selection_: Selection
    best_epoch_: int | None  # None: loaded from a head saved without it

    def train_net(
        self,
        net: nn.Module,
        task: Task,
        backbone: Backbone,
        train: ImageSet,
        val: ImageSet | None,
        plan: TrainPlan,
        **key: Any,
    ) -> None:
        """Train ``net`` (pixels -> logits) on images with the images loop, checkpointing under a key of the
        classes, the config, the backbone and ``key``; sets ``history_``, and ``selection_`` and ``best_epoch_``
        for a head that ``selects_epoch``."""
        trainer = EncoderTrainer(
            net, backbone.transform, plan, task.seed, task.workers, len(task.class_names), self.device_, task.ranks
        )
        unit = {
            "classes": task.class_names,
            "config": self.config.model_dump(mode="json"),
            "backbone": backbone.fingerprint(),
        }
        checkpoint_key = json.dumps({**unit, **key}, sort_keys=True, default=str)
        self.history_, selection = trainer.fit(train, val, task.checkpoint, checkpoint_key, task.on_epoch)
        if self.selects_epoch:  # a head that keeps a weighted sum of epochs (plan.epoch_weights) selects none
            self.selection_, self.best_epoch_ = selection, selection.epoch

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        raise TypeError(
            f"{self.name} tunes the encoders: features of the frozen image tower cannot be scored; "
            "call image_logits(pixels)"
        )
