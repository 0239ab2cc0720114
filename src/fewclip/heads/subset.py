"""A trained head seen through some of its classes: its logits restricted to those classes' columns.

Domain generalisation scores a head trained on ImageNet on ImageNet-A and -R, which hold 200 of its 1,000
classes; CoOp evaluates there with the classifier built over the target's class names, which for a head
whose class scores are independent of each other (every head here) is the same as keeping those columns.
Keeping columns also serves heads that cannot name new classes (a linear probe), and heads that score
images through their own tuned towers (``tunes_encoders``: the columns of ``image_logits``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


class ClassSubset:
    """``head``'s logits at ``columns`` (source class indices, in the target's label order)."""

    per_template_scores = False  # the per-template table is the source's, not a subset's
    needs_text_at_predict = False  # the wrapped head is already attached

    def __init__(self, head: Any, columns: Sequence[int]) -> None:
        self.head = head
        self.columns = torch.as_tensor(list(columns), dtype=torch.long)
        self.tunes_encoders: bool = head.tunes_encoders  # scored as the wrapped head is: features or pixels

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.head.logits(features)
        return scores[:, self.columns]  # (n, len(columns))

    def image_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) -> (n, len(columns)): a ``tunes_encoders`` head's image logits at the columns."""
        scores: torch.Tensor = self.head.image_logits(pixels)
        return scores[:, self.columns]

    def image_saliency_pass(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, activations = self.head.image_saliency_pass(pixels)
        return logits[:, self.columns.to(logits.device)], activations
