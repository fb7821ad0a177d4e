"""Draw the bundled sample catalog: ``python -m imgsearch.samples.generate``.

36 product pictures (six kinds of product in six colours), two query pictures that are not in
the catalog, and ``manifest.csv`` with product metadata. The pictures are drawn here, by code, so
the project owns them and releases them under CC0 1.0 (see LICENSE in this folder). The drawing is
seeded: running the script again gives the same files.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 224
HERE = Path(__file__).parent

COLOURS = {
    "red": (200, 35, 45),
    "blue": (35, 75, 200),
    "green": (40, 150, 70),
    "yellow": (240, 200, 35),
    "black": (35, 35, 38),
    "white": (248, 248, 248),
}
OUTLINE = (90, 90, 90)

Draw = Callable[[ImageDraw.ImageDraw, tuple[int, int, int], float, float, float], None]


def _mug(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    d.ellipse([x + 40 * s, y - 35 * s, x + 95 * s, y + 35 * s], outline=c, width=int(14 * s))
    d.rounded_rectangle(
        [x - 60 * s, y - 60 * s, x + 60 * s, y + 70 * s], radius=int(12 * s), fill=c, outline=OUTLINE
    )
    d.ellipse(
        [x - 60 * s, y - 72 * s, x + 60 * s, y - 48 * s], fill=tuple(int(v * 0.7) for v in c), outline=OUTLINE
    )


def _tshirt(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    points = [
        (-30, -80),
        (-90, -50),
        (-70, -10),
        (-50, -25),
        (-50, 85),
        (50, 85),
        (50, -25),
        (70, -10),
        (90, -50),
        (30, -80),
        (0, -60),
    ]
    d.polygon([(x + px * s, y + py * s) for px, py in points], fill=c, outline=OUTLINE)


def _cap(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    d.pieslice([x - 75 * s, y - 70 * s, x + 75 * s, y + 80 * s], 180, 360, fill=c, outline=OUTLINE)
    d.ellipse(
        [x - 10 * s, y + 5 * s, x + 105 * s, y + 25 * s], fill=tuple(int(v * 0.8) for v in c), outline=OUTLINE
    )
    d.ellipse([x - 8 * s, y - 78 * s, x + 8 * s, y - 66 * s], fill=c, outline=OUTLINE)


def _lamp(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    d.polygon(
        [
            (x - 35 * s, y - 85 * s),
            (x + 35 * s, y - 85 * s),
            (x + 65 * s, y - 15 * s),
            (x - 65 * s, y - 15 * s),
        ],
        fill=c,
        outline=OUTLINE,
    )
    d.rectangle([x - 5 * s, y - 15 * s, x + 5 * s, y + 70 * s], fill=(120, 120, 120))
    d.ellipse([x - 50 * s, y + 62 * s, x + 50 * s, y + 85 * s], fill=(110, 110, 110))


def _bag(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    d.arc(
        [x - 45 * s, y - 95 * s, x + 45 * s, y - 5 * s],
        180,
        360,
        fill=tuple(int(v * 0.7) for v in c),
        width=int(10 * s),
    )
    d.rounded_rectangle(
        [x - 80 * s, y - 50 * s, x + 80 * s, y + 75 * s], radius=int(16 * s), fill=c, outline=OUTLINE
    )
    d.rectangle([x - 12 * s, y - 35 * s, x + 12 * s, y - 20 * s], fill=(200, 170, 60))


def _sneaker(d: ImageDraw.ImageDraw, c: tuple[int, int, int], x: float, y: float, s: float) -> None:
    upper = [(-90, 25), (-85, -30), (-55, -40), (-20, -10), (40, 0), (85, 15), (95, 30)]
    d.polygon([(x + px * s, y + py * s) for px, py in upper], fill=c, outline=OUTLINE)
    d.rounded_rectangle(
        [x - 95 * s, y + 25 * s, x + 100 * s, y + 45 * s],
        radius=int(8 * s),
        fill=(240, 240, 240),
        outline=OUTLINE,
    )
    for i in range(3):
        d.line(
            [x + (-45 + 15 * i) * s, y - 25 * s + 8 * i * s, x + (-30 + 15 * i) * s, y - 10 * s + 8 * i * s],
            fill=(250, 250, 250),
            width=max(1, int(3 * s)),
        )


PRODUCTS: dict[str, tuple[Draw, tuple[int, int]]] = {  # category: drawing, price range
    "mugs": (_mug, (8, 16)),
    "t-shirts": (_tshirt, (15, 30)),
    "caps": (_cap, (12, 26)),
    "lamps": (_lamp, (35, 80)),
    "bags": (_bag, (40, 120)),
    "sneakers": (_sneaker, (60, 140)),
}


def picture(draw: Draw, colour: tuple[int, int, int], rng: random.Random, angle: float = 0.0) -> Image.Image:
    shade = rng.randint(222, 240)
    image = Image.new("RGB", (SIZE, SIZE), (shade, shade, shade + 4))
    d = ImageDraw.Draw(image)
    d.ellipse([40, 175, 184, 200], fill=(shade - 25, shade - 25, shade - 22))  # a soft floor shadow
    draw(d, colour, SIZE / 2 + rng.uniform(-8, 8), SIZE / 2 + rng.uniform(-6, 6), rng.uniform(0.85, 1.05))
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=(shade, shade, shade + 4))
    return image


def main() -> None:
    rng = random.Random(20261122)
    images = HERE / "images"
    images.mkdir(exist_ok=True)
    rows = []
    for category, (draw, (low, high)) in PRODUCTS.items():
        for colour, rgb in COLOURS.items():
            name = f"{category.rstrip('s')}-{colour}"
            picture(draw, rgb, rng).save(images / f"{name}.png", optimize=True)
            rows.append(
                {
                    "image": f"images/{name}.png",
                    "product_id": name,
                    "category": category,
                    "price": f"{rng.uniform(low, high):.2f}",
                    "currency": "EUR",
                    "attributes": json.dumps({"color": colour}),
                }
            )
    with (HERE / "manifest.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    queries = HERE / "queries"
    queries.mkdir(exist_ok=True)
    picture(_tshirt, (60, 100, 220), rng, angle=10).save(queries / "blue-tshirt.png", optimize=True)
    picture(_mug, (215, 60, 50), rng, angle=-8).save(queries / "red-mug.png", optimize=True)


if __name__ == "__main__":
    main()
