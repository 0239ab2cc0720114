"""Shared helpers for the tests of heads that train on images (clip_lora, maple, promptsrc): the shapes images as
ImageSets, their preprocessed pixels, the saliency terms' comparison, and a deep-prompt head's save, reload and
transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from fewclip.data.images import read_image
from fewclip.heads import ImageSet, load_head, save_head
from fewclip.saliency import patch_saliency, saliency_terms


def shapes_sets(shapes_dir: Path) -> dict[str, Any]:
    """Class names, and val (2 a class) / train (the rest) / test ImageSets of the shapes dataset."""
    classes = sorted(p.name for p in (shapes_dir / "train").iterdir())

    def images(split: str, pick: slice) -> ImageSet:
        paths, labels = [], []
        for label, name in enumerate(classes):
            files = sorted((shapes_dir / split / name).glob("*.png"))[pick]
            paths += files
            labels += [label] * len(files)
        return ImageSet(paths, torch.tensor(labels))

    return {
        "classes": [c.replace("_", " ") for c in classes],
        "val": images("train", slice(0, 2)),
        "train": images("train", slice(2, None)),
        "test": images("test", slice(None)),
    }


def pixels_of(backbone: Any, images: ImageSet) -> torch.Tensor:
    return torch.from_numpy(np.stack([backbone.transform(read_image(p)) for p in images.paths]))


def assert_same_map_terms(backbone: Any, head: Any, frozen: Any, pixels: torch.Tensor) -> None:
    """The head's map is built from the frozen model's gradient and activations: compared before the ReLU and
    the max-normalisation, which amplify rounding (on the tiny CLIP a cell's evidence is a sum of terms that
    nearly cancel, so BLAS's summation order alone can move a normalised cell by 0.15 on another CPU); the
    normalised maps are compared where a cell's evidence is clear of that cancellation."""
    gradient, activations, _ = saliency_terms(backbone, head, pixels)
    frozen_gradient, frozen_activations, _ = saliency_terms(backbone, frozen, pixels)
    torch.testing.assert_close(
        activations, frozen_activations, atol=1e-5 * float(frozen_activations.abs().max()), rtol=1e-4
    )
    torch.testing.assert_close(gradient, frozen_gradient, atol=1e-5 * float(frozen_gradient.abs().max()), rtol=1e-4)
    terms = frozen_gradient * frozen_activations
    clear = (terms.sum(-1).abs() > 1e-2 * terms.abs().sum(-1)).numpy()
    maps, frozen_maps = patch_saliency(backbone, head, pixels)[0], patch_saliency(backbone, frozen, pixels)[0]
    assert clear.mean() > 0.5, clear.mean()  # most cells are compared
    np.testing.assert_allclose(maps[clear], frozen_maps[clear], atol=1e-4, rtol=0)


def assert_resumes_as_whole(
    fit: Callable[[Path, Callable[[dict[str, float]], None] | None], Any], tmp_path: Path
) -> Any:
    """A fresh head fitted with checkpoints (``fit(checkpoint, on_epoch)``), killed as epoch 2 ends and fitted again,
    ends as an uninterrupted fit: the same history, kept epoch and state, tensor for tensor. Returns the whole fit."""
    whole = fit(tmp_path / "a.ckpt", None)

    class Killed(Exception):
        pass

    def kill_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise Killed

    checkpoint = tmp_path / "b.ckpt"
    with pytest.raises(Killed):
        fit(checkpoint, kill_after_two)
    assert checkpoint.is_file()  # epoch 1's state: the kill came before epoch 2 was saved
    resumed = fit(checkpoint, None)
    assert resumed.history_ == whole.history_
    assert vars(resumed).get("best_epoch_") == vars(whole).get("best_epoch_")
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    return whole


def assert_reloads(
    head: Any, backbone: Any, shapes: dict[str, Any], stem: Path, meta: dict[str, Any] | None = None
) -> Any:
    """A fitted encoder-tuning head saved at ``stem`` (with ``meta``) and loaded: the same trainable count, the test
    images' logits bit for bit, frozen features refused. Returns the loaded head, attached."""
    save_head(head, stem, shapes["classes"], meta)
    loaded, saved = load_head(stem)
    assert loaded.trainable_parameters() == head.trainable_parameters() == saved["trainable_params"]
    loaded.attach(backbone, saved["class_names"])
    pixels = pixels_of(backbone, shapes["test"])
    assert torch.equal(loaded.image_logits(pixels), head.image_logits(pixels))
    with pytest.raises(TypeError, match="call image_logits"):
        loaded.logits(torch.zeros(2, 32))
    return loaded


def assert_deep_prompts_reload_and_transfer(head: Any, backbone: Any, shapes: dict[str, Any], stem: Path) -> None:
    """A fitted deep-prompt head (maple, promptsrc) reloads (``assert_reloads``); transferred to other names
    (base-to-new), it scores them as a network built for those names with the same prompts does, the known names'
    columns unchanged."""
    loaded = assert_reloads(head, backbone, shapes, stem)
    pixels = pixels_of(backbone, shapes["test"])
    names = [shapes["classes"][2], "purple hexagon", shapes["classes"][0]]
    moved = loaded.transfer(backbone, names)
    new_net = head.build_net(backbone, names, seed=11)
    new_net.prompts.load_state_dict(head.net_.prompts.state_dict())
    with torch.no_grad():
        expected = new_net(pixels)
    torch.testing.assert_close(moved.image_logits(pixels), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        moved.image_logits(pixels)[:, [2, 0]], head.image_logits(pixels)[:, [0, 2]], atol=1e-5, rtol=0
    )
    assert loaded.image_logits(pixels).shape == (len(pixels), 3)  # transferring leaves the source as it was
