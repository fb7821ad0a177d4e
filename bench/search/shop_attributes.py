"""A shop's attribute filter under its row-level security, against the same filter over the whole
catalog, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/shop_attributes.py --rows 100000 --data calibrated

On bench/search/search.py's catalog (``--database``, or its database for ``--rows`` and
``--data``; loaded first if missing; its one tenant, ``acme``, holds every row), for each query
and each attribute filter (one value of ``bucket``: 0.01% of the products; of ``tone``: 1%; of
``grade``: 10%; spread over the catalog), in turns query by query, ten untimed rounds first:

* **catalog**: ``catalog.search(vector=q, k=10, attributes=...)``: no shop, no row-level security;
  the baseline;
* **shop, no list**: the same with ``tenant="acme"``, its search as it was before migration 0042:
  under the shop's row-level security, testing ``attributes @> ...`` on the shop's products one by
  one (``imgsearch.search.shop_filters.ShopFilters.resolved`` replaced: no list);
* **shop**: the same, as imgsearch runs it: the keys of the shop's matching products read first
  through the attributes' GIN index (``imgsearch._shop_products``), when few enough match
  (``imgsearch.search.shop_filters.LIST_FACTOR``), and the search keeps their rows. A filter found broad (more match) skips the lookup for
  a minute: after the untimed rounds, the 10% filter's ten values are all known broad.

Each search's hits are checked against the catalog's.

PostgreSQL lets a condition use an index under row-level security only when its operator is
``LEAKPROOF`` (or it is the policy's own). jsonb's ``@>`` (``jsonb_contains``) is not, so a
shop's attribute condition can't use the GIN index on ``products.attributes``.

The figure it produces: docs/benchmarks.md, "Price filters" (a shop's attribute filter).
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
from imgsearch.search.filters import Filters
from imgsearch.search.shop_filters import ShopFilters
from imgsearch.settings import Settings

K = 10
WAYS = ("catalog", "shop, no list", "shop")
FILTERS = {"0.01%": ("bucket", 10_000), "1%": ("tone", 100), "10%": ("grade", 10)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    resolved = ShopFilters.resolved
    times: dict[tuple[str, str], list[float]] = {(f, way): [] for f in FILTERS for way in WAYS}
    differ = dict.fromkeys(FILTERS, 0)
    with Catalog.open(
        url, model="google/siglip-base-patch16-224", settings=Settings(record_queries=False)
    ) as catalog:
        for n in range(-10, args.queries):
            q, filters = cases[n % args.queries]
            bucket = dict(filters)["0.01%"]["attributes"]["bucket"]
            for selectivity, (key, values) in FILTERS.items():
                attributes = {key: bucket % values}
                found = []
                for way in WAYS:
                    ShopFilters.resolved = unlisted if way == "shop, no list" else resolved  # type: ignore[method-assign]
                    start = time.perf_counter()
                    hits = catalog.search(
                        vector=q,
                        k=K,
                        tenant=None if way == "catalog" else "acme",
                        attributes=attributes,
                        total=False,
                    )
                    ms = (time.perf_counter() - start) * 1000
                    found.append([h.image_id for h in hits])
                    if n >= 0:
                        times[selectivity, way].append(ms)
                differ[selectivity] += any(f != found[0] for f in found[1:])
            if n >= 0 and (n + 1) % 10 == 0:
                print(f"  timed: {n + 1} queries", flush=True)
    ShopFilters.resolved = resolved  # type: ignore[method-assign]
    report(times, differ, args)


def unlisted(self: ShopFilters, conn: Any, filters: Filters) -> Filters:
    """The search as it was before migration 0042: no list of the shop's products."""
    return filters


def report(times: dict[tuple[str, str], list[float]], differ: dict[str, int], args: Any) -> None:
    print(f"\n{args.rows:,} rows ({args.data} vectors), {args.queries} queries, p50 ms (x the catalog's):")
    print("| attribute filter | " + " | ".join(WAYS) + " | searches whose hits differ |")
    print("|---|" + "---|" * (len(WAYS) + 1))
    for selectivity in FILTERS:
        base = statistics.median(times[selectivity, "catalog"])
        cells = []
        for way in WAYS:
            ms = statistics.median(times[selectivity, way])
            cells.append(f"{ms:.2f}" if way == "catalog" else f"{ms:.2f} ({ms / base:.2f}x)")
        print(f"| {selectivity} | " + " | ".join(cells) + f" | {differ[selectivity]} |")


if __name__ == "__main__":
    main()
