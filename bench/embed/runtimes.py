"""torch float32 against ONNX Runtime float32 and int8 on the CPU, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/embed/runtimes.py --images 64 --drain 96

The model is the google/siglip-base-patch16-224 architecture with random weights (speed doesn't
depend on the weights). For each runtime, taking turns round by round:

1. images/s on the worker path, end to end: 800 px product JPEGs decoded, preprocessed (decoding
   overlapped with the model, as workers run) and embedded, at batch sizes 1, 16 and 32;
2. a text query's latency (the text tower, no cache), p50 over ``--texts`` texts;
3. the quality check's cosines to torch float32 (calibration images and texts);
4. upload to ready: ``--drain`` images uploaded to a catalog on that runtime's model (X for torch,
   X@onnx-int8 for int8) and embedded by the worker pipeline in process, images/s.

Threads: every runtime gets ``IMGSEARCH_TORCH_THREADS`` (default: the machine's cores).

The figure it produces: docs/benchmarks.md, "CPU runtimes: torch, ONNX, int8".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _data import fresh_database
from _models import base_checkpoint, product_photos

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.embed.model import Embedder
from imgsearch.settings import Settings
from imgsearch.work import pipeline

RUNTIMES = ("torch", "onnx", "onnx-int8")
TEXT = "round {round} query {i}: a red leather handbag with a gold clasp and a long strap"


def embedder_for(runtime: str, checkpoint: str, settings: Settings, batch_size: int = 32) -> Embedder:
    name = checkpoint + ("@onnx-int8" if runtime == "onnx-int8" else "")
    embedder = Embedder(
        name,
        runtime="onnx" if runtime == "onnx" else "torch",
        threads=settings.torch_threads,
        home=settings.home,
        batch_size=batch_size,
    )
    embedder.load()
    return embedder


def images_per_second(embedder: Embedder, photos: list[bytes], batch_size: int) -> float:
    start = time.perf_counter()
    for _ in embedder.iter_embed_images(photos, batch_size=batch_size):
        pass
    return len(photos) / (time.perf_counter() - start)


def text_ms(embedder: Embedder, round_: int, count: int) -> list[float]:
    times = []
    for i in range(count):
        start = time.perf_counter()
        embedder.embed_texts([TEXT.format(round=round_, i=i)])
        times.append((time.perf_counter() - start) * 1000)
    return times


def drain_rate(
    runtime: str, checkpoint: str, embedder: Embedder, photos: list[bytes], settings: Settings
) -> float:
    url = fresh_database(settings.home, f"bench_runtime_{runtime.replace('-', '_')}")
    with Catalog.open(url, model=embedder.name, settings=settings) as catalog:
        catalog.add_many({"image": p, "tenant": "acme", "product_id": f"p{i}"} for i, p in enumerate(photos))
        start = time.perf_counter()
        totals = pipeline.drain(
            catalog.engine,
            lambda _model: embedder,
            batch_size=32,
            lease_seconds=600,
            downloads=settings.downloads(),
            progress=False,
        )
        seconds = time.perf_counter() - start
    assert totals.ready == len(photos), totals
    return len(photos) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64, help="images per throughput measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--texts", type=int, default=20, help="text queries per runtime and round")
    parser.add_argument("--drain", type=int, default=96, help="images uploaded and drained per runtime")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    settings = Settings()
    checkpoint = str(base_checkpoint(settings.home))
    import torch

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    threads = settings.torch_threads or torch.get_num_threads()
    settings = settings.model_copy(update={"torch_threads": threads})
    print(f"{os.cpu_count()} cores, {threads} threads per runtime", flush=True)

    embedders: dict[str, Embedder] = {}
    for runtime in RUNTIMES:
        start = time.perf_counter()
        embedders[runtime] = embedder_for(runtime, checkpoint, settings)
        print(
            f"{runtime}: loaded in {time.perf_counter() - start:.1f} s (export and check the first time)",
            flush=True,
        )
    photos = product_photos(args.images)
    throughput: dict[str, dict[int, list[float]]] = {r: {1: [], 16: [], 32: []} for r in RUNTIMES}
    texts: dict[str, list[float]] = {r: [] for r in RUNTIMES}
    for round_ in range(args.rounds):
        for batch in (1, 16, 32):
            order = RUNTIMES if round_ % 2 == 0 else RUNTIMES[::-1]
            for runtime in order:
                rate = images_per_second(embedders[runtime], photos, batch)
                throughput[runtime][batch].append(rate)
                print(f"round {round_} batch {batch:>2} {runtime:<9} {rate:6.2f} img/s", flush=True)
        for runtime in RUNTIMES:
            texts[runtime] += text_ms(embedders[runtime], round_, args.texts)
    drains = {}
    drain_photos = product_photos(args.drain)
    for runtime in ("torch", "onnx-int8"):
        drains[runtime] = drain_rate(runtime, checkpoint, embedders[runtime], drain_photos, settings)
        print(f"upload to ready, {runtime}: {drains[runtime]:.2f} img/s", flush=True)
    embedded.stop(settings.home)

    base = {b: statistics.median(throughput["torch"][b]) for b in (1, 16, 32)}
    text_base = statistics.median(texts["torch"])
    print()
    print(f"{args.images} JPEGs of 800x800, {threads} threads, rounds {args.rounds}; median of rounds")
    print()
    print(
        "| runtime | batch 1 img/s | batch 16 | batch 32 | text query p50 | quality check: images min / mean | texts min / mean |"
    )
    print("|---|---|---|---|---|---|---|")
    results: dict[str, Any] = {}
    for runtime in RUNTIMES:
        rates = {b: statistics.median(throughput[runtime][b]) for b in (1, 16, 32)}
        p50 = statistics.median(texts[runtime])
        quality = embedders[runtime].quality
        check = (
            "(the reference)"
            if quality is None
            else f"{quality.image_min:.5f} / {quality.image_mean:.5f} | {quality.text_min:.5f} / {quality.text_mean:.5f}"
        )
        if quality is None:
            check += " | "
        cells = " | ".join(f"{rates[b]:.2f} ({rates[b] / base[b]:.2f}x)" for b in (1, 16, 32))
        print(f"| {runtime} | {cells} | {p50:.1f} ms ({p50 / text_base:.2f}x) | {check} |")
        results[runtime] = {
            "rates": rates,
            "text_p50_ms": p50,
            "quality": None if quality is None else quality.describe(),
        }
    print()
    ratio = drains["onnx-int8"] / drains["torch"]
    print("| upload to ready, one worker | img/s | ratio |")
    print("|---|---|---|")
    print(f"| torch (model X) | {drains['torch']:.2f} | 1.00x |")
    print(f"| onnx-int8 (model X@onnx-int8) | {drains['onnx-int8']:.2f} | {ratio:.2f}x |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"results": results, "drain": drains, "raw": throughput}, indent=2)
        )


if __name__ == "__main__":
    main()
