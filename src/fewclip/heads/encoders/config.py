"""The training options every head that tunes inside the encoders shares (clip_lora, maple): batch and
accumulation, autocast precision, epoch selection, augmentation, in-epoch checkpoints, gradient
checkpointing and whether an epoch drops its last partial batch. Each head's block subclasses
``EncoderTrainingConfig``, changes defaults (maple's batch of 4 and Dassl's drop_last) and adds its own keys
(optimiser, schedule, the method's own)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from fewclip.configbase import ConfigBlock
from fewclip.training.images_loop import TrainPlan
from fewclip.training.selection import SELECT_HELP, SelectRule


class EncoderTrainingConfig(ConfigBlock):
    """Options of the end-to-end training path (``encoder_training.EncoderTrainer``)."""

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
    select: SelectRule = Field("auto", description=SELECT_HELP)
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
        head's own (lr, min_lr, weight_decay, the optimiser and its settings)."""
        shared = ("batch_size", "accumulate", "precision", "select", "augment", "crop_scale", "flip", "drop_last")
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
