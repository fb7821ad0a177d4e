"""The SQL console's search before and after migration 0006, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/console.py --queries 30 --rounds 3

On bench/search/search.py's catalog (built if missing), creates migration 0005's ``imgsearch._search``
under another name (``imgsearch.bench_search_0005``, dropped at the end) and times both functions
on the same queries, interleaved, from psycopg in autocommit (what a psql user's statement is).
Filters, as the console takes them (one category, a price range, a tenant):

* "1% near" / "1% far": the query's category, or the one least like it (1,000 rows: both exact)
* "10% near" / "10% far": a price range over 20 clusters around the query, or the 20 least like it
* "100% tenant": the catalog's one tenant
* "none": no filter

Recall@10 of both against an exact scan of the same filter, and each one's p50 with its ratio to
the 0005 function's.

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
from _catalog import CLUSTERS, cluster_centres, farthest_cluster, query_cases, stored_catalog

from imgsearch.db.vector_index import halfvec_text

K = 10
OLD = "imgsearch.bench_search_0005"
CALL = "SELECT image_id FROM {fn}(%(q)s::halfvec, %(k)s, %(tenant)s, %(category)s, %(lo)s, %(hi)s, NULL)"
EXACT = (
    "SELECT image_id FROM imgsearch.embeddings WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
    " AND (%(category)s::text IS NULL OR category = %(category)s) AND (%(lo)s::numeric IS NULL OR"
    " price >= %(lo)s) AND (%(hi)s::numeric IS NULL OR price <= %(hi)s)"
    " ORDER BY embedding <=> %(q)s::halfvec LIMIT %(k)s"
)


def previous_function() -> str:
    import importlib

    migration = importlib.import_module("0006_console_search_strategy")
    body: str = migration._previous_search()
    return body.replace("FUNCTION imgsearch._search(", f"FUNCTION {OLD}(", 1)


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
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows)
    cases = query_cases(data, labels, args.queries)
    centres = cluster_centres(data, labels)
    parsed = make_url(url)
    with psycopg.connect(
        host=parsed.query["host"], user="postgres", dbname=parsed.database, autocommit=True
    ) as conn:
        conn.execute(previous_function())
        try:
            searches = []
            for q, _ in cases:
                q_cluster = int(np.argmax(centres @ q))
                far_cluster = farthest_cluster(centres, q_cluster)
                searches.append((halfvec_text(q), filters(q_cluster, far_cluster)))
            names = list(searches[0][1])
            print("| filter | function | recall@10 | p50 ms | p50 / 0005 |")
            print("|---|---|---|---|---|")
            for name in names:
                times: dict[str, list[float]] = {"0005": [], "0006": []}
                recall: dict[str, list[float]] = {"0005": [], "0006": []}
                for round_ in range(args.rounds + 1):
                    for n, (q, by_name) in enumerate(searches):
                        params = {"q": q, "k": K, "tenant": None, "category": None, "lo": None, "hi": None}
                        params.update(by_name[name])
                        truth = {r[0] for r in conn.execute(EXACT, params).fetchall()} if not round_ else None
                        # the two alternate which goes first, query by query
                        order = ("0005", "0006") if n % 2 else ("0006", "0005")
                        for which in order:
                            fn = OLD if which == "0005" else "imgsearch._search"
                            start = time.perf_counter()
                            got = {r[0] for r in conn.execute(CALL.format(fn=fn), params).fetchall()}
                            elapsed = (time.perf_counter() - start) * 1000
                            if round_:
                                times[which].append(elapsed)
                            elif truth is not None:
                                recall[which].append(len(got & truth) / len(truth) if truth else 1.0)
                old = statistics.median(times["0005"])
                for which in ("0005", "0006"):
                    p50 = statistics.median(times[which])
                    print(
                        f"| {name} | {which} | {np.mean(recall[which]):.3f} | {p50:.2f} | {p50 / old:.2f}x |",
                        flush=True,
                    )
        finally:
            conn.execute(f"DROP FUNCTION {OLD}")


if __name__ == "__main__":
    main()
