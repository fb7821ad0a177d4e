"""Reading image sources and checking image bytes, safely (torch-free).

Used at upload time (a quick header check: is it an image, how big) and by the embedder
(full decode with orientation and mode fixes).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image, UnidentifiedImageError

from imgsearch.errors import EmptyImage, ImageTooLarge, InvalidImage, InvalidInput, UnsupportedImage

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_MAX_PIXELS = 64_000_000  # a 8000x8000 photo; far beyond any product shot
DEFAULT_MAX_ASPECT_RATIO = 20.0  # a 20:1 banner still shows a product; beyond that it is a strip of pixels

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO  # checked at upload (inspect), as the embedder does


@dataclass(frozen=True)
class ImageInfo:
    sha256: bytes
    width: int
    height: int
    format: str
    byte_size: int


def is_url(value: object) -> bool:
    return isinstance(value, str) and value.split("://", 1)[0].lower() in ("http", "https")


def read_source(source: Any, limits: Limits) -> bytes:
    """The bytes of a path, a bytes-like object or a binary file object."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        try:
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageTooLarge(f"{path} is {size} bytes, over the {limits.max_bytes}-byte limit")
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InvalidImage(f"no such image file: {str(path)!r}") from exc
        except IsADirectoryError as exc:
            raise InvalidImage(f"{str(path)!r} is a directory, not an image file") from exc
        except PermissionError as exc:
            raise InvalidImage(f"cannot read image file {str(path)!r}: permission denied") from exc
        except OSError as exc:
            raise InvalidImage(f"cannot read image file {str(path)!r}: {exc.strerror or exc}") from exc
    elif hasattr(source, "read"):
        chunk = source.read(limits.max_bytes + 1)
        if isinstance(chunk, str):
            raise InvalidInput("image file object is open in text mode; open it with 'rb'")
        if not isinstance(chunk, bytes | bytearray):
            raise InvalidInput(f"image file object returned {type(chunk).__name__}, expected bytes")
        data = bytes(chunk)
    else:
        raise InvalidInput(
            f"image must be a path, bytes or a binary file object, got {type(source).__name__}"
        )
    if not data:
        raise EmptyImage("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is over the {limits.max_bytes}-byte limit")
    return data


def open_image(data: bytes, limits: Limits) -> Image.Image:
    """Open image bytes lazily (header only), enforcing the pixel limit before any decoding."""
    if not data:
        raise EmptyImage("image is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is {len(data)} bytes, over the {limits.max_bytes}-byte limit")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, past its own global limit; ours is checked just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        # Pillow's own limit, twice its MAX_IMAGE_PIXELS, is above ours: say ours, with the size
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{found.group(1)} pixels" if found else "more pixels than Pillow opens"
        raise ImageTooLarge(f"image is {size}, over the {limits.max_pixels}-pixel limit") from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImage("not a recognised image format (the bytes are not an image)") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # PIL uses all three for corrupt headers
        raise UnsupportedImage(f"corrupt image header: {exc}") from exc
    width, height = image.size
    if width <= 0 or height <= 0:
        raise UnsupportedImage(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels, over the {limits.max_pixels}-pixel limit"
        )
    return image


def check_aspect(width: int, height: int, max_ratio: float) -> None:
    """:class:`UnsupportedImage` for an image wider or taller than ``max_ratio`` to 1."""
    ratio = max(width, height) / min(width, height)
    if ratio > max_ratio:
        raise UnsupportedImage(
            f"image is {width}x{height}, an aspect ratio of {ratio:.0f}:1, beyond the {max_ratio:g}:1 limit"
        )


def inspect(data: bytes, limits: Limits) -> ImageInfo:
    """Check that ``data`` is an image within the limits and describe it (no full decode): what
    an upload checks, so an image the workers would refuse is refused at once."""
    image = open_image(data, limits)
    check_aspect(*image.size, limits.max_aspect_ratio)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.verify()
    except Exception as exc:  # verify raises whatever the codec raises on bad data
        raise UnsupportedImage(f"corrupt {image.format} image: {exc}") from exc
    return ImageInfo(
        sha256=hashlib.sha256(data).digest(),
        width=image.size[0],
        height=image.size[1],
        format=str(image.format or "unknown"),
        byte_size=len(data),
    )


def _decoded_rgb(data: bytes, limits: Limits, at_least_px: int) -> Image.Image:
    """The image as RGB, first frame, EXIF orientation applied, transparency on white; a JPEG is
    decoded at the smallest scale that keeps both sides at least ``at_least_px`` (much faster)."""
    from PIL import ImageOps

    image = open_image(data, limits)
    try:
        image.draft("RGB", (at_least_px, at_least_px))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)
        return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot decode the image: {exc}") from exc


_DCT_SIZE, _LOW = 32, 8


def _dct_rows() -> Any:
    import numpy as np

    n = np.arange(_DCT_SIZE)
    k = np.arange(_LOW)[:, None]
    return 2 * np.cos(np.pi * k * (2 * n + 1) / (2 * _DCT_SIZE))  # DCT-II, first 8 frequencies


def perceptual_hash(data: bytes, limits: Limits) -> str:
    """The 64-bit pHash of an image as a string of 64 '0'/'1' (a PostgreSQL ``bit(64)``): the
    signs against their median of the 8x8 lowest frequencies of the DCT of its 32x32 greyscale
    version; the same bits as ``imagehash.phash``. Near-copies (re-encoded, resized, lightly
    edited) differ in few bits; :class:`InvalidImage` for bytes that aren't an image."""
    import numpy as np

    image = _decoded_rgb(data, limits, 4 * _DCT_SIZE)
    try:
        grey = image.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot decode the image: {exc}") from exc
    rows = _dct_rows()
    low = rows @ np.asarray(grey, dtype=np.float64) @ rows.T
    bits = (low > np.median(low)).ravel()
    return "".join("1" if b else "0" for b in bits)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hashes of :func:`perceptual_hash`."""
    return sum(x != y for x, y in zip(a, b, strict=True))


def thumbnail(data: bytes, px: int, limits: Limits) -> bytes:
    """A JPEG of the image scaled to fit ``px`` x ``px`` (never enlarged), first frame, EXIF
    orientation applied, transparency on white; :class:`InvalidImage` for bytes that aren't one."""
    image = _decoded_rgb(data, limits, px)
    try:
        image.thumbnail((px, px))
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot decode the image: {exc}") from exc
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def crop(data: bytes, box: Any, limits: Limits) -> bytes:
    """The region ``box`` = ``(x0, y0, x1, y1)`` of the image, in its pixels (after its EXIF
    orientation), as PNG bytes: what a region query embeds. :class:`InvalidInput` names a box that
    isn't four numbers with ``x0 < x1`` and ``y0 < y1`` inside the image."""
    from PIL import ImageOps

    if isinstance(box, str | bytes) or not hasattr(box, "__len__") or len(box) != 4:
        raise InvalidInput(f"box must be four numbers x0, y0, x1, y1 (pixels), got {box!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"box must be four numbers x0, y0, x1, y1 (pixels), got {box!r}") from exc
    if any(isinstance(v, bool) for v in box) or not all(map(math.isfinite, (x0, y0, x1, y1))):
        raise InvalidInput(f"box must be four finite numbers, got {box!r}")
    image = open_image(data, limits)
    try:
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot decode the image: {exc}") from exc
    width, height = image.size
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):  # outside the try: not a decode error
        raise InvalidInput(
            f"box {x0:g}, {y0:g}, {x1:g}, {y1:g} is not a region of the {width}x{height} image "
            "(x0 < x1 <= width, y0 < y1 <= height, from 0)"
        )
    try:
        region = image.crop(
            (round(x0), round(y0), max(round(x1), round(x0) + 1), max(round(y1), round(y0) + 1))
        )
        if region.mode not in ("RGB", "RGBA", "L"):
            region = region.convert("RGBA")
        out = io.BytesIO()
        region.save(out, format="PNG")
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnsupportedImage(f"cannot decode the image: {exc}") from exc
    return out.getvalue()
