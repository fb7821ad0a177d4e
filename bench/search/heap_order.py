"""Heap order: what an exact scan of a filter's rows costs when they lie together on disk, and what
that order does to an HNSW index built over it, in one run, on bench/search/search.py's catalog.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/heap_order.py --queries 20

imgsearch's embeddings table keeps its rows in the order they were written, so the rows of one
category lie one or two to a page all over the table. This script copies the table into a scratch
table ordered by ``(model_id, category)`` (what ``CLUSTER imgsearch.embeddings USING
embeddings_category_price_idx`` would make of it), with the same category index and the same HNSW index,
and measures, for the same queries, alternating between the two tables:

* the exact scan of bench/search/search.py's category filters (``ORDER BY embedding <=> q LIMIT 16``,
  the statement imgsearch runs for them), client time of a prepared statement;
* recall@10 of the unfiltered HNSW query at imgsearch's ef_search (200) on each table's index,
  against the exact top 10: an HNSW index is built in the table's order;
* the baseline of bench/search/search.py's latency target, the unfiltered HNSW query with pgvector's
  defaults (ef_search 40) on the stored table, timed the same way in the same loop: the exact scan
  in category order over it is the floor for any exact scan of a filter's rows, since no storage
  imgsearch can keep puts a filter's rows closer together than a copy sorted by that filter.

The scratch table is dropped at the end. Uses (and if missing builds) the database
``bench_search`` of bench/search/search.py.

The figure it produces: docs/benchmarks.md, "Filtered search at 100k rows" (the bare exact scan of a
far filter).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import DATA, query_cases, stored_catalog

from imgsearch.db.vector_index import HNSW_EF_CONSTRUCTION, HNSW_M, halfvec_text, index_name

FILTERS = ("10% far", "3% far", "1% far", "10% near")
TABLES = {"stored order": "imgsearch.embeddings", "category order": "public.bench_heap_order"}
EXACT = (
    "SELECT image_id FROM {table} WHERE model_id = 1 AND category = ANY(%(cats)s) "
    "ORDER BY embedding <=> %(q)s::halfvec LIMIT 16"
)
HNSW = "SELECT image_id FROM {table} WHERE model_id = 1 ORDER BY embedding::halfvec(768) <=> %(q)s::halfvec(768) LIMIT 10"
BASELINE = HNSW.format(table=TABLES["stored order"])
TRUTH = "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 ORDER BY embedding <=> %(q)s::halfvec LIMIT 10"


def copy_in_category_order(conn: psycopg.Connection[Any]) -> float:
    """The scratch table, its category index and its HNSW index (seconds to build them all)."""
    start = time.perf_counter()
    conn.execute("DROP TABLE IF EXISTS public.bench_heap_order")
    conn.execute(
        "CREATE TABLE public.bench_heap_order AS SELECT * FROM imgsearch.embeddings ORDER BY model_id, category"
    )
    conn.execute("CREATE INDEX bench_heap_order_category ON public.bench_heap_order (model_id, category, price_units)")
    conn.execute("SET maintenance_work_mem = '2GB'")
    conn.execute(
        "CREATE INDEX bench_heap_order_hnsw ON public.bench_heap_order USING hnsw ((embedding::halfvec(768)) halfvec_cosine_ops) "
        f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE model_id = 1"
    )
    conn.execute("VACUUM ANALYZE public.bench_heap_order")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of each filter per query and table"
    )
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url, data, labels, model_id = stored_catalog(args.rows, args.data)
    hnsw_index = index_name(model_id)
    cases = query_cases(data, labels, args.queries)
    server = make_url(url)
    times: dict[tuple[str, str], list[float]] = {}
    recall: dict[str, list[float]] = {}
    connect = dict(host=server.query["host"], user="postgres", dbname=server.database, autocommit=True)
    # the baseline on a connection of its own, with pgvector's defaults (ef_search 40)
    with psycopg.connect(**connect) as conn, psycopg.connect(**connect) as plain:
        plain.execute("SET jit = off")
        print("copying the embeddings in category order ...", flush=True)
        print(f"  copied and indexed in {copy_in_category_order(conn):.0f} s", flush=True)
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            for relation in (
                "imgsearch.embeddings",
                "imgsearch.embeddings_category_price_idx",
                f"imgsearch.{hnsw_index}",
                "bench_heap_order",
                "bench_heap_order_category",
                "bench_heap_order_hnsw",
            ):
                conn.execute("SELECT pg_prewarm(%s::regclass)", (relation,))
            conn.execute("SET jit = off")
            conn.execute("SET random_page_cost = 1.1")
            conn.execute("SET hnsw.ef_search = 200")
            for n, (q, filters) in enumerate(cases):
                params: dict[str, Any] = {"q": halfvec_text(q)}
                truth = {r[0] for r in conn.execute(TRUTH, params)}
                tables = list(TABLES.items()) if n % 2 else list(TABLES.items())[::-1]
                for label, table in tables:
                    found = {r[0] for r in conn.execute(HNSW.format(table=table), params, prepare=True)}
                    recall.setdefault(label, []).append(len(found & truth) / len(truth))
                for _ in range(args.repeats):
                    for name, kwargs in filters:
                        if name not in FILTERS:
                            continue
                        category = kwargs["category"]
                        params["cats"] = category if isinstance(category, list) else [category]
                        for label, table in tables:
                            start = time.perf_counter()
                            conn.execute(EXACT.format(table=table), params, prepare=True).fetchall()
                            times.setdefault((name, label), []).append((time.perf_counter() - start) * 1000)
                        start = time.perf_counter()
                        plain.execute(BASELINE, params, prepare=True).fetchall()
                        times.setdefault((name, "baseline"), []).append((time.perf_counter() - start) * 1000)
                if (n + 1) % 5 == 0:
                    print(f"  {n + 1}/{len(cases)} queries", flush=True)
        finally:
            conn.execute("DROP TABLE IF EXISTS public.bench_heap_order")

    print(
        f"\n{args.rows} rows x 768 dims, {args.queries} queries x {args.repeats} runs; exact scan p50, "
        "client time of a prepared statement\n"
    )
    print(
        "| filter | stored order ms | category order ms | stored / category order | baseline ms "
        "| stored order / baseline | category order / baseline |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in FILTERS:
        stored = statistics.median(times[(name, "stored order")])
        ordered = statistics.median(times[(name, "category order")])
        baseline = statistics.median(times[(name, "baseline")])
        print(
            f"| {name} | {stored:.2f} | {ordered:.2f} | {stored / ordered:.2f}x | {baseline:.2f} "
            f"| {stored / baseline:.2f}x | {ordered / baseline:.2f}x |"
        )
    print("\nunfiltered HNSW, ef_search 200, recall@10 against exact:")
    for label, values in recall.items():
        print(f"  index built over the {label}: {statistics.mean(values):.3f}")


if __name__ == "__main__":
    main()
