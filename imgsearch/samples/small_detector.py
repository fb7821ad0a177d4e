"""A small object detector trained here on drawn scenes, so that regions from a detector can be
measured on a machine without the model hub: ``python -m imgsearch.samples.small_detector [FOLDER]``.

A YOLOS (``YolosForObjectDetection``, the transformers checkpoint format any detector rule takes)
from random weights: hidden size 96, 4 layers, 128 x 128 images in 16 x 16 patches, 20 detection
tokens, one class, ``product`` (with a class per kind of product the scores stayed under a rule's
0.3 after 8,000 steps, spread over six kinds; ``"kinds": True`` in the recipe trains those).
Trained with YOLOS's own loss (Hungarian matching, classes, L1 and GIoU of the boxes) on canvases
of 1 to 4 drawn products (:mod:`imgsearch.samples.dataset`) placed at random positions and sizes,
not on the 2 x 2 scenes the quality benchmark searches. About 8 minutes on 2 cores.

The folder is a plain checkpoint with its image processor (``imgsearch regions set --detector
FOLDER`` takes it) and ``small-detector.json``: the recipe, the training time and, on 200 new
canvases, the share of products found (a box of IoU 0.5 or more above the score threshold) and of
boxes naming the right kind. Figures from it are trained-here-on-drawn-data figures.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image

from imgsearch.samples import dataset

RECIPE: dict[str, Any] = {
    "version": 1,
    "image_size": 128,
    "hidden_size": 96,
    "layers": 4,
    "detection_tokens": 20,
    "kinds": False,  # one class, "product": the kinds' classes stayed under the score threshold
    "train_canvases": 3000,
    "held_out_canvases": 200,
    "steps": 10000,
    "batch_size": 24,
    "lr": 2e-4,
    "clip": 1.0,
    "seed": 20261128,
}
RECORD = "small-detector.json"
DEFAULT_FOLDER = Path(".venv") / "small-detector"
Box = tuple[int, int, int, int]


def canvas(items: list[dataset.Drawn], rng: random.Random, size: int) -> tuple[Image.Image, list[Box]]:
    """``items`` pasted at random places and sizes (a quarter to two thirds of the side), apart
    from one another, on one background; the boxes of those that found room."""
    shade = rng.randint(190, 250)
    image = Image.new("RGB", (size, size), (shade, shade, shade))
    boxes: list[Box] = []
    for item in items:
        for _ in range(30):
            side = rng.randint(size // 4, 2 * size // 3)
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            box = (x, y, x + side, y + side)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes):
                with Image.open(io.BytesIO(item.png)) as drawing:
                    image.paste(drawing.convert("RGB").resize((side, side), Image.Resampling.BILINEAR), box[:2])
                boxes.append(box)
                break
    return image, boxes


def canvases(count: int, seed: int, size: int) -> list[tuple[Image.Image, list[Box], list[str]]]:
    """``count`` canvases of 1 to 4 products: each image, its boxes and the products' kinds."""
    rng = random.Random(seed)
    drawn = dataset.draw(count * 4, seed=seed, size=64)
    out = []
    for i in range(count):
        items = drawn[4 * i : 4 * i + rng.randint(1, 4)]
        image, boxes = canvas(items, rng, size)
        out.append((image, boxes, [item.kind for item in items[: len(boxes)]]))
    return out


def _labels() -> tuple[str, ...]:
    """The detector's classes: the kinds of product, or one class, ``product`` (class-agnostic)."""
    return dataset.KINDS if RECIPE["kinds"] else ("product",)


def initialise(folder: Path, seed: int) -> Any:
    """The random-weight YOLOS and its PIL image processor, saved in ``folder``."""
    import torch
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessorPil

    torch.manual_seed(seed)
    size, hidden = RECIPE["image_size"], RECIPE["hidden_size"]
    config = YolosConfig(
        hidden_size=hidden, num_hidden_layers=RECIPE["layers"], num_attention_heads=4,
        intermediate_size=2 * hidden, image_size=[size, size], patch_size=16,
        num_detection_tokens=RECIPE["detection_tokens"], num_labels=len(_labels()),
        id2label=dict(enumerate(_labels())), label2id={name: i for i, name in enumerate(_labels())},
    )  # fmt: skip
    YolosImageProcessorPil(size={"shortest_edge": size, "longest_edge": size}).save_pretrained(folder)
    return YolosForObjectDetection(config)


def _targets(boxes: list[Box], kinds: list[str], size: int) -> dict[str, Any]:
    import torch

    centred = [((x0 + x1) / 2 / size, (y0 + y1) / 2 / size, (x1 - x0) / size, (y1 - y0) / size) for x0, y0, x1, y1 in boxes]
    return {
        "class_labels": torch.tensor([_labels().index(kind) if RECIPE["kinds"] else 0 for kind in kinds], dtype=torch.long),
        "boxes": torch.tensor(centred, dtype=torch.float32).reshape(-1, 4),
    }


def judge(folder: Path, held_out: list[tuple[Image.Image, list[Box], list[str]]]) -> dict[str, float]:
    """Through the detector rule's own path (:class:`imgsearch.embed.regions.Detector`): the share
    of products with a kept box of IoU 0.5 or more, and of those boxes naming the product's kind."""
    from imgsearch.embed.regions import Detector, Rule, iou

    detector = Detector(str(folder), device="cpu")
    rule = Rule("detector", None, str(folder), (), 0.3, 0.02, 8)
    found = named = total = kept = 0
    for image, boxes, kinds in held_out:
        boxes_found = detector.detect(image, rule)
        kept += len(boxes_found)
        for box, kind in zip(boxes, kinds, strict=True):
            total += 1
            best = max(boxes_found, key=lambda f: iou(f.box, box), default=None)
            if best is not None and iou(best.box, box) >= 0.5:
                found += 1
                named += best.label == (kind if RECIPE["kinds"] else "product")
    return {"found": round(found / total, 3), "named": round(named / max(found, 1), 3), "boxes_per_canvas": round(kept / len(held_out), 2)}


def build(folder: Path, *, progress: bool = False) -> dict[str, Any]:
    """Initialise, train and judge the small detector into ``folder`` (replaced when whole)."""
    import torch
    from transformers import YolosImageProcessorPil

    seed, size = RECIPE["seed"], RECIPE["image_size"]
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model = initialise(partial, seed)
    processor = YolosImageProcessorPil.from_pretrained(partial)
    training = canvases(RECIPE["train_canvases"], seed, size)
    held_out = canvases(RECIPE["held_out_canvases"], seed + 1, size)
    pixels = processor(images=[image for image, _, _ in training], return_tensors="pt")["pixel_values"]
    targets = [_targets(boxes, kinds, size) for _, boxes, kinds in training]
    optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=1e-4)
    steps, batch = RECIPE["steps"], RECIPE["batch_size"]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=RECIPE["lr"], total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    model.train()
    start = time.perf_counter()
    done = 0
    while done < steps:
        for chunk in torch.randperm(len(training), generator=order).split(batch):
            if len(chunk) < batch or done >= steps:
                continue
            loss = model(pixel_values=pixels[chunk], labels=[targets[int(i)] for i in chunk]).loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), RECIPE["clip"])
            optimizer.step()
            schedule.step()
            done += 1
            if progress and (done % 100 == 0 or done == steps):
                print(f"  step {done}/{steps}: loss {loss.item():.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    model.eval().save_pretrained(partial)
    record = {
        "recipe": RECIPE,
        "seconds": round(seconds, 1),
        "held_out": judge(partial, held_out),
        "note": "trained here on drawn canvases (imgsearch.samples.dataset); not a real checkpoint's figures",
    }
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return record


def current(folder: Path) -> dict[str, Any] | None:
    """The folder's record when it holds this recipe's detector, else None."""
    try:
        record: dict[str, Any] = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("recipe") == RECIPE and (folder / "config.json").is_file() else None


def ensure(folder: Path = DEFAULT_FOLDER, *, progress: bool = False) -> Path:
    """``folder`` holding the trained small detector: built once (under a lock), then reused."""
    folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if current(folder) is None:
            build(folder, progress=progress)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER)
    args = parser.parse_args()
    if current(args.folder.resolve()) is None:
        print(f"training the small detector into {args.folder} (a few minutes on 2 cores) ...", file=sys.stderr)
    folder = ensure(args.folder, progress=True)
    print(json.dumps(json.loads((folder / RECORD).read_text()), indent=2))


if __name__ == "__main__":
    main()
