"""What recording shoppers' feedback costs searches: the query log on every search, and 1,000
events/s sustained into ``record_events`` while searches run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/feedback_load.py --rows 20000
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/feedback_load.py --rows 1000000 --data calibrated --database bench_search_cal1m

The 20k-row catalog of bench/search/quick.py (database ``bench_quick``, 768-d, tenant ``acme``;
``--data calibrated``: vectors shaped as real embeddings are, bench/search/calibration.py, in
``bench_quick_calibrated``; ``--database``: another database's catalog, search.py's 1M one).
Searches are vector queries of the tenant, k=10, in blocks that rotate between three conditions,
so the box's drift falls on each alike:

* **no log**: ``IMGSEARCH_RECORD_QUERIES=false``: the search alone (the baseline);
* **floor**: "no log" and then a bare ``SELECT 1`` on the catalog's pool for writes, in autocommit: the least
  any synchronous record of a search adds (a round trip);
* **log**: every search recorded with its hits (the default: written off the search's path, by
  the catalog's recorder thread; the run checks at the end that each one's row is there);
* **log + 1k events/s**: as "log", while another process records click events on earlier
  searches' hits, 100 per batch, 10 batches a second (``catalog.record_events``, all checked).

Target (issue 44): events at 1,000/s slow searches by at most 10% ("log + events" over "log").
The loader's achieved rate is printed beside it.

The figure it produces: docs/benchmarks.md, "Feedback load".
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))

from _catalog import DATA, database_url, load

from imgsearch import Catalog
from imgsearch.db import embedded
from imgsearch.settings import Settings

TENANT = "acme"
MODEL = "google/siglip-base-patch16-224"


def loader(url: str, targets: list[tuple[str, str]], active: Any, stop: Any, sent: Any, rate: int) -> None:
    """Record ``rate`` click events a second while ``active`` is set, in batches of 100."""
    batch, interval = 100, 100 / rate
    with Catalog.open(url, settings=Settings(model=MODEL)) as catalog:
        i = 0
        next_at = time.perf_counter()
        while not stop.is_set():
            if not active.is_set():
                time.sleep(0.01)
                next_at = time.perf_counter()
                continue
            events = []
            for _ in range(batch):
                query_id, product_id = targets[i % len(targets)]
                events.append({"query_id": query_id, "action": "click", "object_id": product_id, "position": 1})
                i += 1
            catalog.record_events(TENANT, events)
            with sent.get_lock():
                sent.value += batch
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--searches", type=int, default=3000, help="per condition")
    parser.add_argument("--block", type=int, default=250)
    parser.add_argument("--rate", type=int, default=1000, help="events a second")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()
    settings = Settings()
    home = settings.home
    url = database_url(
        home, args.database or ("bench_quick" if args.data == "clustered" else f"bench_quick_{args.data}")
    )
    quiet = Settings(model=MODEL, record_queries=False)
    try:
        with Catalog.open(url, settings=Settings(model=MODEL)) as logged, Catalog.open(url, settings=quiet) as plain:
            data, _ = load(logged, args.rows, seed=11, data_kind=args.data)
            rng = np.random.default_rng(5)
            queries = data[rng.integers(0, len(data), 500)] + rng.standard_normal((500, data.shape[1])) * 0.02
            print("recording 500 searches for the loader's events ...", flush=True)
            targets = []
            for q in queries:
                found = logged.search(vector=q, tenant=TENANT, k=10)
                targets.append((str(found.query_id), found[0].product_id))
            ctx = mp.get_context("spawn")
            active, stop, sent = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
            process = ctx.Process(target=loader, args=(url, targets, active, stop, sent, args.rate))
            process.start()
            times: dict[str, list[float]] = {"no log": [], "floor": [], "log": [], "log + events": []}

            def round_trip() -> None:  # what any synchronous write of a search must add
                with plain.engine.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("SELECT 1")

            loaded_seconds, loaded_events = 0.0, 0
            logged_ids: list[str] = []
            blocks = args.searches // args.block
            for block in range(blocks):
                for name in times:
                    catalog = plain if name in ("no log", "floor") else logged
                    if name == "log + events":
                        active.set()
                        time.sleep(0.3)  # the loader at its pace
                        started, before = time.perf_counter(), sent.value
                    for j in range(args.block):
                        q = queries[(block * args.block + j) % len(queries)]
                        t = time.perf_counter()
                        answer = catalog.search(vector=q, tenant=TENANT, k=10)
                        if name == "floor":
                            round_trip()
                        times[name].append(time.perf_counter() - t)
                        if catalog is logged:
                            logged_ids.append(str(answer.query_id))
                    if name == "log + events":
                        loaded_seconds += time.perf_counter() - started
                        loaded_events += sent.value - before
                        active.clear()
                print(f"  block {block + 1}/{blocks}", flush=True)
            stop.set()
            process.join(timeout=30)
        # the catalogs closed: every row handed over is written; each logged search has one
        with Catalog.open(url, settings=quiet) as check, check.engine.connect() as conn:
            recorded = conn.execute(
                text(
                    "SELECT count(*) FROM imgsearch.search_queries WHERE query_id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": logged_ids},
            ).scalar_one()
        print(f"recorded: {recorded} of the {len(logged_ids)} logged searches")
    finally:
        embedded.stop(home)
    base = statistics.median(times["no log"])
    logged_p50 = statistics.median(times["log"])
    print()
    print(f"loader: {loaded_events} events recorded in the {loaded_seconds:.1f} s of loaded blocks "
          f"({loaded_events / loaded_seconds:,.0f}/s)")  # fmt: skip
    print("| condition | p50 ms | p95 ms | / no log | / log |")
    print("|---|---:|---:|---:|---:|")
    for name, found in times.items():
        p50, p95 = statistics.median(found), float(np.percentile(found, 95))
        print(f"| {name} | {p50 * 1000:.2f} | {p95 * 1000:.2f} | {p50 / base:.2f}x | {p50 / logged_p50:.2f}x |")


if __name__ == "__main__":
    main()
