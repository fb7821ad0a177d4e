"""``imgsearch.search_text`` from SQL against the library's text search, in one run.

    .venv/bin/python bench/search/sql_text.py --rows 20000 --queries 40 --seconds 20 [--data calibrated]

On a catalog of ``--rows`` 768-d vectors, with a base-size SigLIP (``SiglipConfig()``'s sizes,
random weights: speed, not quality) in one ``imgsearch worker`` and in this process:

1. **First time**: a text nobody asked for before. ``search_text`` over a psycopg connection (the
   request over the loopback, the worker's forward pass, the answer, the search) against
   ``catalog.search(text=...)`` in process (its forward pass, the search). Target <= 1.2x.
2. **Cached**: ``search_text`` of a text already embedded against ``search_vector`` with the same
   vector as a parameter. Target <= 1.3x.
3. **Throughput**: 8 console sessions at once, each a closed loop of new texts, for ``--seconds``.

The two ways take turns query by query, in alternating order. Each p50 is over ``--queries``.

The figure it produces: docs/benchmarks.md, "Text search from SQL".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg
import redis
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import calibrated_with_labels
from _models import build_models

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.settings import Settings

CONSOLES = 8
REDIS_URL = "redis://127.0.0.1:6379/0"


def connect(url: str) -> psycopg.Connection:
    parsed = make_url(url)
    return psycopg.connect(
        host=parsed.query["host"], user="postgres", dbname=parsed.database, autocommit=True
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument(
        "--data",
        choices=("random", "calibrated"),
        default="random",
        help="the rows' vectors: normal noise, or shaped as real embeddings are (bench/_catalog.py)",
    )
    args = parser.parse_args()

    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="imgsearch-bench-sql-text-") as folder:
        model = build_models(Path(folder))["base"]
        url = embedded.recreate_database(settings.home, "bench_sql_text")
        bench_settings = Settings(model=str(model))
        with Catalog.open(url, model=str(model), settings=bench_settings) as catalog:
            rng = np.random.default_rng(0)
            vectors = (
                calibrated_with_labels(args.rows, catalog.dim, seed=0)[0]
                if args.data == "calibrated"
                else rng.standard_normal((args.rows, catalog.dim))
            )
            print(f"loading {args.rows} rows ...", flush=True)
            catalog.add_many(
                {
                    "embedding": vectors[i],
                    "tenant": "acme",
                    "product_id": f"p{i}",
                    "category": f"c{i % 20}",
                    "price": float(i % 200),
                }
                for i in range(args.rows)
            )
            catalog.embedder.embed_texts(["warm the library's model up"])
            queue = f"imgsearch-bench-{uuid.uuid4().hex[:8]}"
            env = {k: v for k, v in os.environ.items() if not k.startswith("IMGSEARCH_")}
            env.update(
                IMGSEARCH_DATABASE_URL=url,
                IMGSEARCH_MODEL=str(model),
                IMGSEARCH_REDIS_URL=REDIS_URL,
                IMGSEARCH_QUEUE=queue,
                IMGSEARCH_DEVICE="cpu",
                HF_HUB_OFFLINE="1",
            )
            log = Path(folder) / "worker.log"
            with open(log, "wb") as out:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "imgsearch", "worker", "--no-beat"],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                report = run(catalog, url, args, log)
            finally:
                worker.kill()
                worker.wait()
                redis.Redis.from_url(REDIS_URL).delete(queue)
    show(report, args)


def run(catalog: Catalog, url: str, args: argparse.Namespace, log: Path) -> dict[str, object]:
    console = connect(url)
    console.execute("SET imgsearch.text_timeout = 60")
    print("waiting for the worker's model ...", flush=True)
    deadline = time.monotonic() + 180
    while "embedder" not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise SystemExit(f"the worker did not start: {log}")
        time.sleep(0.5)
    for i in range(3):  # warm: the loopback connection, the worker's first passes
        console.execute("SELECT * FROM imgsearch.search_text(%s, 10)", (f"warm up {i}",)).fetchall()
        catalog.search(text=f"warm the library {i}", k=10)

    first: dict[str, list[float]] = {"sql": [], "library": []}
    print(f"1. first-time texts, {args.queries} each way ...", flush=True)
    for i in range(args.queries):
        ways = [
            (
                "sql",
                lambda i=i: console.execute(
                    "SELECT * FROM imgsearch.search_text(%s, 10, category => 'c3')",
                    (f"sql text number {i} red shoe",),
                ).fetchall(),
            ),
            (
                "library",
                lambda i=i: catalog.search(text=f"library text number {i} red shoe", k=10, category="c3"),
            ),
        ]
        for name, fn in ways if i % 2 == 0 else ways[::-1]:
            first[name].append(timed(fn))

    cached: dict[str, list[float]] = {"sql": [], "vector": []}
    print(f"2. cached texts, {args.queries} each way ...", flush=True)
    for i in range(args.queries):
        query = f"sql text number {i} red shoe"
        vector = console.execute(
            "SELECT embedding::text FROM imgsearch.text_embeddings WHERE text = %s", (query,)
        ).fetchone()[0]
        ways = [
            (
                "sql",
                lambda q=query: console.execute(
                    "SELECT * FROM imgsearch.search_text(%s, 10, category => 'c3')", (q,)
                ).fetchall(),
            ),
            (
                "vector",
                lambda v=vector: console.execute(
                    "SELECT * FROM imgsearch.search_vector(%s::vector, 10, category => 'c3')", (v,)
                ).fetchall(),
            ),
        ]
        for name, fn in ways if i % 2 == 0 else ways[::-1]:
            cached[name].append(timed(fn))

    print(f"3. {CONSOLES} consoles at once for {args.seconds:g} s ...", flush=True)
    done = [0] * CONSOLES
    stop = time.monotonic() + args.seconds

    def loop(n: int) -> None:
        with connect(url) as conn:
            conn.execute("SET imgsearch.text_timeout = 60")
            count = 0
            while time.monotonic() < stop:
                conn.execute(
                    "SELECT * FROM imgsearch.search_text(%s, 10)", (f"console {n} text {count}",)
                ).fetchall()
                count += 1
            done[n] = count

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(CONSOLES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    forward = [timed(lambda i=i: catalog.embedder.embed_texts([f"forward pass {i}"])) for i in range(10)]
    console.close()
    return {
        "first": {k: statistics.median(v) * 1000 for k, v in first.items()},
        "cached": {k: statistics.median(v) * 1000 for k, v in cached.items()},
        "throughput": sum(done) / args.seconds,
        "forward": statistics.median(forward) * 1000,
    }


def show(report: dict[str, object], args: argparse.Namespace) -> None:
    first, cached = report["first"], report["cached"]
    assert isinstance(first, dict) and isinstance(cached, dict)
    print()
    print("| query | search_text p50 | baseline | baseline p50 | ratio | target |")
    print("|---|---|---|---|---|---|")
    print(
        f"| a text asked for the first time | {first['sql']:.1f} ms | `catalog.search(text=...)` in process "
        f"| {first['library']:.1f} ms | **{first['sql'] / first['library']:.2f}x** | <= 1.2x |"
    )
    print(
        f"| a cached text | {cached['sql']:.2f} ms | `search_vector` with its vector "
        f"| {cached['vector']:.2f} ms | **{cached['sql'] / cached['vector']:.2f}x** | <= 1.3x |"
    )
    print()
    print(
        f"{CONSOLES} consoles, new texts, {args.seconds:g} s: {report['throughput']:.1f} searches/s; "
        f"the text tower's forward pass alone, one text: {report['forward']:.1f} ms"
    )


if __name__ == "__main__":
    main()
