"""A region detector's images a second, against the SigLIP-base embedder's on the same photos:
what ``imgsearch regions set --detector`` adds to a worker's batch.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/embed/detectors.py --images 8

Checkpoints of the real models' sizes with random weights (speed does not depend on the
weights, and no hub is needed), saved once beside IMGSEARCH_HOME: OWLv2 base/16 (960 px, the
open-vocabulary detector ``--labels`` asks for), RT-DETR R50 (640 px) and YOLOS-small (its
default 800 px side). Each detects on ``--images`` 800 x 800 product photos, one at a time (as
``imgsearch.embed.regions.Detector`` does), after one warm-up; the SigLIP base/16 embedder
embeds the same photos, one at a time, as the baseline. ``--device cuda`` where a GPU is lent.

The figure it produces: docs/benchmarks.md, "Regions: objects in scenes".
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _models import base_checkpoint, product_photos

from imgsearch.embed.model import Embedder
from imgsearch.embed.regions import Detector, Rule


def build(kind: str, path: Path) -> Path:
    import torch
    import transformers as t

    if (path / "config.json").exists():
        return path
    print(f"saving a {kind} checkpoint (random weights) to {path} ...", flush=True)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if kind == "owlv2-base":
        from tests.tiny_models import _byte_symbols

        symbols = _byte_symbols()
        vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
        tokenizer = t.CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab)}, merges=[])
        processor = t.Owlv2ImageProcessorPil(size={"height": 960, "width": 960})
        t.Owlv2Processor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
        config = t.Owlv2Config(
            text_config={"vocab_size": len(vocab), "bos_token_id": len(vocab) - 2, "eos_token_id": len(vocab) - 1,
                         "pad_token_id": len(vocab) - 1},
            vision_config={"image_size": 960, "patch_size": 16},
        )  # fmt: skip
        t.Owlv2ForObjectDetection(config).eval().save_pretrained(path)
    elif kind == "rt-detr-r50":
        t.RTDetrImageProcessorPil(size={"height": 640, "width": 640}).save_pretrained(path)
        t.RTDetrForObjectDetection(t.RTDetrConfig()).eval().save_pretrained(path)
    else:
        t.YolosImageProcessorPil(size={"shortest_edge": 800, "longest_edge": 800}).save_pretrained(path)
        config = t.YolosConfig(hidden_size=384, num_attention_heads=6, intermediate_size=1536, image_size=[800, 800])
        t.YolosForObjectDetection(config).eval().save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", default="owlv2-base,rt-detr-r50,yolos-small")
    args = parser.parse_args()
    home = Path(os.environ.get("IMGSEARCH_HOME", "/tmp/imgs-bench"))
    photos = product_photos(args.images + 1)
    pictures = [Image.open(io.BytesIO(p)).convert("RGB") for p in photos]
    embedder = Embedder(str(base_checkpoint(home)), device=args.device, batch_size=1)
    embedder.embed_images(photos[:1])
    start = time.perf_counter()
    for photo in photos[1:]:
        embedder.embed_images([photo])
    baseline = args.images / (time.perf_counter() - start)
    print(f"| siglip-base/16 embedder (baseline) | {baseline:.2f} | 1.00x |", flush=True)
    for kind in args.kinds.split(","):
        path = build(kind, home.parent / f"{home.name}-{kind}-random")
        labels = ("dress", "bag", "shoe") if kind.startswith("owl") else ()
        detector = Detector(str(path), labels=labels, device=args.device)
        rule = Rule("detector", detector=str(path), labels=labels, min_score=0.0, min_area=0.0, max_regions=18)
        detector.detect(pictures[0], rule)
        start = time.perf_counter()
        for picture in pictures[1:]:
            detector.detect(picture, rule)
        rate = args.images / (time.perf_counter() - start)
        print(f"| {kind} | {rate:.2f} | {rate / baseline:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
