"""Embedder throughput on this machine: images/s end to end (JPEG decode + preprocessing + forward,
decoding overlapped with inference) against the raw forward pass alone on ready tensors, in one run.

    .venv/bin/python bench/embedder.py --images 128 --batch-size 32

The model is the real google/siglip-base-patch16-224 architecture (SiglipConfig defaults: ViT-B/16,
224 px, 768-d) with random weights: speed does not depend on the weights, and no hub is needed.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def build_base_checkpoint(path: Path) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    from tests.tiny_models import small_sentencepiece  # the tokenizer only matters for text

    tokenizer = SiglipTokenizer(vocab_file=str(small_sentencepiece(path)))
    # the processor settings of google/siglip-base-patch16-224
    processor = SiglipImageProcessor(
        size={"height": 224, "width": 224}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    SiglipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    torch.manual_seed(0)
    SiglipModel(SiglipConfig()).eval().save_pretrained(path)
    return path


def base_checkpoint(home: Path) -> Path:
    """The base-size checkpoint (random weights) beside ``home``, saved the first time."""
    path = home.parent / f"{home.name}-siglip-base-random"
    if not (path / "config.json").exists():
        print(f"saving a siglip-base-sized checkpoint (random weights) to {path} ...", flush=True)
        path.mkdir(parents=True, exist_ok=True)
        build_base_checkpoint(path)
    return path


def product_photos(count: int, size: tuple[int, int] = (800, 800)) -> list[bytes]:
    """JPEGs like product shots: an object on a plain background, some texture, quality 90."""
    rng = np.random.default_rng(0)
    photos = []
    for i in range(count):
        y, x = np.mgrid[0 : size[1], 0 : size[0]]
        background = np.full((*size[::-1], 3), 245.0)
        mask = ((x - size[0] / 2) ** 2 / (size[0] / 3) ** 2 + (y - size[1] / 2) ** 2 / (size[1] / 4) ** 2) < 1
        colour = rng.uniform(0, 255, 3)
        background[mask] = colour + rng.normal(0, 12, (int(mask.sum()), 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
        del i
    return photos


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    from imgsearch.embed.model import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        path = build_base_checkpoint(Path(tmp))
        embedder = Embedder(str(path), device=args.device, batch_size=args.batch_size)
        embedder.load()
        photos = product_photos(args.images)
        mean_kb = sum(map(len, photos)) / len(photos) / 1024
        print(
            f"{args.images} JPEGs of 800x800 ({mean_kb:.0f} KiB avg), batch {args.batch_size}, "
            f"device {embedder.device}, dtype {embedder.dtype}, torch threads {torch.get_num_threads()}",
            flush=True,
        )
        ready = embedder.prepare(photos[: args.batch_size])  # the same preprocessing, done once, reused
        batches = [ready] * (args.images // args.batch_size)
        embedder.forward(ready)  # warm-up

        pipeline, raw = [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            for _ in embedder.iter_embed_images(photos):
                pass
            pipeline.append(args.images / (time.perf_counter() - start))
            start = time.perf_counter()
            for batch in batches:
                embedder.forward(batch)
            raw.append(len(batches) * args.batch_size / (time.perf_counter() - start))
            print(
                f"  repeat {repeat + 1}: pipeline {pipeline[-1]:.1f} img/s, raw forward {raw[-1]:.1f} img/s",
                flush=True,
            )
        p, r = statistics.median(pipeline), statistics.median(raw)
        print("\n| measurement | images/s | ratio |")
        print("|---|---|---|")
        print(f"| raw forward on ready tensors (baseline) | {r:.1f} | 1.00x |")
        print(f"| end to end: JPEG decode + preprocessing + forward | {p:.1f} | {p / r:.2f}x |")


if __name__ == "__main__":
    main()
