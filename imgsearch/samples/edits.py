"""A generated near-duplicate set: distinct pictures and edited copies of them, with the truth.

Used to measure the near-duplicate detector (``bench/ingest/duplicates.py``) and in its tests. The
originals are of two kinds, drawn by seeded code: product shots on a light background (the
samples' six kinds of product, any colour, any position and size; the hard case for a
perceptual hash, since they all share the same bright frame) and busier "photos" (a gradient,
shapes, grain). Each original gets the edits a reseller or a re-upload makes.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from imgsearch.samples.generate import PRODUCTS, SIZE, picture


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def resize(image: Image.Image) -> Image.Image:
    """Half the size, then a JPEG as a marketplace serves it."""
    return image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)


def crop10(image: Image.Image) -> Image.Image:
    """10% of the width and height cut away, off-centre (7% left/top, 3% right/bottom)."""
    w, h = image.size
    return image.crop((round(0.07 * w), round(0.07 * h), round(0.97 * w), round(0.97 * h)))


def watermark(image: Image.Image) -> Image.Image:
    """A shop's name across the lower part, half transparent."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    w, h = base.size
    d.text(
        (w * 0.08, h * 0.78), "(c) BEST-DEALS-SHOP.COM", fill=(255, 255, 255, 150), font_size=max(10, w // 16)
    )
    d.text(
        (w * 0.08 + 1, h * 0.78 + 1),
        "(c) BEST-DEALS-SHOP.COM",
        fill=(0, 0, 0, 110),
        font_size=max(10, w // 16),
    )
    return Image.alpha_composite(base, layer).convert("RGB")


def colour_shift(image: Image.Image) -> Image.Image:
    """Warmer, more saturated and 10% brighter: a filter or another white balance."""
    r, g, b = image.convert("RGB").split()
    warm = Image.merge(
        "RGB", (r.point(lambda v: min(255, int(v * 1.08))), g, b.point(lambda v: int(v * 0.9)))
    )
    return ImageEnhance.Brightness(ImageEnhance.Color(warm).enhance(1.3)).enhance(1.1)


EDITS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    # name: (edit, JPEG quality of the copy; 0 = PNG)
    "resize": (resize, 85),
    "jpeg": (lambda image: image, 60),
    "crop10": (crop10, 90),
    "watermark": (watermark, 90),
    "colour": (colour_shift, 90),
}


def _photo(rng: random.Random) -> Image.Image:
    top = tuple(rng.randint(0, 255) for _ in range(3))
    bottom = tuple(rng.randint(0, 255) for _ in range(3))
    image = Image.new("RGB", (SIZE, SIZE))
    d = ImageDraw.Draw(image)
    for y in range(SIZE):
        t = y / (SIZE - 1)
        d.line(
            [(0, y), (SIZE, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        )
    for _ in range(rng.randint(3, 7)):
        x0, y0 = rng.uniform(-40, SIZE), rng.uniform(-40, SIZE)
        size = rng.uniform(30, 120)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        box = [x0, y0, x0 + size * rng.uniform(0.5, 1.5), y0 + size * rng.uniform(0.5, 1.5)]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    noise = Image.effect_noise((SIZE, SIZE), 24).convert("RGB")
    return Image.blend(image, noise, 0.12).filter(ImageFilter.SMOOTH)


def original(index: int, seed: int = 0) -> Image.Image:
    """The ``index``-th distinct picture: even ones are product shots, odd ones photos."""
    rng = random.Random(seed * 1_000_003 + index)
    if index % 2:
        return _photo(rng)
    draw, _ = rng.choice(list(PRODUCTS.values()))
    colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
    return picture(draw, colour, rng, angle=rng.uniform(-12, 12))


@dataclass(frozen=True)
class Item:
    name: str  # "o17" for an original, "o17-crop10" for an edited copy
    group: int  # the original it comes from: items of one group are near-duplicates of each other
    edit: str  # "original" or the edit's name
    data: bytes


def near_duplicate_set(
    originals: int, *, seed: int = 0, edits: tuple[str, ...] = tuple(EDITS)
) -> Iterator[Item]:
    """Each original as PNG, followed by one copy per edit."""
    for index in range(originals):
        image = original(index, seed)
        yield Item(f"o{index}", index, "original", _png(image))
        for name in edits:
            edit, quality = EDITS[name]
            copy = edit(image)
            yield Item(f"o{index}-{name}", index, name, _jpeg(copy, quality) if quality else _png(copy))
