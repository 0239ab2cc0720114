"""The training options every head that tunes inside the encoders shares (clip_lora, maple, promptsrc): batch
and accumulation, autocast precision, augmentation, in-epoch checkpoints, gradient checkpointing and whether an
epoch drops its last partial batch (``EncoderTrainingOptions``); epoch selection for the heads that keep one
epoch (``EncoderTrainingConfig``: clip_lora, maple, clip_svd); CLIP-LoRA's AdamW loop (``AdamWTrainingConfig``:
clip_lora, clip_svd); Dassl's SGD schedule for the heads whose reference trains through Dassl
(``DasslTrainingConfig``: maple, promptsrc). Each head's block subclasses one, changes defaults and adds its own
keys (the method's own)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from fewclip.configbase import ConfigBlock
from fewclip.training.features_loop import DROP_LAST_HELP, batch_count
from fewclip.training.images_loop import TrainPlan
from fewclip.training.selection import SELECT_HELP, SelectRule


class EncoderTrainingOptions(ConfigBlock):
    """Options of the end-to-end training path (``images_loop.EncoderTrainer``)."""

    batch_size: int = Field(
        32,
        ge=1,
        description="Images per optimiser step (the global batch under torchrun: "
        "each of N ranks takes batch_size / N).",
    )
    accumulate: int = Field(1, ge=1, description="Micro-batches per step (batch_size / accumulate images each).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast compute type while training (the reference trains in fp16)."
    )
    augment: bool = Field(
        True,
        description="Random resized crop + horizontal flip of each training image, drawn "
        "anew each epoch (the reference's); false: the model's own preprocessing.",
    )
    crop_scale: tuple[float, float] = Field(
        (0.08, 1.0),
        description="The random resized crop's range of image area (torchvision's scale; the papers' 0.08-1).",
    )
    flip: bool = Field(True, description="Flip half the training crops horizontally (false: never).")
    drop_last: bool = Field(
        False,
        description="Drop each epoch's last partial batch when there are at least "
        "batch_size training images, as Dassl's loader does; false: train on it too.",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Also save a resumable checkpoint every N steps inside an "
        "epoch (0: at epoch ends only); a long epoch killed midway resumes there.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute the towers' activations in the backward "
        "pass: less memory for large towers (ViT-L), about a third more time.",
    )

    def plan(self, iterations: int, **schedule: Any) -> TrainPlan:
        """The loop's plan: ``iterations`` optimiser steps with this block's shared options; ``schedule`` gives the
        head's own (lr, min_lr, weight_decay, the optimiser and its settings, the selection rule or the epochs'
        weights)."""
        shared = ("batch_size", "accumulate", "precision", "augment", "crop_scale", "flip", "drop_last")
        return TrainPlan(
            iterations=iterations,
            checkpoint_every=self.checkpoint_every,
            **{key: getattr(self, key) for key in shared},
            **schedule,
        )

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError(
                f"crop_scale {list(value)}: give [low, high] with 0 < low <= high <= 1 (fractions of the image's area)"
            )
        return value

    @field_validator("accumulate")
    @classmethod
    def _divides_batch(cls, value: int, info: Any) -> int:
        batch = info.data.get("batch_size", value)
        if batch % value:
            raise ValueError(
                f"accumulate ({value}) must divide batch_size ({batch}): each micro-batch has "
                "batch_size / accumulate images"
            )
        return value


class EncoderTrainingConfig(EncoderTrainingOptions):
    """The options of a head that keeps one epoch's weights (``select``)."""

    select: SelectRule = Field("auto", description=SELECT_HELP)

    def plan(self, iterations: int, **schedule: Any) -> TrainPlan:
        return super().plan(iterations, select=self.select, **schedule)


class DasslTrainingConfig(EncoderTrainingOptions):
    """Dassl's training as the MaPLe and PromptSRC references run it (``dassl/config/defaults.py`` and their
    yaml): SGD with momentum and weight decay, a constant warm-up, then a cosine set once per epoch; batches of
    4, the last partial one dropped. ``lr`` and ``epochs`` are each head's."""

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

    def dassl_plan(self, n_train: int, **keep: Any) -> TrainPlan:
        """The plan over ``n_train`` images: ``epochs`` epochs of Dassl's SGD schedule; ``keep`` says which
        weights are kept (``select``, or ``epoch_weights`` for a weighted sum of the epochs')."""
        steps_per_epoch = batch_count(n_train, self.batch_size, self.drop_last)
        return self.plan(
            self.epochs * steps_per_epoch,
            lr=self.lr,
            min_lr=0.0,
            weight_decay=self.weight_decay,
            optimizer="sgd",
            momentum=self.momentum,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            steps_per_epoch=steps_per_epoch,
            **keep,
        )


class AdamWTrainingConfig(EncoderTrainingConfig):
    """The block of a head trained by CLIP-LoRA's loop (clip_lora, clip_svd): AdamW, a cosine to ``min_lr`` over
    ``iterations_per_shot`` x shots steps; each head sets its own defaults."""

    lr: float = Field(2e-4, gt=0, description="AdamW learning rate (cosine to min_lr over all iterations).")
    min_lr: float = Field(1e-6, ge=0, description="The cosine schedule's final learning rate.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    iterations_per_shot: int = Field(500, ge=1, description="Optimiser steps = iterations_per_shot x shots.")
    drop_last: bool = Field(
        False,
        description="Drop each epoch's last partial batch when there are at least "
        "batch_size training images (Dassl's loader); false: train on it too, as the CLIP-LoRA and "
        "CLIP-SVD loaders do (drop_last=False).",
    )

    def adamw_plan(self, shots: int) -> TrainPlan:
        """The loop's plan for a ``shots``-shot budget: ``iterations_per_shot`` x shots AdamW steps."""
        return self.plan(
            self.iterations_per_shot * max(shots, 1), lr=self.lr, min_lr=self.min_lr, weight_decay=self.weight_decay
        )
