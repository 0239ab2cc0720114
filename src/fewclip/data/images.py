"""Reading images robustly: every mode PIL decodes becomes 8-bit RGB; unreadable files raise one error type."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# A truncated file must fail loudly, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class UnreadableImage(ValueError):
    """An image file that PIL cannot decode fully (corrupt, truncated, not an image)."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha is composited on white, 16-bit and float are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        high = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F":
            high = max(float(values.max()), 1e-12) if values.max() > 1 else 1.0
        gray = np.clip(values / high * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _reason(err: BaseException) -> str:
    """PIL's messages name a BytesIO object for unknown formats; say what it means instead."""
    if isinstance(err, UnidentifiedImageError):
        return "not a recognised image format"
    return str(err)


def decode_image(data: bytes, origin: str) -> Image.Image:
    """Decode encoded image bytes fully to RGB, or raise UnreadableImage naming ``origin``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            image.load()
        return to_rgb(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{origin}: cannot decode image ({_reason(err)})") from err


def verify_image(data: bytes, origin: str) -> None:
    """Check that bytes decode completely (JPEGs at reduced scale: every byte is still read)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (64, 64))
            image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImage(f"{origin}: cannot decode image ({_reason(err)})") from err


def read_file(path: Path | str) -> bytes:
    """An image file's bytes, or UnreadableImage naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise UnreadableImage(f"{path}: cannot read file ({err})") from err


def read_image(path: Path | str) -> Image.Image:
    return decode_image(read_file(path), str(path))


def image_format_suffix(data: bytes) -> str:
    """File suffix for encoded bytes, from PIL's detected format ('.jpeg', '.png', ...)."""
    try:
        fmt = Image.open(io.BytesIO(data)).format or "png"
    except (OSError, ValueError):
        fmt = "bin"
    return "." + fmt.lower()
