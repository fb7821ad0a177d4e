"""What a search pays besides its statement: the query vector's encoding, the pool's ping, and
psycopg's parsing of the statement's text.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/search_overheads.py --queries 30 --rounds 6

Times ``catalog.search(vector=q, k=10, <filters>)`` on bench/search/search.py's catalog (built if missing),
for some of its filters, five ways, interleaved query by query so machine noise hits them alike:

* now — as imgsearch searches: the query vector sent in halfvec's binary form, on the search pool,
  whose connections aren't pinged before use
* text vector — the query vector sent as text (``[v1,v2,...]``, as before 2026-11-22 session 11)
* ping — each checkout pinged first (SQLAlchemy's ``pool_pre_ping``, as before that session)
* both — text vector and ping: imgsearch as it was
* parsed — as now, but each statement sent in psycopg's parameter style, which psycopg parses at
  every execution for its placeholders, remembering only texts up to 4096 characters (as before
  2026-11-26; now imgsearch.db.wire sends PostgreSQL's own form, converted once per text)

Each way's p50 and its ratios to "both" and to "parsed" (the ways it was), from the same run. Every way returns the
same hits (checked). The first round warms up and isn't counted.

The figure it produces: docs/benchmarks.md, "Search overheads".
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
from imgsearch.db import wire
from imgsearch.db.compiled import Statements
from imgsearch.search import strategy as vector_search
from imgsearch.settings import Settings

FILTERS = ("100%", "100% tenant", "10% near", "1% far", "1% near, shop", "0.1% near", "0.1% far", "0.01%")
# (the vector as text, a ping, psycopg parsing the statement)
WAYS = {
    "now": (False, False, False),
    "text vector": (True, False, False),
    "ping": (False, True, False),
    "both": (True, True, False),
    "parsed": (False, False, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data)
    cases = query_cases(data, labels, args.queries)
    binary_param = vector_search.query_param

    def text_param(query: Any, dim: int, name: str | None = None, binary: bool = False) -> Any:
        return binary_param(query, dim, name=name, binary=False)

    postgres_form = wire.postgres_form

    def parsed(statement: wire.Statement) -> Any:
        return None  # psycopg's own conversion of the statement, at each execution

    print("| filter | way | p50 ms | p50 / both | p50 / parsed |")
    print("|---|---|---|---|---|")
    # the search path alone: its record of itself (record_queries) is timed by feedback_load.py
    settings = Settings(record_queries=False)
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        pool = catalog.search_engine.pool
        # statements are kept per encoding: each way's compiled statements bind its own
        statements = {encoding: Statements(vector_search.STATEMENT_CACHE_SIZE) for encoding in (False, True)}
        for name in FILTERS:
            times: dict[str, list[float]] = {way: [] for way in WAYS}
            hits: dict[str, list[list[int]]] = {way: [] for way in WAYS}
            for round_ in range(args.rounds + 1):
                for n in range(args.queries):
                    for i, (way, (text_vector, ping, parse)) in enumerate(WAYS.items()):
                        # each way meets each query once a round, a quarter of the queries apart
                        q, filters = cases[(n + i * args.queries // len(WAYS)) % args.queries]
                        kwargs = dict(filters)[name]
                        # statements are built once per shape and kept: each encoding its own
                        vector_search.query_param = text_param if text_vector else binary_param  # type: ignore[assignment]
                        vector_search._statements = statements[text_vector]
                        pool._pre_ping = ping  # type: ignore[attr-defined]
                        wire.postgres_form = parsed if parse else postgres_form  # type: ignore[assignment]
                        start = time.perf_counter()
                        found = catalog.search(vector=q, k=10, **kwargs)
                        elapsed = (time.perf_counter() - start) * 1000
                        if round_:
                            times[way].append(elapsed)
                        hits[way].append([h.image_id for h in found])
            vector_search.query_param = binary_param
            vector_search._statements = statements[False]
            pool._pre_ping = False  # type: ignore[attr-defined]
            wire.postgres_form = postgres_form  # type: ignore[assignment]
            # the same query meets each way in a different position, so compare sorted by query
            assert all(sorted(hits[way]) == sorted(hits["now"]) for way in WAYS), f"{name}: hits differ"
            before, unparsed = statistics.median(times["both"]), statistics.median(times["parsed"])
            for way in WAYS:
                p50 = statistics.median(times[way])
                print(f"| {name} | {way} | {p50:.2f} | {p50 / before:.2f}x | {p50 / unparsed:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
