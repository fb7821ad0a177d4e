"""A drawn dataset to train and judge models on: products of six kinds in six colours and three
patterns, each drawing with its caption and product text, and scenes that hold several of them.

Everything is seeded: the same arguments give the same drawings. A product's *look* is its kind,
colour and pattern (108 looks); two drawings of one look differ in position, size, rotation and
background, so "a red striped mug" has many right answers and an image query's right answers are
the other drawings of its look.

>>> [item.caption for item in draw(2, seed=1, size=64)]  # doctest: +SKIP
['a green dotted lamp', 'a black cap']
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw

from imgsearch.samples.generate import COLOURS, OUTLINE, PRODUCTS, SIZE

KINDS = tuple(PRODUCTS)  # mugs, t-shirts, caps, lamps, bags, sneakers
PATTERNS = ("plain", "striped", "dotted")
SINGULAR = {"mugs": "mug", "t-shirts": "t-shirt", "caps": "cap", "lamps": "lamp", "bags": "bag", "sneakers": "sneaker"}
MATERIALS = ("cotton", "ceramic", "leather", "canvas", "metal", "wool")


@dataclass(frozen=True)
class Drawn:
    """One drawing of a product: its PNG, its look and the texts a shop would give it."""

    png: bytes
    kind: str  # the category, e.g. "mugs"
    colour: str
    pattern: str

    @property
    def look(self) -> str:
        """What two drawings share when one is a right answer for the other."""
        return f"{self.colour} {self.pattern} {SINGULAR[self.kind]}"

    @property
    def caption(self) -> str:
        """What a shopper types for it: ``a red striped mug`` (a plain one: ``a red mug``)."""
        pattern = "" if self.pattern == "plain" else f"{self.pattern} "
        return f"a {self.colour} {pattern}{SINGULAR[self.kind]}"


def _pattern_layer(pattern: str, rgb: tuple[int, int, int], rng: random.Random) -> Image.Image:
    """A full-size layer of the pattern in a colour that stands out from ``rgb``."""
    light = sum(rgb) > 450
    ink = (40, 40, 45) if light else (245, 245, 240)
    layer = Image.new("RGB", (SIZE, SIZE), rgb)
    d = ImageDraw.Draw(layer)
    step = rng.randint(14, 20)
    if pattern == "striped":
        for offset in range(-SIZE, 2 * SIZE, step):
            d.line([offset, 0, offset + SIZE, SIZE], fill=ink, width=step // 3)
    elif pattern == "dotted":
        r = step // 4
        for y in range(step // 2, SIZE, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, SIZE, step):
                d.ellipse([x - r, y - r, x + r, y + r], fill=ink)
    return layer


def picture(kind: str, colour: str, pattern: str, rng: random.Random, size: int = SIZE) -> Image.Image:
    """One drawing of a product: random position, scale (0.6-1.05), background shade, and for half
    of them a rotation of up to 20 degrees; ``size`` pixels square."""
    draw_product = PRODUCTS[kind][0]
    rgb = COLOURS[colour]
    shade = rng.randint(200, 245)
    background = (shade, shade, min(255, shade + 4))
    image = Image.new("RGB", (SIZE, SIZE), background)
    x = SIZE / 2 + rng.uniform(-25, 25)
    y = SIZE / 2 + rng.uniform(-20, 20)
    scale = rng.uniform(0.6, 1.05)
    draw_product(ImageDraw.Draw(image), rgb, x, y, scale)
    if pattern != "plain":
        # the pattern over the product's own pixels: its shape drawn again as a mask
        mask_rgb = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
        draw_product(ImageDraw.Draw(mask_rgb), (255, 255, 255), x, y, scale)
        mask = mask_rgb.convert("L").point(lambda v: 255 if v > 200 else 0)
        image = Image.composite(_pattern_layer(pattern, rgb, rng), image, mask)
    if rng.random() < 0.5:
        image = image.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, fillcolor=background)
    if size != SIZE:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def draw(
    count: int,
    *,
    seed: int,
    size: int = SIZE,
    kinds: Sequence[str] = KINDS,
    colours: Sequence[str] = tuple(COLOURS),
    patterns: Sequence[str] = PATTERNS,
) -> list[Drawn]:
    """``count`` drawings, each of a look drawn at random from ``kinds`` x ``colours`` x ``patterns``."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
    rng = random.Random(seed)
    items = []
    for _ in range(count):
        kind, colour, pattern = rng.choice(list(kinds)), rng.choice(list(colours)), rng.choice(list(patterns))
        items.append(Drawn(png(picture(kind, colour, pattern, rng, size)), kind, colour, pattern))
    return items


def product_row(item: Drawn, number: int, rng: random.Random) -> dict[str, object]:
    """A catalog row for a drawing, as a shop would upload it: title, category, price, attributes
    (colour, pattern) and a description that names the look among other words."""
    low, high = PRODUCTS[item.kind][1]
    material = rng.choice(MATERIALS)
    pattern = "" if item.pattern == "plain" else f"{item.pattern} "
    return {
        "image": item.png,
        "product_id": f"p{number}",
        "category": item.kind,
        "price": round(rng.uniform(low, high), 2),
        "title": f"{item.colour} {pattern}{SINGULAR[item.kind]}",
        "description": f"a {material} {SINGULAR[item.kind]} in {item.colour}",
        "attributes": {"color": item.colour, "pattern": item.pattern},
    }


def scene(items: Sequence[Drawn], *, seed: int, size: int = SIZE, grid: int = 2) -> bytes:
    """A scene of ``grid`` x ``grid`` cells, each holding one of ``items`` (in order; cells beyond
    them stay empty) at a random offset, on one background: a shop photo of several products."""
    rng = random.Random(seed)
    cell = size // grid
    shade = rng.randint(200, 245)
    image = Image.new("RGB", (size, size), (shade, shade, shade))
    for i, item in enumerate(items[: grid * grid]):
        with Image.open(io.BytesIO(item.png)) as drawing:
            tile = drawing.convert("RGB").resize((cell, cell), Image.Resampling.BILINEAR)
        image.paste(tile, ((i % grid) * cell, (i // grid) * cell))
    outline = ImageDraw.Draw(image)
    outline.rectangle([0, 0, size - 1, size - 1], outline=OUTLINE)
    return png(image)
