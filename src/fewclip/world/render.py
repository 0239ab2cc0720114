"""A procedural world of coloured shapes: 8 shapes x 8 colours = 64 classes named "<colour> <shape>".

Every image is a pure function of (domain, seed, class, index): a random position, size and rotation,
a textured or noisy background and a few small distractors. Domains share the classes and differ in
style, for robustness evaluation (the role ImageNet-Sketch / -R play for the reference):

- ``photo``:   filled shapes on noisy, softly textured backgrounds (the pretraining domain)
- ``sketch``:  outline-only shapes on plain light paper
- ``texture``: filled shapes on strong striped / checkered backgrounds
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (235, 215, 35),
    "green": (45, 165, 60),
    "cyan": (40, 200, 215),
    "blue": (40, 75, 215),
    "purple": (135, 55, 200),
    "pink": (240, 125, 185),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "ring")
CLASSES = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
Domain = Literal["photo", "sketch", "texture"]
DOMAINS: tuple[str, ...] = ("photo", "sketch", "texture")
SIZES = ("small", "medium", "large")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class Scene:
    """What an image shows, in words the captions use."""

    colour: str
    shape: str
    size: str  # small / medium / large
    position: str  # one of POSITIONS


def parse_class(name: str) -> tuple[str, str]:
    colour, _, shape = name.partition(" ")
    if colour not in COLOURS or shape not in SHAPES:
        raise ValueError(f"unknown world class {name!r}; valid: {', '.join(CLASSES)}")
    return colour, shape


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def ring_points(n: int, radii: list[float], offset: float) -> list[tuple[float, float]]:
        pts = []
        for i in range(n * len(radii)):
            a = offset + angle + 2 * math.pi * i / (n * len(radii))
            rr = r * radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts

    if shape == "square":
        return ring_points(4, [1.0], math.pi / 4)
    if shape == "diamond":
        return [
            (cx + r * 0.62 * math.cos(angle + a) - 0, cy + r * s * math.sin(angle + a))
            for a, s in ((0, 1.0), (math.pi / 2, 1.0), (math.pi, 1.0), (3 * math.pi / 2, 1.0))
        ]
    if shape == "triangle":
        return ring_points(3, [1.0], -math.pi / 2)
    if shape == "star":
        return ring_points(5, [1.0, 0.45], -math.pi / 2)
    if shape == "hexagon":
        return ring_points(6, [1.0], 0.0)
    if shape == "cross":
        w = 0.36
        arm = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in arm]
    raise ValueError(shape)


def _background(domain: str, size: int, rng: np.random.Generator) -> Image.Image:
    if domain == "sketch":
        paper = rng.integers(225, 256, size=3)
        noise = rng.normal(0, 4, size=(size, size, 1))
        return Image.fromarray(np.clip(paper + noise, 0, 255).astype(np.uint8))
    yy, xx = np.mgrid[0:size, 0:size] / size
    if domain == "texture":
        a, b = rng.integers(0, 256, size=3), rng.integers(0, 256, size=3)
        period = rng.uniform(0.08, 0.2)
        kind = rng.integers(3)
        if kind == 0:
            mask = (np.floor(xx / period) + np.floor(yy / period)) % 2
        elif kind == 1:
            mask = np.floor((xx + yy) / period) % 2
        else:
            mask = np.floor(xx / period) % 2
        pixels = np.where(mask[..., None] > 0, a, b) + rng.normal(0, 10, size=(size, size, 3))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    base = rng.integers(70, 190, size=3).astype(np.float64)
    direction = rng.normal(size=2)
    gradient = (xx * direction[0] + yy * direction[1])[..., None] * rng.normal(0, 30, size=3)
    blobs = np.zeros((size, size, 1))
    for _ in range(rng.integers(0, 4)):
        bx, by, br = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.35)
        blobs += rng.normal(0, 20) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * br**2))[..., None]
    pixels = base + gradient + blobs + rng.normal(0, rng.uniform(4, 18), size=(size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render(
    class_name: str, rng: np.random.Generator, size: int = 64, domain: str = "photo"
) -> tuple[Image.Image, Scene]:
    """One image of ``class_name`` drawn with ``rng``; returns the image and its scene description."""
    colour, shape = parse_class(class_name)
    scale = 2  # draw at twice the size and downsample: smooth edges
    canvas = size * scale
    image = _background(domain, canvas, rng)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 4) if domain != "sketch" else 0):  # distractors: small dots and strokes
        x, y = rng.uniform(0, canvas, size=2)
        r = rng.uniform(0.015, 0.04) * canvas
        tint = tuple(int(v) for v in rng.integers(0, 256, size=3))
        if rng.uniform() < 0.5:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tint)
        else:
            draw.line([x, y, x + rng.normal(0, 4 * r), y + rng.normal(0, 4 * r)], fill=tint, width=max(1, int(r / 2)))
    fraction = rng.uniform(0.16, 0.36)
    radius = fraction * canvas
    cx, cy = rng.uniform(radius, canvas - radius, size=2)
    angle = math.radians(rng.uniform(-20, 20))
    jitter = rng.integers(-20, 21, size=3)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], jitter))
    outline_only = domain == "sketch"
    width = max(2, int(canvas * 0.04))
    if shape in ("circle", "ring"):
        box = [cx - radius, cy - radius, cx + radius, cy + radius]
        if shape == "ring" or outline_only:
            draw.ellipse(box, outline=fill, width=int(radius * 0.35) if shape == "ring" and not outline_only else width)
            if shape == "ring" and outline_only:
                inner = radius * 0.6
                draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], outline=fill, width=width)
        else:
            draw.ellipse(box, fill=fill)
    else:
        points = _polygon(shape, cx, cy, radius, angle)
        if outline_only:
            draw.line(points + points[:1], fill=fill, width=width, joint="curve")
        else:
            draw.polygon(points, fill=fill)
    image = image.resize((size, size), Image.Resampling.BOX)
    size_word = SIZES[min(int((fraction - 0.16) / 0.2 * 3), 2)]
    col = min(int(cx / canvas * 3), 2)
    row = min(int(cy / canvas * 3), 2)
    return image, Scene(colour, shape, size_word, POSITIONS[row * 3 + col])


def image_rng(seed: int, domain: str, split: str, class_name: str, index: int) -> np.random.Generator:
    """The generator of one image: a pure function of its identity (same bytes on every machine)."""
    return np.random.default_rng(
        [seed, DOMAINS.index(domain), ("train", "test", "pretrain").index(split), CLASSES.index(class_name), index]
    )
