"""The catalog's categories (``Catalog.categories``, ``GET /v1/categories``, which the page asks for
on every load): from the kept facet counts against counting the products, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/categories.py --rows 100000 --data calibrated

On bench/search/search.py's catalog (``--rows`` products in 100 categories, one shop; loaded first
if missing). Two statements, in turns, 3 rounds of 10, p50 from checkout to the last row:

* **counted** (the baseline, before 2026-11-29; still a Citus cluster's): the products with a
  search row of the model, grouped by category;
* **kept** (``imgsearch.db.lookups``): the sums of the facet counts the triggers keep
  (migration 0039) under ``facet = 'category'``.

Each for the shop and across shops (an admin's); both answers are checked to be the same.

The figure it produces: docs/benchmarks.md, "Hybrid search" (the catalog's categories).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import stored_catalog

from imgsearch.db import lookups

WAYS = {"counted": lookups._counted_categories, "kept": lookups._kept_categories}


def answer(engine: Engine, way: str, model_id: int, shop: str | None) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(WAYS[way](model_id, shop).limit(1000))]
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", choices=("clustered", "calibrated"), default="clustered")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()
    url, _, _, model_id = stored_catalog(args.rows, args.data, args.database)
    engine = create_engine(url, pool_size=1)
    print(f"\n| {args.rows:,} products | counted p50 ms | kept p50 ms | kept / counted |")
    print("|---|---:|---:|---:|")
    for caller, shop in (("the shop", "acme"), ("across shops", None)):
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        answers: dict[str, list[Any]] = {}
        for round_ in range(3):
            for _ in range(10):
                for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
                    took, answers[way] = answer(engine, way, model_id, shop)
                    times[way].append(took)
        assert answers["counted"] == answers["kept"], f"{caller}: the answers differ"
        counted, kept = (statistics.median(times[way]) * 1000 for way in WAYS)
        print(f"| {caller} ({len(answers['kept'])} categories) | {counted:.2f} | {kept:.2f} | **{kept / counted:.3f}x** |")
    engine.dispose()


if __name__ == "__main__":
    main()
