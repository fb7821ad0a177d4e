"""A shop's search with its facets against the same search without them, on search.py's catalog at
its size, in one run: what the facets cost at 1M products.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/facets_scale.py --rows 1000000 --data calibrated --database bench_search_cal1m
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/facets_scale.py --rows 100000 --data calibrated

bench/hybrid.py measures facets at 100k products with text; this script takes search.py's
catalog as it stands (one shop, ``acme``, owning every product; its facet counts kept by the
triggers of migration 0039 as its rows were copied in), and times ``catalog.search`` of a vector
in turns, p50 of ``--queries``:

* search — the shop's search, ``total=False``: the baseline;
* facets — the same with ``facets=True``: the shop's whole facets, read from the kept counts;
* a category — the shop's search in a 1% category, ``total=False``;
* a category, facets — the same with ``facets=True``: the category's facets, read from its kept
  counts (migration 0055; before it, counted in one pass over its products).

The figure it produces: docs/benchmarks.md, "Hybrid search".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import DATA, query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.settings import Settings

WAYS = ("search", "facets", "a category", "a category, facets")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--data", choices=DATA, default="calibrated", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    with Catalog.open(
        url, model="google/siglip-base-patch16-224", settings=Settings(record_queries=False)
    ) as catalog:

        def run(way: str, q: Any, category: str) -> Any:
            where = {"category": category} if way.startswith("a category") else {}
            return catalog.search(
                vector=q, tenant="acme", k=10, total=False, facets=way.endswith("facets"), **where
            )

        first = cases[0]
        for way in WAYS:  # warm-up: each statement built, its plan cached
            run(way, first[0], dict(first[1])["1% near"]["category"])
        sample = run("facets", first[0], "")
        for n, (q, filters) in enumerate(cases):
            category = dict(filters)["1% near"]["category"]
            for way in WAYS[n % len(WAYS) :] + WAYS[: n % len(WAYS)]:  # each way first in turn
                start = time.perf_counter()
                run(way, q, category)
                times[way].append(1000 * (time.perf_counter() - start))
            if (n + 1) % 10 == 0:
                print(f"  {n + 1} queries", flush=True)
    p50 = {way: statistics.median(found) for way, found in times.items()}
    print(
        f"\n{args.rows:,} products ({args.data} vectors), one shop; {args.queries} queries; "
        f"the shop's facets: {len(sample.facets.category)} categories over {sample.facets.total:,} products\n"
    )
    print("| search | p50 ms | against the same search without facets |")
    print("|---|---|---|")
    for way in WAYS:
        base = p50["a category" if way.startswith("a category") else "search"]
        print(f"| {way} | {p50[way]:.2f} | {p50[way] / base:.2f}x |")


if __name__ == "__main__":
    main()
