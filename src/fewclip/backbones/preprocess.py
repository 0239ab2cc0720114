"""CLIP's image preprocessing in PIL + numpy (no torchvision): resize shortest side, center crop, normalise.

Parameters come from the model's ``preprocessor_config.json``; the result matches transformers'
``CLIPImageProcessorPil`` (tested).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def write_processor_config(folder: Path, image_size: int) -> None:
    """A CLIP ``preprocessor_config.json`` (resize + center crop to ``image_size``, OpenAI statistics)."""
    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
        "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD),
    }
    (Path(folder) / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


@dataclass(frozen=True)
class ImageTransform:
    resize: int  # shortest side after resizing
    crop: tuple[int, int]  # (height, width) of the center crop
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    resample: int = Image.Resampling.BICUBIC
    rescale: float = 1 / 255
    # OpenCLIP (torchvision) variants; the defaults are transformers' CLIP processor and are left out of
    # ``to_dict`` so feature-cache keys written before they existed stay the same
    resize_mode: str = "shortest"  # "shortest": shortest side to ``resize``, then crop; "squash": straight to ``crop``
    crop_rounding: str = "floor"  # crop offset: "floor" (transformers) or "round" (torchvision's CenterCrop)

    @classmethod
    def from_processor_config(cls, config: dict[str, Any]) -> "ImageTransform":
        size = config.get("size", {"shortest_edge": 224})
        resize = size["shortest_edge"] if isinstance(size, dict) else int(size)
        crop = config.get("crop_size", {"height": resize, "width": resize})
        crop_hw = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
        return cls(
            resize=int(resize),
            crop=crop_hw,
            mean=tuple(config.get("image_mean", OPENAI_MEAN)),
            std=tuple(config.get("image_std", OPENAI_STD)),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
            rescale=float(config.get("rescale_factor", 1 / 255)),
        )

    @classmethod
    def from_file(cls, path: Path | str) -> "ImageTransform":
        with open(path, encoding="utf-8") as handle:
            return cls.from_processor_config(json.load(handle))

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key, default in (("resize_mode", "shortest"), ("crop_rounding", "floor")):
            if values[key] == default:
                del values[key]
        return values

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_mode == "squash":
            return self.crop[1], self.crop[0]
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if width <= height else (new_long, self.resize)

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB PIL image -> float32 array (3, crop_h, crop_w)."""
        image = image.resize(self.resized_size(*image.size), resample=self.resample)
        crop_h, crop_w = self.crop
        if self.crop_rounding == "round":  # torchvision: int(round(x / 2)), Python's round (half to even)
            top, left = int(round((image.height - crop_h) / 2.0)), int(round((image.width - crop_w) / 2.0))
        else:
            top, left = (image.height - crop_h) // 2, (image.width - crop_w) // 2
        # float32 throughout (numpy's stubs would type the normalisation below as complex128)
        pixels: np.ndarray = np.asarray(image, dtype=np.float32)
        pixels = _pad_to(pixels, crop_h, crop_w)[
            max(top, 0) : max(top, 0) + crop_h, max(left, 0) : max(left, 0) + crop_w
        ]
        pixels = (pixels * self.rescale - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _pad_to(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Zero-pad (centered) an image smaller than the crop, as the reference processor does.

    An odd margin puts the extra row/column on the top/left (``ceil``), as transformers'
    ``center_crop`` does; torchvision's ``CenterCrop`` would put it on the bottom/right.
    """
    h, w = pixels.shape[:2]
    if h >= height and w >= width:
        return pixels
    out = np.zeros((max(h, height), max(w, width), 3), dtype=pixels.dtype)
    top, left = -(-(out.shape[0] - h) // 2), -(-(out.shape[1] - w) // 2)  # ceil
    out[top : top + h, left : left + w] = pixels
    return out


# The reference CoOp trains on random resized crops (scale 0.08-1, ratio 3/4-4/3) and horizontal flips.
@dataclass(frozen=True)
class Augmentation:
    """torchvision's RandomResizedCrop (area ``scale``, aspect ``ratio``) + a horizontal flip with probability
    ``flip``: what the papers train with."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: float = 0.5


PAPERS_AUGMENTATION = Augmentation()
AUGMENT_PARAMS = {
    "kind": "random_resized_crop+hflip",
    "scale": PAPERS_AUGMENTATION.scale,
    "ratio": PAPERS_AUGMENTATION.ratio,
    "flip": PAPERS_AUGMENTATION.flip,
}  # in view-cache keys


def augment_rng(seed: int, sha1: str, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(sha1[:15], 16), view])


def random_resized_crop_box(
    width: int, height: int, rng: np.random.Generator, augmentation: Augmentation = PAPERS_AUGMENTATION
) -> tuple[int, int, int, int]:
    """(left, top, crop width, crop height), sampled as torchvision's RandomResizedCrop does."""
    area = width * height
    low, high = np.log(augmentation.ratio[0]), np.log(augmentation.ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*augmentation.scale)
        ratio = float(np.exp(rng.uniform(low, high)))
        w, h = int(round((target * ratio) ** 0.5)), int(round((target / ratio) ** 0.5))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    side = min(width, height)  # fallback: the central square
    return (width - side) // 2, (height - side) // 2, side, side


def augment_view(
    transform: ImageTransform,
    rng: np.random.Generator,
    image: Image.Image,
    augmentation: Augmentation = PAPERS_AUGMENTATION,
) -> np.ndarray:
    """A random resized crop (to the model's crop size) + a random horizontal flip, normalised."""
    left, top, w, h = random_resized_crop_box(image.width, image.height, rng, augmentation)
    crop_h, crop_w = transform.crop
    image = image.resize((crop_w, crop_h), resample=transform.resample, box=(left, top, left + w, top + h))
    if rng.uniform() < augmentation.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # float32 throughout (numpy's stubs would type the normalisation below as complex128)
    pixels: np.ndarray = np.asarray(image, dtype=np.float32) * transform.rescale
    pixels = (pixels - np.asarray(transform.mean, np.float32)) / np.asarray(transform.std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))
