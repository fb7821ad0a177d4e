"""Price filters on the plan PostgreSQL caches, what migration 0029's indexes buy, and a shop's
price range on the price in units, what migration 0030 buys, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/price_plans.py --queries 60
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/price_plans.py --queries 60 --data calibrated

On bench/search/search.py's catalog (loaded first if missing), for price ranges of several shapes
and widths (a category's tenth of its prices near the query and far from it, a category's whole
range, a range that leaves none of a category, three categories with a range, a shop's category
with a range, a price range alone at 0.1%, 3% and 50% of the catalog, and a shop's at 0.1%, which
is planned for each search on both), ``catalog.search`` on two catalogs of the same database,
alternating search by search:

* per search — ``Settings(cached_plans=False)``: every statement planned for its values, as
  imgsearch planned every price filter before migration 0029;
* cached — the default: a shape that :meth:`imgsearch.search.Filters.plans_alike` (on embeddings)
  runs on the plan PostgreSQL caches for its statement, made without the values.

Both give the same hits (the script checks each search's). ``--before``: with the indexes
migration 0029 replaced, ``(model_id, category)`` and ``(model_id, tenant, category)``, to show
what a cached plan costs without an index on the category then the price: the script swaps them
in the benchmark's own database and back at the end.

Then a shop's price ranges under its row-level security, both planned for each search, on the
price in units as searches filter it (migration 0030) and on the price itself (``numeric``, as
searches filtered it before: ``where=`` the same range on ``Embedding.price``), alternating, the
hits compared; and a search with its total, then one with its facets (each counted over products,
on their price in units), for a shop's 0.1% range against the catalog's.

The figure it produces: docs/benchmarks.md, "Price filters".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import func, make_url, select

sys.path.insert(0, str(Path(__file__).parents[1]))

from _catalog import DATA, DB, database_url, load, query_cases

from imgsearch import Catalog
from imgsearch.db.engine import libpq_conninfo
from imgsearch.db.models import Embedding
from imgsearch.search import Filters
from imgsearch.settings import Settings

K = 10
# (name, SQL) of the indexes before migration 0029 and after it
BEFORE = [
    ("embeddings_category_idx", "(model_id, category)"),
    ("embeddings_tenant_category_idx", "(model_id, tenant, category)"),
]
AFTER = [
    ("embeddings_category_price_idx", "(model_id, category, price_units)"),
    ("embeddings_tenant_category_price_idx", "(model_id, tenant, category, price_units)"),
]


def shapes(filters: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """The price filters of one query case, from search.py's (a category spans 10 of the price's
    1,000: bench/_catalog.py)."""
    named = dict(filters)
    near, far = named["1% near"]["category"], named["1% far"]["category"]
    near_low, far_low = named["0.1% near"]["price_min"], named["0.1% far"]["price_min"]
    none = {"price_max": far_low - 1} if far_low >= 10 else {"price_min": far_low + 11}
    return [
        ("category, a tenth of its prices, near", {"category": near, "price_min": near_low, "price_max": near_low + 1}),
        ("category, a tenth of its prices, far", {"category": far, "price_min": far_low, "price_max": far_low + 1}),
        ("category, all its prices", {"category": far, "price_min": 0, "price_max": 1000}),
        ("category, none of its prices", {"category": far, **none}),
        ("3 categories, any price", {"category": named["3% near"]["category"], "price_min": 0}),
        ("shop's category, a tenth of its prices", {"tenant": "acme", "category": far, "price_min": far_low, "price_max": far_low + 1}),
        ("price alone, 0.1%", {"price_min": far_low, "price_max": far_low + 1}),
        ("shop's price alone, 0.1%", {"tenant": "acme", "price_min": far_low, "price_max": far_low + 1}),
        ("price alone, 3%, near", {"price_min": near_low, "price_max": near_low + 30}),
        ("price alone, 3%, far", {"price_min": far_low, "price_max": far_low + 30}),
        ("price alone, 50%", {"price_max": 500}),
    ]  # fmt: skip


def shop_shapes(filters: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """A shop's price ranges (the benchmark's one tenant holds every row)."""
    named = dict(filters)
    far, near_low, far_low = named["1% far"]["category"], named["0.1% near"]["price_min"], named["0.1% far"]["price_min"]
    return [
        ("shop's price alone, 0.1%", {"price_min": far_low, "price_max": far_low + 1}),
        ("shop's price alone, 3%, near", {"price_min": near_low, "price_max": near_low + 30}),
        ("shop's category, a tenth of its prices", {"category": far, "price_min": far_low, "price_max": far_low + 1}),
    ]  # fmt: skip


def on_price(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same filters with the price range on ``Embedding.price`` (numeric) instead."""
    rest = {k: v for k, v in kwargs.items() if k not in ("price_min", "price_max")}
    return {**rest, "where": Embedding.price.between(kwargs["price_min"], kwargs["price_max"])}


def low(filters: list[tuple[str, dict[str, Any]]]) -> Any:
    """The lower bound of a query case's 0.1% price range (far from the query)."""
    return dict(filters)["0.1% far"]["price_min"]


def alternate(
    arms: dict[str, Callable[[Any, Any], Sequence[Any]]], cases: list[Any], queries: int
) -> tuple[dict[str, list[float]], int]:
    """Each arm's search (of a query and its case's filters), alternating query by query, ten
    untimed rounds first (psycopg prepares at the fifth): each arm's milliseconds, and how many
    rounds' hits differed between the arms."""
    times: dict[str, list[float]] = {how: [] for how in arms}
    differ = 0
    for n in range(-10, queries):
        q, filters = cases[n % queries]
        found = []
        for how, search in arms.items():
            start = time.perf_counter()
            hits = search(q, filters)
            ms = (time.perf_counter() - start) * 1000
            found.append([h.image_id for h in hits])
            if n >= 0:
                times[how].append(ms)
        differ += any(ids != found[0] for ids in found)
    return times, differ


def swap(conn: psycopg.Connection[Any], drop: list[tuple[str, str]], create: list[tuple[str, str]]) -> None:
    """One set of filter indexes for the other (names and columns are this module's constants)."""
    for name, columns in create:
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON imgsearch.embeddings {columns}")
    for name, _ in drop:
        conn.execute(f"DROP INDEX IF EXISTS imgsearch.{name}")
    conn.execute("VACUUM ANALYZE imgsearch.embeddings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--before", action="store_true", help="with the indexes before migration 0029")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    home = Settings().home
    url = database_url(home, DB if args.data == "clustered" else f"{DB}_{args.data}")
    cached_settings, planned_settings = Settings(record_queries=False), Settings(record_queries=False, cached_plans=False)
    with (
        Catalog.open(url, model="google/siglip-base-patch16-224", settings=cached_settings) as cached,
        Catalog.open(url, model="google/siglip-base-patch16-224", settings=planned_settings) as planned,
        psycopg.connect(libpq_conninfo(make_url(url)), autocommit=True) as admin,
    ):
        data, labels = load(cached, args.rows, seed=11, data_kind=args.data)
        cases = query_cases(data, labels, args.queries)
        names = [name for name, _ in shapes(cases[0][1])]
        if args.before:
            print("the indexes before migration 0029 ...", flush=True)
            swap(admin, drop=AFTER, create=BEFORE)
        try:
            times: dict[tuple[str, str], list[float]] = {}
            differ: dict[str, int] = {}
            matching: dict[str, int] = {}
            for position, name in enumerate(names):
                with cached.engine.connect() as conn:
                    kwargs = shapes(cases[0][1])[position][1]
                    count = select(func.count()).select_from(Embedding).where(*Filters(**kwargs).conditions())
                    matching[name] = int(conn.execute(count).scalar_one())
                arms = {
                    how: lambda q, f, c=catalog, i=position: c.search(vector=q, k=K, **shapes(f)[i][1])
                    for how, catalog in (("cached", cached), ("per search", planned))
                }
                timed, differ[name] = alternate(arms, cases, args.queries)
                times.update({(name, how): ms for how, ms in timed.items()})
                print(f"  timed: {name}", flush=True)
            shop_names = [name for name, _ in shop_shapes(cases[0][1])]
            shop_differ: dict[str, int] = {}
            for position, name in enumerate(shop_names):

                def shop(f: Any, i: int = position) -> dict[str, Any]:
                    return {"tenant": "acme", **shop_shapes(f)[i][1]}

                arms = {
                    "units": lambda q, f, s=shop: planned.search(vector=q, k=K, **s(f)),
                    "numeric": lambda q, f, s=shop: planned.search(vector=q, k=K, **on_price(s(f))),
                }
                timed, shop_differ[name] = alternate(arms, cases, args.queries)  # names as the first table's
                times.update({(name, how): ms for how, ms in timed.items()})
                print(f"  timed: {name}, on the price in units and on the price", flush=True)
            # the total and the facets, counted over products: a shop's range and the catalog's
            for counted in ("total", "facets"):
                arms = {
                    how: lambda q, f, t=tenant, c=counted: planned.search(
                        vector=q, k=K, tenant=t, price_min=low(f), price_max=low(f) + 1, **{c: True}
                    )
                    for how, tenant in (("catalog", None), ("shop", "acme"))
                }
                timed, _ = alternate(arms, cases, args.queries)
                times.update({(counted, how): ms for how, ms in timed.items()})
                print(f"  timed: the {counted} of a 0.1% price range, a shop's and the catalog's", flush=True)
        finally:
            if args.before:
                swap(admin, drop=BEFORE, create=AFTER)
    indexes = "before migration 0029" if args.before else "today's"
    print(f"\n{args.rows:,} rows, {args.queries} queries a filter, {indexes} indexes\n")
    print("| filter | rows matching (first query) | per search p50 ms | cached p50 ms | cached / per search | searches whose hits differ |")
    print("|---|---|---|---|---|---|")
    for name in names:
        per_search = statistics.median(times[(name, "per search")])
        on_cache = statistics.median(times[(name, "cached")])
        print(
            f"| {name} | {matching[name]:,} | {per_search:.2f} | {on_cache:.2f} | "
            f"{on_cache / per_search:.2f}x | {differ[name]} |"
        )
    print("\nA shop's price range under its row-level security, planned per search\n")
    print("| filter | on price (numeric) p50 ms | on price_units p50 ms | units / numeric | searches whose hits differ |")
    print("|---|---|---|---|---|")
    for name in shop_names:
        numeric = statistics.median(times[(name, "numeric")])
        units = statistics.median(times[(name, "units")])
        print(f"| {name} | {numeric:.2f} | {units:.2f} | {units / numeric:.3f}x | {shop_differ[name]} |")
    print()
    for counted in ("total", "facets"):
        catalog_ms, shop_ms = (statistics.median(times[(counted, how)]) for how in ("catalog", "shop"))
        print(
            f"With its {counted} (counted over products), a 0.1% price range: the catalog's {catalog_ms:.2f} ms,"
            f" a shop's {shop_ms:.2f} ms ({shop_ms / catalog_ms:.2f}x)"
        )


if __name__ == "__main__":
    main()
