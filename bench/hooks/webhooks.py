"""What webhooks cost an upload, and how soon a shop hears of a change, in one run.

    .venv/bin/python bench/hooks/webhooks.py --rows 3000 --seconds 20

1. **The outbox's cost on the write path.** ``add_many`` of rows with their vectors (768
   numbers: each row is committed ``ready``, so the image trigger fires for every row, the most
   the outbox can add to an upload; a worker's store adds the same per image, beside a model's
   forward pass that costs far more). Three configurations taking turns batch by batch: the
   webhook triggers disabled (the baseline: no outbox at all), the triggers on and no endpoint
   (one index probe per row), and an endpoint taking ``image.ready`` (an event and a delivery
   per row). Ratios are against the baseline of the same run.
2. **Event lag under an upload load**: 10 uploads committed every 100 ms for ``--seconds``
   while a ``Deliverer`` in a process of its own (what each ``imgsearch worker`` process runs)
   posts to a receiver in another; the lag is from the upload's commit (``add_many``
   returning) to the receiver reading the event, p50 and p99.

The embedded PostgreSQL of a fresh IMGSEARCH_HOME under the system's temporary folder; no model
is loaded (the vectors are given).

The figure it produces: docs/benchmarks.md, "Webhooks".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _data import fresh_database

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.hooks.delivery import Deliverer
from imgsearch.settings import Settings

TRIGGERS = ("images_webhook_state", "images_webhook_inserted", "images_webhook_deleted")


def _receive(path: str, port_file: str) -> None:
    """A receiver process: each delivery's arrival time and image id, a line each."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with open(path, "a") as out:
                out.write(f"{time.time()} {body['data'].get('image_id')}\n")
            self.send_response(204)
            self.end_headers()

    ThreadingHTTPServer.request_queue_size = 128  # socketserver's 5 drops SYNs of 8 posts at once
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def _deliver(url: str) -> None:
    """A delivering process: what each ``imgsearch worker`` process runs, on an engine of its own."""
    from imgsearch.db.engine import make_engine

    settings = Settings(webhook_allow=["127.0.0.1/32"])
    deliverer = Deliverer(make_engine(url), settings.webhooks())
    deliverer.start()
    deliverer.join()


@contextmanager
def receiver(folder: Path) -> Iterator[tuple[str, Path]]:
    """A receiver in a process of its own (as a shop's is): its URL and the file of arrivals."""
    arrivals, port_file = folder / "arrivals.txt", folder / "port.txt"
    process = multiprocessing.get_context("spawn").Process(target=_receive, args=(str(arrivals), str(port_file)))
    process.start()
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text()}/hooks", arrivals
    finally:
        process.terminate()
        process.join(10)


def rows(count: int, dim: int, start: int, tenant: str, rng: np.random.Generator) -> list[dict[str, object]]:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return [{"embedding": v, "tenant": tenant, "product_id": f"p{start + i}", "category": "mugs", "price": 10}
            for i, v in enumerate(vectors)]  # fmt: skip


def set_triggers(catalog: Catalog, enabled: bool) -> None:
    with catalog.engine.begin() as conn:
        for trigger in TRIGGERS:
            conn.execute(text(f"ALTER TABLE imgsearch.images {'ENABLE' if enabled else 'DISABLE'} TRIGGER {trigger}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3000, help="rows uploaded each way")
    parser.add_argument("--batch", type=int, default=100, help="rows per add_many")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the lag run")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="imgsearch-bench-hooks-"))
    try:
        url = fresh_database(home, "bench_webhooks")
        settings = Settings(model="google/siglip-base-patch16-224", webhook_allow=["127.0.0.1/32"], wake_workers=False)
        with Catalog.open(url, settings=settings) as catalog:
            dim = catalog.dim
            catalog.add_many(rows(200, dim, 0, "warmup", np.random.default_rng(0)), progress=False)  # caches
            catalog.webhooks.add("http://127.0.0.1:9/never-delivered", tenant="subscribed", events=["image.ready"])
            names = ["no outbox (triggers off)", "no endpoint", "an endpoint"]
            shops = dict(zip(names, ["baseline", "plain", "subscribed"], strict=True))
            times: dict[str, float] = dict.fromkeys(names, 0.0)
            rng = np.random.default_rng(1)
            batches = args.rows // args.batch
            for i in range(batches * 3):
                # the configurations take turns batch by batch: the HNSW graph grows as rows go in,
                # and each configuration meets it at every size
                name = names[i % 3]
                set_triggers(catalog, name != names[0])
                chunk = rows(args.batch, dim, i * args.batch, shops[name], rng)
                started = time.perf_counter()
                catalog.add_many(chunk, progress=False)
                times[name] += time.perf_counter() - started
                if i % 30 == 29:
                    print(f"{(i + 1) // 3}/{batches} batches ...", file=sys.stderr, flush=True)
            set_triggers(catalog, True)
            base = times[names[0]]
            print(f"\n| upload of {args.rows} rows with vectors, each way | rows/s | time vs no outbox |\n|---|---|---|")
            for name in names:
                print(f"| {name} | {args.rows / times[name]:,.0f} | {times[name] / base:.3f}x |")
        # the lag under an upload load, on a catalog of its own (small: uploads don't wait on a big
        # graph); the receiver and the delivering worker each in a process of its own
        url = fresh_database(home, "bench_webhooks_lag")
        with Catalog.open(url, settings=settings) as catalog, receiver(home) as (hook_url, arrived):
            dim = catalog.dim
            catalog.webhooks.add(hook_url, tenant="subscribed", events=["image.ready"])
            worker = multiprocessing.get_context("spawn").Process(target=_deliver, args=(url,))
            worker.start()
            rng = np.random.default_rng(7)
            catalog.add_many(rows(1, dim, -1, "subscribed", rng), progress=False)  # once it arrives, the
            while not arrived.exists():  # worker is up and the clock starts
                time.sleep(0.05)
            arrived.unlink()
            sent = 0
            started = time.monotonic()
            committed: dict[int, float] = {}  # image id -> when its upload's commit returned
            while time.monotonic() < started + args.seconds:  # 10 uploads every 100 ms: up to 100 a second
                ids = catalog.add_many(rows(10, dim, sent, "subscribed", rng), progress=False)
                committed.update(dict.fromkeys(ids, time.time()))
                sent += 10
                time.sleep(0.1)
            took = time.monotonic() - started
            wait_until = time.monotonic() + 30
            while (not arrived.exists() or len(arrived.read_text().splitlines()) < sent) and time.monotonic() < wait_until:
                time.sleep(0.1)
            worker.terminate()
            worker.join(10)
            got = [line.split() for line in arrived.read_text().splitlines()]
            lags = sorted(float(at) - committed[int(image)] for at, image in got)
            p50, p99 = lags[len(lags) // 2], lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            print("\n| events | arrived | uploads/s | lag p50 | lag p99 |\n|---|---|---|---|---|")
            print(f"| {sent} | {len(got)} | {sent / took:,.0f} | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms |")
    finally:
        embedded.stop(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
