"""The small detector's recipe: its canvases place drawn products apart, with their boxes; a short
training writes a checkpoint that a catalog's detector rule takes, as it takes any
``transformers`` detection checkpoint (the full training's figures: docs/benchmarks.md, "Regions")."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from imgsearch import Catalog
from imgsearch.samples import dataset, small_detector
from imgsearch.settings import Settings


def test_canvases_hold_their_products_apart_with_their_boxes() -> None:
    drawn = dataset.draw(4, seed=3, size=64)
    image, boxes = small_detector.canvas(drawn, random.Random(5), 128)
    assert image.size == (128, 128) and 1 <= len(boxes) <= 4
    pixels = np.asarray(image, dtype=np.int16)
    background = pixels[0, 0]
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128 and x1 - x0 >= 32
        assert np.abs(pixels[y0:y1, x0:x1] - background).sum() > 0  # a drawing is there
        for other in boxes[i + 1 :]:  # none overlaps another
            assert x1 <= other[0] or other[2] <= x0 or y1 <= other[1] or other[3] <= y0
    made = small_detector.canvases(10, seed=7, size=128)
    assert all(len(boxes) == len(kinds) >= 1 and set(kinds) <= set(dataset.KINDS) for _, boxes, kinds in made)
    assert [b for _, b, _ in made] == [b for _, b, _ in small_detector.canvases(10, seed=7, size=128)]  # seeded


def test_a_short_training_gives_a_checkpoint_a_detector_rule_takes(
    tmp_path: Path, database_url: str, tiny_siglip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short = {**small_detector.RECIPE, "train_canvases": 24, "held_out_canvases": 4, "steps": 3, "batch_size": 8}
    monkeypatch.setattr(small_detector, "RECIPE", short)
    folder = small_detector.ensure(tmp_path / "detector")
    record = json.loads((folder / small_detector.RECORD).read_text())
    assert record["recipe"] == short and set(record["held_out"]) == {"found", "named", "boxes_per_canvas"}
    assert small_detector.current(folder) is not None
    assert small_detector.ensure(folder) == folder  # the same recipe: kept, not trained again
    with Catalog.open(database_url, settings=Settings(model=str(tiny_siglip))) as catalog:
        rule = catalog.regions.set(detector=str(folder))  # loads it, or refuses it
        assert (rule.source, rule.detector) == ("detector", str(folder))
