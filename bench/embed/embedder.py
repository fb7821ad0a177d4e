"""Embedder throughput on this machine: images/s end to end (JPEG decode + preprocessing + forward,
decoding overlapped with inference) against the raw forward pass alone on ready tensors, in one run.

    .venv/bin/python bench/embed/embedder.py --images 128 --batch-size 32

The model is the real google/siglip-base-patch16-224 architecture (SiglipConfig defaults: ViT-B/16,
224 px, 768-d) with random weights: speed does not depend on the weights, and no hub is needed.

The figure it produces: docs/benchmarks.md, "Embedder throughput (CPU)".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _models import build_base_checkpoint, product_photos


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
