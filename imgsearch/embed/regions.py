"""An image's regions: the boxes searched beside the whole image, and their vectors.

A shop photo is often a scene (a model wearing a dress, shoes and a bag); an object that fills a
quarter of it barely moves the whole image's vector. Its regions get rows of their own beside the
whole image's (migration 0040), and a search ranks an image by the closer of the two.

Where boxes come from (:class:`Rule`, set per catalog and per category,
:mod:`imgsearch.db.region_rules`):

* ``grid``: at each scale s from 2 to ``grid``, the s x s cells, plus the (s-1) x (s-1) cells
  shifted by half a cell, so an object lying across a cell border is whole in some region
  (``grid=3``: 4 + 1 + 9 + 4 = 18 regions);
* ``detector``: any ``transformers`` object-detection checkpoint (DETR, RT-DETR, YOLOS: their
  boxes of every class; OWLv2/OWL-ViT: boxes for ``labels``, the shop's own names, or by
  objectness without them).

Boxes below ``min_score`` or ``min_area`` (a share of the image) are dropped, no background
rows; overlapping ones are merged by non-maximum suppression (:func:`suppress`), and an image keeps
at most ``max_regions``. Boxes are ``(x0, y0, x1, y1)`` in the upright image's pixels.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from imgsearch.errors import InvalidRegions

Box = tuple[int, int, int, int]
SOURCES = ("grid", "detector", "off")
MAX_GRID = 4
MAX_REGIONS = 64
OVERLAP = 0.5  # the IoU above which a weaker box is merged into a stronger one
OBJECT_LABEL = "object"  # OWLv2's query when a rule names no labels (its objectness ranks boxes)


@dataclass(frozen=True)
class Rule:
    """Where an image's regions come from (``source``: grid, detector or off)."""

    source: str = "off"
    grid: int | None = None
    detector: str | None = None
    labels: tuple[str, ...] = ()
    min_score: float = 0.3
    min_area: float = 0.02
    max_regions: int = 18

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise InvalidRegions(f"regions come from a grid, a detector or nowhere (off), got {self.source!r}")
        if self.source == "grid" and (
            isinstance(self.grid, bool) or not isinstance(self.grid, int) or not 2 <= self.grid <= MAX_GRID
        ):
            raise InvalidRegions(f"grid must be a whole number from 2 to {MAX_GRID}, got {self.grid!r}")
        if self.source == "detector" and (not isinstance(self.detector, str) or not self.detector.strip()):
            raise InvalidRegions(f"detector must name a checkpoint, got {self.detector!r}")
        for name in ("min_score", "min_area"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise InvalidRegions(f"{name} must be a number from 0 to 1, got {value!r}")
        if (
            isinstance(self.max_regions, bool)
            or not isinstance(self.max_regions, int)
            or not 1 <= self.max_regions <= MAX_REGIONS
        ):
            raise InvalidRegions(f"max_regions must be a whole number from 1 to {MAX_REGIONS}, got {self.max_regions!r}")
        for label in self.labels:
            if not isinstance(label, str) or not label.strip() or len(label) > 100:
                raise InvalidRegions(f"labels must be names of 1 to 100 characters, got {label!r}")

    @property
    def on(self) -> bool:
        return self.source != "off"

    def describe(self) -> str:
        if self.source == "grid":
            how = f"grid {self.grid} ({grid_size(self.grid or 0)} regions)"
        elif self.source == "detector":
            how = f"detector {self.detector}" + (f" ({', '.join(self.labels)})" if self.labels else "")
            how += f", score >= {self.min_score:g}"
        else:
            return "off"
        return f"{how}, area >= {self.min_area:g}, at most {self.max_regions} an image"


OFF = Rule()


def grid_size(n: int) -> int:
    """How many regions ``grid n`` gives an image."""
    return sum(s * s + (s - 1) * (s - 1) for s in range(2, n + 1))


def grid_boxes(width: int, height: int, n: int) -> list[Box]:
    """The regions of ``grid n`` of a ``width`` x ``height`` image, coarse scales first: at each
    scale s from 2 to n, the s x s cells, then the (s-1) x (s-1) cells shifted by half a cell."""
    boxes: list[Box] = []
    for s in range(2, n + 1):
        w, h = width / s, height / s
        for offset, count in ((0.0, s), (0.5, s - 1)):
            for row in range(count):
                for col in range(count):
                    x0, y0 = (col + offset) * w, (row + offset) * h
                    boxes.append((round(x0), round(y0), round(x0 + w), round(y0 + h)))
    return boxes


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def suppress(boxes: Sequence[Sequence[float]], scores: Sequence[float], overlap: float = OVERLAP) -> list[int]:
    """Non-maximum suppression: the positions kept, best score first; a box overlapping a kept
    one by more than ``overlap`` (IoU) is merged into it."""
    kept: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda j: -float(scores[j])):
        if all(iou(boxes[i], boxes[j]) <= overlap for j in kept):
            kept.append(i)
    return kept


def kept_boxes(
    boxes: Sequence[Sequence[float]], scores: Sequence[float], width: int, height: int, rule: Rule
) -> list[tuple[int, Box, float]]:
    """A detector's boxes that a rule keeps, as (position, box, score): clipped to the image, at
    least ``min_score`` and ``min_area``, merged by :func:`suppress`, the best ``max_regions``."""
    clipped: list[Box] = []
    good: list[float] = []
    positions: list[int] = []
    area = float(width * height)
    for position, (box, score) in enumerate(zip(boxes, scores, strict=True)):
        x0, y0 = max(0, round(float(box[0]))), max(0, round(float(box[1])))
        x1, y1 = min(width, round(float(box[2]))), min(height, round(float(box[3])))
        if not np.isfinite(score) or score < rule.min_score or x1 <= x0 or y1 <= y0:
            continue
        if (x1 - x0) * (y1 - y0) < rule.min_area * area:
            continue
        clipped.append((x0, y0, x1, y1))
        good.append(float(score))
        positions.append(position)
    order = suppress(clipped, good)[: rule.max_regions]
    return [(positions[i], clipped[i], good[i]) for i in order]


@dataclass
class Found:
    """An object a detector found: its box, label and score."""

    box: Box
    label: str | None
    score: float


@dataclass
class Detector:
    """A ``transformers`` object-detection checkpoint, loaded once (its own preprocessing: no
    torchvision, whose fast processors transformers falls back from)."""

    checkpoint: str
    labels: tuple[str, ...] = ()
    device: str = "cpu"
    _loaded: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def load(self) -> Any:
        """The processor and model, loaded on the first call; :class:`InvalidRegions` when they can't be."""
        with self._lock:
            if self._loaded is None:
                import transformers

                try:
                    config = transformers.AutoConfig.from_pretrained(self.checkpoint)
                    open_vocabulary = config.model_type in ("owlv2", "owlvit")
                    if open_vocabulary:
                        processor = transformers.AutoProcessor.from_pretrained(self.checkpoint)
                        model = transformers.AutoModelForZeroShotObjectDetection.from_pretrained(self.checkpoint)
                    else:
                        processor = transformers.AutoImageProcessor.from_pretrained(self.checkpoint)
                        model = transformers.AutoModelForObjectDetection.from_pretrained(self.checkpoint)
                except (OSError, ValueError, KeyError) as exc:
                    raise InvalidRegions(
                        f"cannot load the detector {self.checkpoint!r}: {str(exc).splitlines()[0]}"
                    ) from exc
                model.eval().to(self.device)
                self._loaded = (processor, model, open_vocabulary)
        return self._loaded

    def detect(self, image: Image.Image, rule: Rule) -> list[Found]:
        """The objects of one upright RGB image that ``rule`` keeps, best first."""
        import torch

        processor, model, open_vocabulary = self.load()
        width, height = image.size
        with torch.inference_mode():
            if open_vocabulary:
                names = list(self.labels or rule.labels) or [OBJECT_LABEL]
                # names of different lengths padded to the longest, a long one cut to the model's
                # text positions (OWLv2's are 16 tokens)
                longest = model.config.text_config.max_position_embeddings
                inputs = processor(
                    text=[names], images=[image], return_tensors="pt", padding=True, truncation=True, max_length=longest
                ).to(self.device)
                output = model(**inputs)
                boxes, scores, labels = _open_vocabulary(output, names, width, height, bool(self.labels or rule.labels))
            else:
                inputs = processor(images=[image], return_tensors="pt").to(self.device)
                output = model(**inputs)
                found = processor.post_process_object_detection(
                    output, threshold=0.0, target_sizes=[(height, width)]
                )[0]
                boxes = found["boxes"].float().cpu().numpy()
                scores = found["scores"].float().cpu().numpy()
                names_of = getattr(model.config, "id2label", {}) or {}
                labels = [names_of.get(int(i), str(int(i))) for i in found["labels"].cpu().tolist()]
        return [Found(box, labels[i], score) for i, box, score in kept_boxes(boxes, scores, width, height, rule)]


def _open_vocabulary(output: Any, names: list[str], width: int, height: int, named: bool) -> tuple[Any, Any, list[str]]:
    """OWLv2/OWL-ViT's boxes in the image's pixels with their scores: each box's best label's
    probability, or its objectness when the rule names none. The model sees the image padded to a
    square at the bottom and right: its boxes are fractions of that square."""
    import torch

    side = float(max(width, height))
    cx, cy, w, h = output.pred_boxes[0].float().unbind(-1)
    boxes = torch.stack([(cx - w / 2) * side, (cy - h / 2) * side, (cx + w / 2) * side, (cy + h / 2) * side], -1)
    if named:
        probabilities, best = torch.sigmoid(output.logits[0].float()).max(-1)
        labels = [names[int(i)] for i in best.tolist()]
    else:
        objectness = getattr(output, "objectness_logits", None)
        source = objectness[0] if objectness is not None else output.logits[0].float().max(-1).values
        probabilities = torch.sigmoid(source.float())
        labels = [OBJECT_LABEL] * int(probabilities.shape[0])
    return boxes.cpu().numpy(), probabilities.cpu().numpy(), labels


def boxes_for(image: Image.Image, rule: Rule, detector: Detector | None = None) -> list[Box]:
    """The regions ``rule`` gives an upright RGB image (none when it is off)."""
    width, height = image.size
    if rule.source == "grid":
        assert rule.grid is not None
        boxes = [b for b in grid_boxes(width, height, rule.grid) if _area(b) >= rule.min_area * width * height]
        return boxes[: rule.max_regions]
    if rule.source == "detector":
        assert detector is not None
        return [found.box for found in detector.detect(image, rule)]
    return []


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])
