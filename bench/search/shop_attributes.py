"""A shop's attribute filter under its row-level security, against the same filter over the whole
catalog, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/shop_attributes.py --rows 100000 --data calibrated

On bench/search/search.py's catalog (``--database``, or its database for ``--rows`` and
``--data``; loaded first if missing; its one tenant, ``acme``, holds every row), for each query
its "0.01%" filter (one value of the attribute ``bucket``: about 100 products a million), in turns
query by query, ten untimed rounds first:

* **catalog**: ``catalog.search(vector=q, k=10, attributes=...)``: no shop, no row-level security;
* **shop**: the same with ``tenant="acme"``: the search runs as ``imgsearch_app`` under the shop's
  row-level security, and finds the same rows (the script checks each search's hits).

PostgreSQL lets a condition use an index under row-level security only when its operator is
``LEAKPROOF`` (or it is the policy's own). jsonb's ``@>`` (``jsonb_contains``) is not, so a
shop's attribute condition can't use the GIN index on ``products.attributes``: its products are
read one by one. Category and price filters (text and bigint equality and ranges) are leakproof,
which is why searches filter prices on ``price_units`` (migration 0030; bench/search/price_plans.py).

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
from imgsearch.settings import Settings

K = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    times: dict[str, list[float]] = {"catalog": [], "shop": []}
    differ = 0
    with Catalog.open(
        url, model="google/siglip-base-patch16-224", settings=Settings(record_queries=False)
    ) as catalog:
        for n in range(-10, args.queries):
            q, filters = cases[n % args.queries]
            attributes = dict(filters)["0.01%"]["attributes"]
            found = []
            for how, tenant in (("catalog", None), ("shop", "acme")):
                start = time.perf_counter()
                hits = catalog.search(vector=q, k=K, tenant=tenant, attributes=attributes, total=False)
                ms = (time.perf_counter() - start) * 1000
                found.append([h.image_id for h in hits])
                if n >= 0:
                    times[how].append(ms)
            differ += found[0] != found[1]
        print(f"  timed: {args.queries} queries", flush=True)
    report(times, differ, args)


def report(times: dict[str, list[float]], differ: int, args: Any) -> None:
    catalog_ms, shop_ms = (statistics.median(times[how]) for how in ("catalog", "shop"))
    print(
        f"\n{args.rows:,} rows ({args.data} vectors), {args.queries} queries, one attribute value (0.01%): "
        f"the catalog's search p50 {catalog_ms:.2f} ms, the shop's {shop_ms:.2f} ms "
        f"({shop_ms / catalog_ms:.2f}x); searches whose hits differ: {differ}"
    )


if __name__ == "__main__":
    main()
