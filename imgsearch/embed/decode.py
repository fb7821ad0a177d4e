"""Decoding real-world uploads into the RGB images a vision model expects (torch-free).

What a product photo pipeline meets in practice: EXIF orientation, CMYK JPEGs, palette and
transparent PNGs (composited on white, like a product page), 16-bit and grayscale scans, animated
GIF/WebP (first frame), truncated files, decompression bombs and banner-shaped images. Each problem
image raises its own :class:`~imgsearch.errors.InvalidImage`; nothing here affects other images.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from imgsearch.errors import UnsupportedImage
from imgsearch.ingest.images import DEFAULT_MAX_ASPECT_RATIO, Limits, check_aspect, open_image

AspectPolicy = Literal["resize", "pad"]
BACKGROUND = (255, 255, 255)


@dataclass(frozen=True)
class DecodeOptions:
    limits: Limits = field(default_factory=Limits)
    aspect: AspectPolicy = "resize"
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        # 16-bit/32-bit grayscale: scale the actual range to 8 bits instead of clipping at 255
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = np.zeros_like(array) if high <= low else (array - low) * (255.0 / (high - low))
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _pad_square(image: Image.Image) -> Image.Image:
    width, height = image.size
    side = max(width, height)
    if width == height:
        return image
    canvas = Image.new("RGB", (side, side), BACKGROUND)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def fit(image: Image.Image, options: DecodeOptions) -> Image.Image:
    """An upright RGB image as the model sees it: padded to a square under the ``pad`` policy."""
    return _pad_square(image) if options.aspect == "pad" else image


def decode(data: bytes, options: DecodeOptions | None = None, upright: bool = False) -> Image.Image:
    """Decode upload bytes into an RGB image, upright, first frame, within the limits
    (``upright``: not padded, whatever the policy: the image whose pixels regions' boxes name)."""
    options = options or DecodeOptions()
    image = open_image(data, options.limits)
    width, height = image.size
    check_aspect(width, height, options.max_aspect_ratio)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image) or image
            rgb = _to_rgb(image)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise UnsupportedImage(f"cannot decode {image.format or 'image'} ({width}x{height}): {exc}") from exc
    return rgb if upright else fit(rgb, options)
