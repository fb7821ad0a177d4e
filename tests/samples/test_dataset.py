"""The drawn dataset: seeded, every look drawable, captions and product rows that name the look,
and scenes of several products."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from imgsearch.samples import dataset


def test_the_same_seed_draws_the_same_products_and_another_seed_others() -> None:
    first, again, other = (dataset.draw(12, seed=s, size=64) for s in (3, 3, 4))
    assert first == again and first != other
    assert all(Image.open(io.BytesIO(item.png)).size == (64, 64) for item in first)


def test_kinds_colours_and_patterns_are_drawn_as_asked_and_named_in_their_texts() -> None:
    items = dataset.draw(60, seed=1, kinds=("mugs", "caps"), patterns=("striped", "dotted"))
    assert {i.kind for i in items} == {"mugs", "caps"} and {i.pattern for i in items} == {"striped", "dotted"}
    item = items[0]
    assert item.caption == f"a {item.colour} {item.pattern} {dataset.SINGULAR[item.kind]}"
    row = dataset.product_row(item, 7, random.Random(0))
    assert row["product_id"] == "p7" and row["category"] == item.kind and row["image"] == item.png
    assert row["title"] == item.caption.removeprefix("a ")
    assert row["attributes"] == {"color": item.colour, "pattern": item.pattern}
    plain = dataset.draw(5, seed=2, patterns=("plain",))
    assert all(p.caption == f"a {p.colour} {dataset.SINGULAR[p.kind]}" for p in plain)
    with pytest.raises(ValueError, match="unknown kinds \\['boats'\\]"):
        dataset.draw(1, seed=1, kinds=("boats",))


def test_a_pattern_is_drawn_on_the_product_alone() -> None:
    rng = random.Random(5)
    plain = dataset.picture("bags", "red", "plain", random.Random(5))
    striped = dataset.picture("bags", "red", "striped", rng)
    changed = int((np.asarray(plain) != np.asarray(striped)).any(axis=2).sum())
    assert 0 < changed < plain.width * plain.height // 3  # the bag's pixels, not the background


def test_a_scene_holds_its_products_in_a_grid() -> None:
    items = dataset.draw(4, seed=8, size=64)
    scene = Image.open(io.BytesIO(dataset.scene(items, seed=1, size=128)))
    assert scene.size == (128, 128)
    for i, item in enumerate(items):  # each cell is its product's drawing, resized
        x, y = (i % 2) * 64, (i // 2) * 64
        cell = np.asarray(scene.convert("RGB"), dtype=int)[y + 1 : y + 63, x + 1 : x + 63]  # inside the outline
        drawn = np.asarray(Image.open(io.BytesIO(item.png)).convert("RGB"), dtype=int)[1:63, 1:63]
        assert np.abs(cell - drawn).mean() < 2
