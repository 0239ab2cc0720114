"""What every prompt learner shares (CoOp, CoCoOp, KgCoOp, ProGrad, TCP): the flags it turns on."""

from __future__ import annotations

from fewclip.heads.base import HeadBase


class PromptHeadBase(HeadBase):
    """A ``HeadBase`` with the flags every prompt learner turns on: it reads the class names through the text tower
    (``uses_text``) and so classifies other names too (``transfers``), checks that its prompts fit the model before
    training (``checks_task``), trains per shot budget on cached features, augmented views included
    (``uses_shots``, ``uses_augmented_views``), keeps the epoch its selection rule picks and calibrates."""

    uses_text = True
    uses_shots = True
    transfers = True
    checks_task = True
    uses_augmented_views = True
    selects_epoch = True
    calibrates = True
    best_epoch_: int | None  # None: loaded from a head saved without it
