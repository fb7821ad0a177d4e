"""What a product update costs, and what the old row versions do to searches until a vacuum.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/updates.py --products 2000 --rounds 3

On bench/search/search.py's catalog (100,000 products of one image each; built if missing). Each embedding
row carries its product's category and price (migration 0004), so filtered searches read one table;
changing either makes a new embeddings row version, which PostgreSQL enters into every index of the
table, pgvector's HNSW index included.

Part 1 times ``update_products`` (checking the rows, then ``updates.apply``) on ``--products``
random products. Each feed runs in a transaction that is rolled back, so the catalog stays as it
was; the kinds run in turn, round after round, so machine noise hits them alike:

* price change: every price + 1, products and their embeddings' copies
* price change, no recheck: the same feed without the statement trigger that looks again, after
  the facets' wait, for rows committed meanwhile (migration 0046): what that recheck costs
* price change, products only: the same feed with the triggers that copy values to the embeddings
  disabled (in the same transaction): the baseline, what the update costs without the copies
* attributes change: a new attribute document for each product (products only, by design)
* same prices: the stored prices again, which write nothing

Part 2 times ``catalog.search`` for some of bench/search/search.py's filters: after a ``VACUUM``
(before), right after a price change of ``--stale`` products is rolled back (their new row
versions are dead, but the HNSW index still holds them until a vacuum), and after another
``VACUUM``. Each phase warms up with one round first. It also says how many searches return the
same hits as before. The states follow each other, so they can't be interleaved: read the ratios
as a bound on the effect, not a measure of it.

The figure it produces: docs/benchmarks.md, "Product updates".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.ingest import updates
from imgsearch.settings import Settings

KINDS = (
    "price change",
    "price change, no recheck",
    "price change, products only",
    "attributes change",
    "same prices",
)
SEARCHES = ("100%", "10% near", "1% near", "0.1% near")


def feed(kind: str, ids: list[int], prices: dict[int, Any]) -> list[dict[str, Any]]:
    if kind == "attributes change":
        return [{"tenant": "acme", "product_id": f"sku-{i}", "attributes": {"bucket": -1}} for i in ids]
    bump = 0 if kind == "same prices" else 1
    return [{"tenant": "acme", "product_id": f"sku-{i}", "price": prices[i] + bump} for i in ids]


def timed_update(catalog: Catalog, kind: str, rows: list[dict[str, Any]]) -> tuple[float, int]:
    """Milliseconds to check and write ``rows``, and how many products changed; rolled back."""
    with catalog.engine.connect() as conn, conn.begin() as tx:
        off = {
            "price change, no recheck": ("products_filters_rechecked",),
            "price change, products only": ("products_filters_to_embeddings", "products_filters_rechecked"),
        }
        for trigger in off.get(kind, ()):
            conn.execute(text(f"ALTER TABLE imgsearch.products DISABLE TRIGGER {trigger}"))
        start = time.perf_counter()
        changed = updates.apply(conn, updates.prepare_all(rows))
        elapsed = (time.perf_counter() - start) * 1000
        tx.rollback()
    return elapsed, changed


def search_times(
    catalog: Catalog, cases: list[Any], rounds: int
) -> tuple[dict[str, float], dict[str, list[list[int]]]]:
    times: dict[str, list[float]] = {name: [] for name in SEARCHES}
    hits: dict[str, list[list[int]]] = {name: [] for name in SEARCHES}
    for round_ in range(rounds + 1):  # the first round warms up
        for q, filters in cases:
            for name in SEARCHES:
                start = time.perf_counter()
                found = catalog.search(vector=q, k=10, **dict(filters)[name])
                if round_:
                    times[name].append((time.perf_counter() - start) * 1000)
                else:
                    hits[name].append([h.image_id for h in found])
    return {name: statistics.median(t) for name, t in times.items()}, hits


def vacuum(catalog: Catalog) -> None:
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("embeddings", "products"):
            start = time.perf_counter()
            conn.execute(text(f"VACUUM imgsearch.{table}"))
            print(f"  VACUUM imgsearch.{table} took {time.perf_counter() - start:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=2000, help="products per feed in part 1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stale", type=int, default=10_000, help="products changed in part 2")
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows)
    rng = np.random.default_rng(3)
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=Settings()) as catalog:
        with catalog.engine.connect() as conn:
            prices = dict(
                conn.execute(text("SELECT substr(product_id, 5)::int, price FROM imgsearch.products")).all()
            )

        print(f"part 1: {args.products} products per feed, {args.rounds} rounds", flush=True)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        changed: dict[str, int] = {}
        for round_ in range(args.rounds):
            ids = [int(i) for i in rng.choice(args.rows, size=args.products, replace=False)]
            for kind in KINDS:
                elapsed, changed[kind] = timed_update(catalog, kind, feed(kind, ids, prices))
                times[kind].append(elapsed)
            print(
                f"  round {round_ + 1}: " + ", ".join(f"{k} {t[-1]:.0f} ms" for k, t in times.items()),
                flush=True,
            )
        base = statistics.median(times["price change, products only"])
        print("\n| feed | products changed | median ms | ms per product | / products only |")
        print("|---|---|---|---|---|")
        for kind in KINDS:
            median = statistics.median(times[kind])
            print(
                f"| {kind} | {changed[kind]} | {median:.0f} | {median / args.products:.3f} | {median / base:.2f}x |"
            )

        print(f"\npart 2: searches before and after a price change of {args.stale} products", flush=True)
        cases = query_cases(data, labels, args.queries)
        vacuum(catalog)  # part 1's rolled-back feeds left old versions in the indexes too
        before, before_hits = search_times(catalog, cases, args.rounds)
        ids = [int(i) for i in rng.choice(args.rows, size=args.stale, replace=False)]
        elapsed, _ = timed_update(catalog, "price change", feed("price change", ids, prices))
        print(f"  the price change took {elapsed / 1000:.1f} s (rolled back)", flush=True)
        stale, stale_hits = search_times(catalog, cases, args.rounds)
        vacuum(catalog)
        vacuumed, vacuumed_hits = search_times(catalog, cases, args.rounds)
        print(
            "\n| filter | p50 before ms | right after / before | after VACUUM / before | same hits (after, vacuumed) |"
        )
        print("|---|---|---|---|---|")
        for name in SEARCHES:
            same = sum(a == b for a, b in zip(before_hits[name], stale_hits[name], strict=True))
            same_v = sum(a == b for a, b in zip(before_hits[name], vacuumed_hits[name], strict=True))
            print(
                f"| {name} | {before[name]:.1f} | {stale[name] / before[name]:.2f}x | "
                f"{vacuumed[name] / before[name]:.2f}x | {same}, {same_v} of {len(cases)} |"
            )


if __name__ == "__main__":
    main()
