"""Region boxes: the grid of the contract, the detector's boxes kept by a rule, and NMS."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsearch.embed.regions import Rule, grid_boxes, grid_size, iou, kept_boxes, suppress
from imgsearch.errors import InvalidRegions


def test_grid_three_gives_eighteen_regions_with_the_shifted_cells() -> None:
    boxes = grid_boxes(300, 300, 3)
    assert len(boxes) == grid_size(3) == 4 + 1 + 9 + 4 == 18
    assert boxes[:4] == [(0, 0, 150, 150), (150, 0, 300, 150), (0, 150, 150, 300), (150, 150, 300, 300)]
    assert boxes[4] == (75, 75, 225, 225)  # scale 2's cell shifted by half a cell: the centre
    assert boxes[5] == (0, 0, 100, 100)
    assert boxes[14] == (50, 50, 150, 150)  # scale 3's first shifted cell
    assert all(0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 300 for x0, y0, x1, y1 in boxes)
    assert grid_size(2) == 5 and grid_size(4) == 18 + 16 + 9


def test_an_object_across_a_cell_border_is_whole_in_a_shifted_cell() -> None:
    obj = (120, 120, 180, 180)  # across the centre, where four cells of scale 2 meet
    inside = [b for b in grid_boxes(300, 300, 2) if b[0] <= obj[0] and b[1] <= obj[1] and b[2] >= obj[2] and b[3] >= obj[3]]
    assert inside == [(75, 75, 225, 225)]


def test_suppression_merges_overlaps_and_keeps_the_best() -> None:
    boxes = [(0, 0, 10, 10), (1, 1, 11, 11), (20, 20, 30, 30)]
    assert iou(boxes[0], boxes[1]) > 0.5
    assert suppress(boxes, [0.5, 0.9, 0.7]) == [1, 2]


def test_a_rule_drops_weak_small_and_outside_boxes_and_caps_the_rest() -> None:
    rule = Rule("detector", detector="x", min_score=0.3, min_area=0.05, max_regions=2)
    boxes = [(0, 0, 50, 50), (0, 0, 5, 5), (-10, -10, 60, 40), (50, 50, 100, 100), (60, 0, 99, 40), (0, 0, 100, 100)]
    scores = [0.9, 0.95, 0.8, 0.2, 0.6, float("nan")]
    kept = kept_boxes(boxes, scores, 100, 100, rule)
    # the tiny box (area 0.0025), the weak one and the NaN go; the clipped one overlaps the first
    assert [(i, box) for i, box, _ in kept] == [(0, (0, 0, 50, 50)), (4, (60, 0, 99, 40))]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"source": "mosaic"}, "grid, a detector or nowhere"),
        ({"source": "grid", "grid": 5}, "grid must be"),
        ({"source": "grid", "grid": True}, "grid must be"),
        ({"source": "detector", "detector": " "}, "detector must name"),
        ({"source": "grid", "grid": 2, "min_score": float("nan")}, "min_score"),
        ({"source": "grid", "grid": 2, "min_area": 2}, "min_area"),
        ({"source": "grid", "grid": 2, "max_regions": 0}, "max_regions"),
        ({"source": "detector", "detector": "x", "labels": ("",)}, "labels"),
    ],
)
def test_bad_rules_are_named(fields: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidRegions, match=named):
        Rule(**fields)  # type: ignore[arg-type]


def test_an_open_vocabulary_detector_names_the_shops_labels_or_ranks_by_objectness(tiny_owlv2: Path) -> None:
    from PIL import Image

    from imgsearch.embed.regions import Detector

    picture = Image.new("RGB", (80, 60), (200, 10, 10))  # padded to 80 x 80 for the model
    labels = ("mugs", "leather handbags")  # names of different lengths
    named = Rule("detector", detector=str(tiny_owlv2), labels=labels, min_score=0.0, min_area=0.01, max_regions=64)
    found = Detector(str(tiny_owlv2)).detect(picture, named)
    assert found and {f.label for f in found} <= set(labels)
    assert all(0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 60 for x0, y0, x1, y1 in (f.box for f in found))
    assert all(iou(a.box, b.box) <= 0.5 for i, a in enumerate(found) for b in found[i + 1 :])
    assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
    anything = Rule("detector", detector=str(tiny_owlv2), min_score=0.0, min_area=0.01, max_regions=3)
    objects = Detector(str(tiny_owlv2)).detect(picture, anything)
    assert len(objects) == 3 and {f.label for f in objects} == {"object"}
    # the boxes past the picture's bottom (the model's padding) are not regions of it
    everything = Detector(str(tiny_owlv2)).detect(picture, Rule("detector", detector="x", min_score=0.0, min_area=0.0, max_regions=64))
    assert len(everything) == 12 and max(f.box[3] for f in everything) == 60
