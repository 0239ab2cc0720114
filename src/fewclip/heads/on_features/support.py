"""The support set as the training-free and full-batch heads read it (GDA, LP++, ProKeR): every cached augmented
view of every support image is a sample (the plain features when there are no views), L2-normalised, and each
class must have one."""

from __future__ import annotations

import torch

from fewclip.heads.base import FeatureSet, normalize


def support_samples(train: FeatureSet | None, head: str, why: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, d) float64 L2-normalised samples and their labels (N,): every cached view of every support image, or
    the plain features when there are no views. No support set is an error naming ``head`` and ``why`` it needs one."""
    if train is None or len(train) == 0:
        raise ValueError(f"{head} needs training features ({why})")
    if train.views is None:
        return normalize(train.features.double()), train.labels.long()
    n, views, dim = train.views.shape
    return normalize(train.views.double().reshape(n * views, dim)), train.labels.long().repeat_interleave(views)


def class_sums(
    samples: torch.Tensor, labels: torch.Tensor, class_names: list[str], head: str, role: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, d) each class's sum of samples and (C,) their counts; a class without a sample is an error naming it,
    ``head`` and the ``role`` its samples play."""
    counts = torch.bincount(labels, minlength=len(class_names))
    if missing := [class_names[i] for i in range(len(class_names)) if counts[i] == 0]:
        raise ValueError(
            f"{head}: no support image of class(es) {', '.join(map(repr, missing[:5]))}: {role}; give each class "
            f"at least one image"
        )
    sums = torch.zeros(len(class_names), samples.shape[1], dtype=samples.dtype).index_add_(0, labels, samples)
    return sums, counts
