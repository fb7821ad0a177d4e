"""Upload-to-ready throughput through real Celery workers, against the embedder alone, in one run.

    .venv/bin/python bench/work/workers.py --images 64

The real google/siglip-base-patch16-224 architecture with random weights (bench/embed/embedder.py), the
embedded PostgreSQL (IMGSEARCH_HOME) and Redis at IMGSEARCH_REDIS_URL. For each worker count the
workers are started and warmed up (model loaded, one image embedded) before the clock starts; the
clock runs from the first upload to the last image marked ready. The embedder alone on the same
images is measured before and after each worker configuration, which is compared with the mean.

The figure it produces: docs/benchmarks.md, "Upload to ready through Celery workers".
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _data import fresh_database
from _models import build_base_checkpoint, product_photos

from imgsearch import Catalog
from imgsearch.embed.allocator import retain_freed_memory
from imgsearch.embed.model import Embedder
from imgsearch.settings import Settings

DB = "bench_workers"


def ready_count(catalog: Catalog) -> int:
    with catalog.engine.connect() as conn:
        return int(
            conn.execute(text("SELECT count(*) FROM imgsearch.images WHERE state = 'ready'")).scalar_one()
        )


def wait_ready(catalog: Catalog, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while ready_count(catalog) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {count} ready images")
        time.sleep(0.2)


def through_workers(
    base: Settings, checkpoint: Path, photos: list[bytes], workers: int, args: argparse.Namespace
) -> float:
    """images/s from the first upload to the last image ready, through ``workers`` processes."""
    url = fresh_database(base.home, DB)
    queue = f"imgsearch-bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=base.redis_url, queue=queue, wake_workers=True, batch_size=args.batch_size)
    env = {
        **os.environ,
        "IMGSEARCH_DATABASE_URL": url,
        "IMGSEARCH_MODEL": str(checkpoint),
        "IMGSEARCH_QUEUE": queue,
        "IMGSEARCH_BATCH_SIZE": str(args.batch_size),
        "IMGSEARCH_REDIS_URL": base.redis_url,
    }
    with Catalog.open(url, model=str(checkpoint), settings=settings) as catalog:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imgsearch", "worker", "--concurrency", str(workers)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            for i in range(workers):  # warm every worker process: model loaded before timing
                catalog.add(image=photos[i], tenant="bench", product_id=f"warm{i}")
            wait_ready(catalog, workers, 300)
            start = time.perf_counter()
            catalog.add_many(
                {"image": photo, "tenant": "bench", "product_id": f"p{i}"}
                for i, photo in enumerate(photos[2:])
            )
            wait_ready(catalog, workers + args.images, 1800)
            return args.images / (time.perf_counter() - start)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    args = parser.parse_args()

    base = Settings()
    # the same allocator setting as the workers (imgsearch/embed/allocator.py), so the baseline
    # is the embedder at its best, not a process whose heap happens to page-fault less or more
    retain_freed_memory(Settings(retain_freed_memory=True))
    photos = product_photos(args.images + 2)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_base_checkpoint(Path(tmp))
        embedder = Embedder(str(checkpoint), batch_size=args.batch_size)
        embedder.load()
        embedder.embed_images(photos[:2])  # warm-up

        def alone() -> float:
            start = time.perf_counter()
            embedder.embed_images(photos[2:])
            rate = args.images / (time.perf_counter() - start)
            print(f"embedder alone: {rate:.2f} images/s", flush=True)
            return rate

        # the baseline is measured before and after each worker configuration, which is compared
        # with the mean of the two: the machine's speed drifts over a run
        baselines = [alone()]
        rows: list[tuple[str, float, float]] = []
        for workers in args.workers:
            rate = through_workers(base, checkpoint, photos, workers, args)
            baselines.append(alone())
            reference = (baselines[-2] + baselines[-1]) / 2
            print(f"{workers} worker process(es): {rate:.2f} images/s ({rate / reference:.2f}x)", flush=True)
            name = f"upload to ready, {workers} worker process{'es' if workers > 1 else ''}"
            rows.append((name, rate, reference))

    print(f"\n{args.images} JPEGs of 800x800, batch {args.batch_size}, {os.cpu_count()} CPU cores\n")
    print(
        "embedder alone, in-process (baseline): " + ", ".join(f"{b:.2f}" for b in baselines) + " images/s\n"
    )
    print("| path | images/s | baseline (mean of the runs before and after) | ratio |")
    print("|---|---|---|---|")
    for name, rate, reference in rows:
        print(f"| {name} | {rate:.2f} | {reference:.2f} | {rate / reference:.2f}x |")


if __name__ == "__main__":
    main()
