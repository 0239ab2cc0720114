"""The procedural world (``fewclip.world``) as a data source: PNGs rendered on the fly, exported by the
prepare stage like any other source."""

from __future__ import annotations

import functools
import io
from typing import Iterator, Literal

from pydantic import Field, field_validator

from fewclip.data.sources.base import SourceConfig, SourceItem, Split
from fewclip.data.sources.registry import register_source
from fewclip.world.render import CLASSES, image_rng, render


class WorldSourceConfig(SourceConfig):
    source: Literal["world"] = "world"
    train_per_class: int = Field(32, ge=1, description="Rendered train images per class.")
    test_per_class: int = Field(32, ge=1, description="Rendered test images per class.")
    image_size: int = Field(64, ge=16, le=1024, description="Side of the rendered square images, in pixels.")
    seed: int = Field(0, description="World seed: the same seed renders the same bytes.")
    domain: Literal["photo", "sketch", "texture"] = Field("photo", description="Style of the train images.")
    test_domain: Literal["photo", "sketch", "texture"] | None = Field(
        None, description="Style of the test images (default: domain); another domain measures robustness."
    )

    @field_validator("classes")
    @classmethod
    def _world_classes(cls, classes: list[str] | None) -> list[str] | None:
        for name in classes or []:
            if name not in CLASSES:
                raise ValueError(f"unknown world class {name!r}; valid: {', '.join(CLASSES)}")
        return classes


def render_png(class_name: str, seed: int, domain: str, split: str, index: int, size: int) -> bytes:
    image, _ = render(class_name, image_rng(seed, domain, split, class_name, index), size, domain)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@register_source
class WorldSource:
    Config = WorldSourceConfig

    def __init__(self, config: WorldSourceConfig) -> None:
        self.config = config

    def class_names(self, split: Split = "train") -> list[str]:
        return list(CLASSES)

    def items(self, split: Split, classes: list[str]) -> Iterator[SourceItem]:
        cfg = self.config
        domain = cfg.domain if split == "train" else (cfg.test_domain or cfg.domain)
        count = cfg.train_per_class if split == "train" else cfg.test_per_class
        for name in classes:
            for index in range(count):
                yield SourceItem(
                    class_name=name,
                    origin=f"world:{domain}/{split}/{name}/{index}",
                    read_bytes=functools.partial(render_png, name, cfg.seed, domain, split, index, cfg.image_size),
                )
