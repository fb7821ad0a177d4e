"""What a search's total costs over HTTP: the default (a count bounded at 10,000 matches, as
Elasticsearch's ``track_total_hits``) against ``"total": false``, at 3k and at 100k rows.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/server/totals.py --queries 200

Two catalogs, each served by ``imgsearch serve`` and searched with a shop's key over keep-alive
HTTP:

- **3k, right after the upload**: 3,000 products of one shop, 32-d vectors, three categories,
  written by ``catalog.add_many`` into a fresh database and searched at once (the case of
  ../shared/FINDINGS.md, where a category's total took 347 ms against 1.8 ms before uploads left
  statistics). The shop's search (3,000 matches) and a category's (1,000).
- **100k**: bench/search/search.py's catalog (100k 768-d vectors, one shop, 100 categories,
  loaded first if missing). The shop's search (100k matches: the count stops at 10,001) and a
  category's (about 1,000).

Each case runs its ways in turns, in an order that rotates, a vector of its own per search: the
default body, ``"total": false``, ``"total": true`` (exact), and in process the count alone as the
default sends it, and the count's floor: its statement alone, prepared, in one round trip on a plain
psycopg connection (no transaction, no row-level security, no Python of imgsearch's). The floor
ratio is (``false`` + the floor) / ``false``: what the default costs at best with this count.
Prints a table of p50s and ratios.
The figure it produces: docs/benchmarks.md, "Totals".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))
sys.path.insert(0, str(Path(__file__).parent))

from _catalog import DATA, stored_catalog
from _data import fresh_database
from serve import Client, server

from imgsearch import Catalog
from imgsearch.access import keys, tenancy
from imgsearch.search import facets
from imgsearch.search.filters import Filters
from imgsearch.settings import Settings

CATEGORIES = ("shoes", "bags", "hats")


def fresh_shop(home: Path) -> tuple[str, np.ndarray]:
    """3,000 products of one shop, written by the library into a fresh database just now."""
    url = fresh_database(home, "bench_totals_3k")
    with Catalog.open(url) as catalog:
        catalog.add_model("shop-vectors", 32, activate=True)
    vectors = np.random.default_rng(3).standard_normal((3000, 32)).astype(np.float32)
    with Catalog.open(url) as catalog:
        catalog.add_many(
            {"embedding": v, "tenant": "acme", "product_id": f"p{i}", "category": CATEGORIES[i % 3], "price": i % 100}
            for i, v in enumerate(vectors)
        )
    return url, vectors


def count_alone(catalog: Catalog, category: str | None) -> Callable[[], int]:
    """The default's count, in process, as the server sends it: the floor of a bounded total."""
    filters = Filters("acme", category, None, None, None, None)
    model = catalog.active_model

    def run() -> int:
        with catalog.search_engine.begin() as conn:
            tenancy.scope(conn, "acme")
            return facets.count(conn, model, filters, None, facets=False, limit=facets.TRACK_TOTAL).total

    return run


def count_floor(catalog: Catalog, category: str | None) -> Callable[[], Any]:
    """The default's count statement alone: prepared, one round trip, on psycopg's connection."""
    import psycopg
    from sqlalchemy import make_url

    filters = Filters("acme", category, None, None, None, None)
    statement = facets.total_statement(catalog.active_model, filters, False, False, facets.TRACK_TOTAL)
    sql = str(statement.compile(catalog.engine, compile_kwargs={"literal_binds": True}))
    url = make_url(catalog.engine.url)
    conn = psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database, autocommit=True)
    return lambda: conn.execute(sql, prepare=True).fetchone()


def measure(ways: dict[str, Callable[[int], Any]], queries: int) -> dict[str, float]:
    names = list(ways)
    for i in range(3):  # warm every way
        for name in names:
            ways[name](i)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(queries):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            started = time.perf_counter()
            ways[name](r)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) * 1000 for name, values in times.items()}


def case(
    catalog: Catalog, port: int, key: str, vectors: np.ndarray, category: str | None, queries: int
) -> dict[str, float]:
    client = Client(port, key)
    extra = {} if category is None else {"category": category}
    bodies = {
        total: [
            json.dumps({"vector": v.tolist(), "k": 10, **extra, **({} if total is None else {"total": total})}).encode()
            for v in vectors[: queries + 3]
        ]
        for total in (None, False, True)
    }
    alone = count_alone(catalog, category)
    floor = count_floor(catalog, category)
    ways: dict[str, Callable[[int], Any]] = {
        "default": lambda i: client.search(bodies[None][i]),
        "no total": lambda i: client.search(bodies[False][i]),
        "exact": lambda i: client.search(bodies[True][i]),
        "count alone": lambda i: alone(),
        "count floor": lambda i: floor(),
    }
    return measure(ways, queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--rows", type=int, default=100_000, help="the large catalog's rows")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()
    settings = Settings()
    log = Path(tempfile.gettempdir()) / "imgsearch-bench-totals.log"
    results: list[tuple[str, dict[str, float]]] = []

    print("3k: a fresh shop ...", flush=True)
    url, vectors = fresh_shop(settings.home)
    with Catalog.open(url, settings=settings) as catalog:
        key, _ = keys.create_key(catalog.engine, "acme", name="bench/server/totals.py")
        with server(url, catalog.model, log) as (port, _process):
            results.append(("3k, the shop (3,000 match)", case(catalog, port, key, vectors, None, args.queries)))
            results.append(("3k, a category (1,000)", case(catalog, port, key, vectors, "shoes", args.queries)))

    print(f"{args.rows // 1000}k ...", flush=True)
    url, data, labels, _ = stored_catalog(args.rows, args.data)
    category = f"cat-{int(labels[0]) // 2:03d}"
    order = np.random.default_rng(5).permutation(len(data))
    with Catalog.open(url, settings=settings) as catalog:
        key, _ = keys.create_key(catalog.engine, "acme", name="bench/server/totals.py")
        matching = catalog.search(vector=data[0], tenant="acme", category=category, total=True).total
        with server(url, catalog.model, log) as (port, _process):
            shop = f"{args.rows // 1000}k, the shop ({args.rows:,} match)"
            results.append((shop, case(catalog, port, key, data[order], None, args.queries)))
            name = f"{args.rows // 1000}k, a category ({matching:,})"
            results.append((name, case(catalog, port, key, data[order], category, args.queries)))

    print()
    print(
        "| search | `total: false` | default (up to 10,000) | default / `false` | exact / `false` "
        "| the count in process | its floor | floor ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, t in results:
        base = t["no total"]
        print(
            f"| {name} | {base:.2f} ms | {t['default']:.2f} ms | **{t['default'] / base:.2f}x** "
            f"| {t['exact'] / base:.2f}x | {t['count alone']:.2f} ms | {t['count floor']:.2f} ms "
            f"| {(base + t['count floor']) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
