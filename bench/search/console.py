"""The SQL console's search, now written from the library's statements (migration 0038), against
the function it replaced and against the library, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/console.py --queries 30 --rounds 3

On bench/search/search.py's catalog (built if missing), creates the previous ``imgsearch._search``
(its own PL/pgSQL rules, held by migration 0038 as its downgrade) under another name
(``imgsearch.bench_search_previous``, dropped at the end) and times, on the same queries,
interleaved: both functions from psycopg in autocommit (what a psql user's statement is), and
``catalog.search(vector=...)`` in process. Filters, as the console takes them (one category, a
price range, a tenant):

* "1% near" / "1% far": the query's category, or the one least like it (1,000 rows: both exact)
* "10% near" / "10% far": a price range over 20 clusters around the query, or the 20 least like it
* "100% tenant": the catalog's one tenant
* "none": no filter

Recall@10 of each against an exact scan of the same filter, each one's p50, and the ratios of
the new function's p50 to the previous one's and to the library's.

The figure it produces: docs/benchmarks.md, "Search overheads" (the SQL console's rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2] / "migrations" / "versions"))
from _catalog import CLUSTERS, DATA, cluster_centres, farthest_cluster, query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.db.vector_index import halfvec_text
from imgsearch.settings import Settings

K = 10
OLD = "imgsearch.bench_search_previous"
CALL = (
    "SELECT image_id FROM {fn}(%(q)s::halfvec, %(k)s::int, %(tenant)s, %(category)s, %(lo)s::numeric,"
    " %(hi)s::numeric, NULL, NULL, false)"
)
EXACT = (
    "SELECT image_id FROM imgsearch.embeddings WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
    " AND (%(category)s::text IS NULL OR category = %(category)s) AND (%(lo)s::numeric IS NULL OR"
    " price >= %(lo)s) AND (%(hi)s::numeric IS NULL OR price <= %(hi)s)"
    " ORDER BY embedding <=> %(q)s::halfvec LIMIT %(k)s"
)


def previous_function() -> str:
    """Migration 0038's downgrade, the function before it, under the name :data:`OLD`."""
    import importlib

    migration = importlib.import_module("0038_console_search_from_library_statements")
    body: str = migration.PREVIOUS
    last = body.rindex("CREATE OR REPLACE FUNCTION imgsearch._search(")  # the plpgsql overload
    end = body.index("$function$;", last) + len("$function$;")
    # its arguments named by the function's new name
    renamed = body[last:end].replace("_search.tenant", f"{OLD.split('.')[1]}.tenant")
    return renamed.replace("FUNCTION imgsearch._search(", f"FUNCTION {OLD}(", 1)


def filters(q_cluster: int, far_cluster: int) -> dict[str, dict[str, Any]]:
    """Console filters for a query in ``q_cluster``; prices are 5 x cluster + U(0, 5)."""

    def prices(first: int) -> dict[str, Any]:
        first = min(first, CLUSTERS - 20)
        return {"lo": 5 * first, "hi": 5 * (first + 20)}

    return {
        "none": {},
        "100% tenant": {"tenant": "acme"},
        "10% near": prices(max(0, q_cluster - 10)),
        "10% far": prices(max(0, far_cluster - 10)),
        "1% near": {"category": f"cat-{q_cluster // 2:03d}"},
        "1% far": {"category": f"cat-{far_cluster // 2:03d}"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data)
    cases = query_cases(data, labels, args.queries)
    centres = cluster_centres(data, labels)
    parsed = make_url(url)
    catalog = Catalog.open(url, model="google/siglip-base-patch16-224", settings=Settings())
    ways = ("previous", "now", "library")
    with (
        catalog,
        psycopg.connect(
            host=parsed.query["host"], user="postgres", dbname=parsed.database, autocommit=True
        ) as conn,
    ):
        conn.execute(previous_function())
        try:
            searches = []
            for q, _ in cases:
                q_cluster = int(np.argmax(centres @ q))
                far_cluster = farthest_cluster(centres, q_cluster)
                searches.append((q, halfvec_text(q), filters(q_cluster, far_cluster)))
            names = list(searches[0][2])
            print(
                "| filter | recall@10 previous / now / library | p50 ms previous / now / library |"
                " now / previous | now / library |"
            )
            print("|---|---|---|---|---|")
            for name in names:
                times: dict[str, list[float]] = {w: [] for w in ways}
                recall: dict[str, list[float]] = {w: [] for w in ways}
                for round_ in range(args.rounds + 1):
                    for n, (vector, q, by_name) in enumerate(searches):
                        params = {"q": q, "k": K, "tenant": None, "category": None, "lo": None, "hi": None}
                        params.update(by_name[name])
                        truth = {r[0] for r in conn.execute(EXACT, params).fetchall()} if not round_ else None
                        # each query starts with another of the three
                        for which in ways[n % 3 :] + ways[: n % 3]:
                            start = time.perf_counter()
                            if which == "library":
                                got = {h.image_id for h in catalog.search(
                                    vector=vector, k=K, tenant=params["tenant"], category=params["category"],
                                    price_min=params["lo"], price_max=params["hi"])}  # fmt: skip
                            else:
                                fn = OLD if which == "previous" else "imgsearch._search"
                                got = {r[0] for r in conn.execute(CALL.format(fn=fn), params).fetchall()}
                            elapsed = (time.perf_counter() - start) * 1000
                            if round_:
                                times[which].append(elapsed)
                            elif truth is not None:
                                recall[which].append(len(got & truth) / len(truth) if truth else 1.0)
                p50 = {w: statistics.median(times[w]) for w in ways}
                print(
                    f"| {name} | {' / '.join(f'{np.mean(recall[w]):.3f}' for w in ways)} |"
                    f" {' / '.join(f'{p50[w]:.2f}' for w in ways)} |"
                    f" **{p50['now'] / p50['previous']:.2f}x** | **{p50['now'] / p50['library']:.2f}x** |",
                    flush=True,
                )
        finally:
            conn.execute(f"DROP FUNCTION {OLD}")


if __name__ == "__main__":
    main()
