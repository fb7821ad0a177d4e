"""Filters whose rows lie far from the query: what each way of searching them costs and finds, in
one run, on bench/search/search.py's catalog.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/far_filters.py --queries 20

bench/search/search.py's "10% far" filter (10 categories, 10,000 rows, all far from the query) is where
imgsearch misses its latency target: it scans every matching row. This script measures, with
``EXPLAIN (ANALYZE)`` in the server (planning + execution, no client), for the "10% far" and
"1% far" filters of the same queries:

* baseline — the unfiltered HNSW query (ef_search 40): the latency target is 2x this
* exact — every matching row's distance (the ground truth; what imgsearch runs for these filters)
* fetch only / distances — the exact scan split into reading the rows and computing distances,
  to give the per-row costs that bound any exact scan
* iterative — the global HNSW index with ``hnsw.iterative_scan = relaxed_order``: a pool of 400
  matching rows, re-sorted exactly
* per-category HNSW — a partial HNSW index per category (built here with imgsearch's m and
  ef_construction, dropped at the end), one
  ``ORDER BY ... LIMIT k`` branch per category, merged: the "partition the index by the filter"
  design, at ef_search 40 and 200
* IVF lists (``--ivf``) — an ivfflat index (a list per 1,000 rows), ``ivfflat.iterative_scan =
  relaxed_order`` from 10 or 40 probes: a pool of 400 matching rows, re-sorted exactly. Built over
  the normalised vectors (the same ranking for unit vectors), an expression the HNSW index doesn't
  serve, so that each index answers only its own queries
* partitions (``--partitions``) — the rows copied into a table partitioned by category (a
  partition each, each with its own HNSW index, imgsearch's m and ef_construction), the filter
  pruning the partitions: as planned (the planner scans each partition left exactly), and with
  their graphs forced (one ordered index scan per partition, merged) at ef_search 40 and 200; and
  the unfiltered query on that table through every partition's graph
* binary + rerank — the 400 nearest by Hamming distance of ``binary_quantize`` codes computed
  from each row as it is read, re-sorted exactly
* stored codes + rerank — the same codes stored (a side table holding each row's keys, its
  filter columns and its code, with a btree index over the filter columns that INCLUDEs the rest,
  read index-only: what a code column beside ``embedding`` in a covering index would cost), the
  400 nearest by Hamming distance, then their rows fetched by primary key and re-sorted exactly;
  "stored codes, scan only": the first step alone (the floor of any design that compares each
  matching row's code)

Recall@10 is against exact. ``--data calibrated``: the same catalog with vectors shaped as real
embeddings are (bench/search/calibration.py), in the database ``bench_search_calibrated``. Also reports how much planning time 100 partial indexes add to the
unfiltered query. Uses (and if missing builds) the database ``bench_search`` of bench/search/search.py.

The figure it produces: docs/benchmarks.md, "Filtered search at 100k rows" (the far filters' server
times), "Filtered search at 1M rows" (planning cost) and "Calibrated vectors" (both kinds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import DATA, query_cases, stored_catalog

from imgsearch.db.vector_index import HNSW_EF_CONSTRUCTION, HNSW_M, halfvec_text

K = 10
POOL = 400
FILTERS = ("10% far", "3% far", "1% far")
DIST = "embedding::halfvec(768) <=> %(q)s::halfvec(768)"  # the HNSW index's expression
EXACT_DIST = "embedding <=> %(q)s::halfvec"  # the uncast column: no index serves it
WHERE = "model_id = 1 AND category = ANY(%(cats)s)"
STATEMENTS = {
    "baseline": f"SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 ORDER BY {DIST} LIMIT {K}",
    "exact": f"SELECT image_id FROM imgsearch.embeddings WHERE {WHERE} ORDER BY {EXACT_DIST} LIMIT {K}",
    "fetch only": f"SELECT count(embedding) FROM imgsearch.embeddings WHERE {WHERE}",
    "distances": f"SELECT max({EXACT_DIST}) FROM imgsearch.embeddings WHERE {WHERE}",
    "iterative": (
        f"WITH pool AS MATERIALIZED (SELECT image_id, embedding FROM imgsearch.embeddings WHERE {WHERE} "
        f"ORDER BY {DIST} LIMIT {POOL}) SELECT image_id FROM pool ORDER BY {EXACT_DIST} LIMIT {K}"
    ),
    "binary + rerank": (
        f"SELECT image_id FROM (SELECT image_id, embedding FROM imgsearch.embeddings WHERE {WHERE} "
        "ORDER BY binary_quantize(embedding)::bit(768) <~> binary_quantize(%(q)s::halfvec) "
        f"LIMIT {POOL}) c ORDER BY {EXACT_DIST} LIMIT {K}"
    ),
}
CODE_POOL = (
    "SELECT image_id, product_pk, model_id, region FROM public.bench_codes WHERE model_id = 1 "
    "AND category = ANY(%(cats)s) ORDER BY code <~> binary_quantize(%(q)s::halfvec) LIMIT {POOL}"
)
STORED = {
    "stored codes, scan only": f"SELECT count(*) FROM ({CODE_POOL.format(POOL=POOL)}) c",
    "stored codes + rerank": (
        f"SELECT e.image_id FROM ({CODE_POOL.format(POOL=POOL)}) c JOIN imgsearch.embeddings e "
        "USING (image_id, product_pk, model_id, region) "
        f"ORDER BY {EXACT_DIST.replace('embedding', 'e.embedding')} LIMIT {K}"
    ),
}
# IVF lists (ivfflat) over an expression of their own, so that the HNSW index can't serve their
# queries nor they the baseline's: the vectors are unit, so their normalised copies rank the same
IVF_DIST = "l2_normalize(embedding)::halfvec(768) <=> %(q)s::halfvec(768)"
IVF_PROBES = (10, 40)
IVF = {
    f"IVF lists, iterative, probes {probes}": (
        f"WITH pool AS MATERIALIZED (SELECT image_id, embedding FROM imgsearch.embeddings WHERE {WHERE} "
        f"ORDER BY {IVF_DIST} LIMIT {POOL}) SELECT image_id FROM pool ORDER BY {EXACT_DIST} LIMIT {K}"
    )
    for probes in IVF_PROBES
}
# the catalog's rows copied into a table partitioned by category, an HNSW index on each partition
PART_DIST = DIST.replace("embedding::halfvec(768)", "embedding")
PART_FILTERED = (
    f"SELECT image_id FROM public.bench_parts WHERE category = ANY(%(cats)s) ORDER BY {PART_DIST} LIMIT {K}"
)
PART_EFS = (40, 200)
PARTS = {
    # the planner's own choice: each partition's 1,000-odd rows scanned exactly, read contiguously
    "partitions by category, as planned": PART_FILTERED,
    # each partition's graph, forced: one ordered index scan per partition left, merged
    **{f"partitions by category, their graphs, ef {ef}": PART_FILTERED for ef in PART_EFS},
    "unfiltered, partitioned, their graphs, ef 40": (
        f"SELECT image_id FROM public.bench_parts ORDER BY {PART_DIST} LIMIT {K}"
    ),
}
GRAPHS_FORCED = ["SET LOCAL enable_seqscan = off"]
SETTINGS = {
    **{
        f"partitions by category, their graphs, ef {ef}": [*GRAPHS_FORCED, f"SET LOCAL hnsw.ef_search = {ef}"]
        for ef in PART_EFS
    },
    "unfiltered, partitioned, their graphs, ef 40": [*GRAPHS_FORCED, "SET LOCAL hnsw.ef_search = 40"],
    **{
        f"IVF lists, iterative, probes {probes}": [
            f"SET LOCAL ivfflat.probes = {probes}",
            "SET LOCAL ivfflat.iterative_scan = relaxed_order",
        ]
        for probes in IVF_PROBES
    },
    "iterative": [
        "SET LOCAL hnsw.iterative_scan = relaxed_order",
        "SET LOCAL hnsw.ef_search = 200",
        "SET LOCAL hnsw.max_scan_tuples = 100000",
        "SET LOCAL hnsw.scan_mem_multiplier = 4",
    ],
    "per-category HNSW, ef 40": ["SET LOCAL hnsw.ef_search = 40"],
    "per-category HNSW, ef 200": ["SET LOCAL hnsw.ef_search = 200"],
}


def per_category(count: int) -> str:
    """One branch per category, each served by that category's partial index, merged by distance."""
    branch = (
        f"(SELECT image_id, {DIST} AS d FROM imgsearch.embeddings "
        "WHERE model_id = 1 AND category = %(c{i})s ORDER BY {DIST} LIMIT {K})"
    )
    branches = " UNION ALL ".join(branch.format(i=i, DIST=DIST, K=K) for i in range(count))
    return f"SELECT image_id FROM ({branches}) u ORDER BY d LIMIT {K}"


def explain(
    conn: psycopg.Connection[Any], statement: str, params: dict[str, Any], settings: list[str]
) -> dict[str, Any]:
    with conn.transaction():
        conn.execute("SET LOCAL jit = off")
        conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")  # planned for the actual values
        for setting in settings:
            conn.execute(setting)
        plan: dict[str, Any] = conn.execute(
            "EXPLAIN (ANALYZE, SUMMARY, FORMAT JSON) " + statement, params
        ).fetchone()[0][0]  # type: ignore[index]
        ids = [row[0] for row in conn.execute(statement, params).fetchall()]
    return {"planning": plan["Planning Time"], "execution": plan["Execution Time"], "ids": ids}


def category_indexes(conn: psycopg.Connection[Any], categories: list[str], create: bool) -> float:
    start = time.perf_counter()
    for n, category in enumerate(categories):
        name = sql.Identifier(f"bench_far_cat_{n:03d}")
        if create:
            conn.execute(
                sql.SQL(
                    "CREATE INDEX IF NOT EXISTS {} ON imgsearch.embeddings USING hnsw "
                    "((embedding::halfvec(768)) halfvec_cosine_ops) WITH (m = {}, ef_construction = {}) "
                    "WHERE model_id = 1 AND category = {}"
                ).format(name, sql.Literal(HNSW_M), sql.Literal(HNSW_EF_CONSTRUCTION), sql.Literal(category))
            )
        else:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS imgsearch.{}").format(name))
    conn.execute("ANALYZE imgsearch.embeddings")
    return time.perf_counter() - start


def ivf_lists(conn: psycopg.Connection[Any], rows: int, create: bool) -> float:
    """The IVF index (pgvector's guidance: a list per 1,000 rows up to 1M, the square root past
    it), made or dropped; its size is printed."""
    start = time.perf_counter()
    conn.execute("DROP INDEX IF EXISTS imgsearch.bench_far_ivf")
    if not create:
        return 0.0
    lists = max(10, rows // 1000 if rows <= 1_000_000 else int(rows**0.5))
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute(
        sql.SQL(
            "CREATE INDEX bench_far_ivf ON imgsearch.embeddings USING ivfflat "
            "((l2_normalize(embedding)::halfvec(768)) halfvec_cosine_ops) WITH (lists = {})"
        ).format(sql.Literal(lists))
    )
    conn.execute("ANALYZE imgsearch.embeddings")
    conn.execute("SELECT pg_prewarm('imgsearch.bench_far_ivf'::regclass)")
    size = conn.execute("SELECT pg_relation_size('imgsearch.bench_far_ivf')").fetchone()[0]  # type: ignore[index]
    print(f"  IVF index: {lists} lists, {size / 2**20:.1f} MiB, {size / rows:.0f} bytes a row", flush=True)
    return time.perf_counter() - start


def partitions(conn: psycopg.Connection[Any], categories: list[str], create: bool) -> float:
    """The partitioned copy (see PARTS), made or dropped; its indexes' size is printed."""
    start = time.perf_counter()
    conn.execute("DROP TABLE IF EXISTS public.bench_parts")
    if not create:
        return 0.0
    conn.execute(
        "CREATE TABLE public.bench_parts (image_id bigint, category text, embedding halfvec(768)) "
        "PARTITION BY LIST (category)"
    )
    for n, category in enumerate(categories):
        conn.execute(
            sql.SQL("CREATE TABLE public.{} PARTITION OF public.bench_parts FOR VALUES IN ({})").format(
                sql.Identifier(f"bench_parts_{n:03d}"), sql.Literal(category)
            )
        )
    conn.execute(
        "INSERT INTO public.bench_parts SELECT image_id, category, embedding FROM imgsearch.embeddings "
        "WHERE model_id = 1"
    )
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute(
        sql.SQL(
            "CREATE INDEX bench_parts_hnsw ON public.bench_parts USING hnsw (embedding halfvec_cosine_ops) "
            "WITH (m = {}, ef_construction = {})"
        ).format(sql.Literal(HNSW_M), sql.Literal(HNSW_EF_CONSTRUCTION))
    )
    conn.execute("VACUUM ANALYZE public.bench_parts")
    conn.execute(
        "SELECT pg_prewarm(r) FROM (SELECT h.inhrelid AS r FROM pg_inherits h WHERE h.inhparent = "
        "'public.bench_parts'::regclass UNION ALL SELECT i.indexrelid FROM pg_inherits h JOIN pg_index i "
        "ON i.indrelid = h.inhrelid WHERE h.inhparent = 'public.bench_parts'::regclass) AS each"
    )
    size = conn.execute(
        "SELECT sum(pg_relation_size(i.indexrelid)) FROM pg_inherits h JOIN pg_index i ON i.indrelid = h.inhrelid "
        "WHERE h.inhparent = 'public.bench_parts'::regclass"
    ).fetchone()[0]  # type: ignore[index]
    print(f"  {len(categories)} partitions, their HNSW indexes {size / 2**20:.1f} MiB", flush=True)
    return time.perf_counter() - start


def stored_codes(conn: psycopg.Connection[Any], create: bool) -> float:
    """The side table of codes (see the module's docstring), made or dropped; its size is printed."""
    start = time.perf_counter()
    if not create:
        conn.execute("DROP TABLE IF EXISTS public.bench_codes")
        return 0.0
    conn.execute("DROP TABLE IF EXISTS public.bench_codes")
    conn.execute(
        "CREATE TABLE public.bench_codes AS SELECT image_id, product_pk, model_id, region, category, "
        "price_units, binary_quantize(embedding) AS code FROM imgsearch.embeddings"
    )
    conn.execute(
        "CREATE INDEX bench_codes_covering ON public.bench_codes (model_id, category, price_units) "
        "INCLUDE (code, image_id, product_pk, region)"
    )
    conn.execute("VACUUM ANALYZE public.bench_codes")  # all visible: read index-only
    conn.execute("SELECT pg_prewarm('public.bench_codes_covering'::regclass)")
    size = conn.execute("SELECT pg_relation_size('public.bench_codes_covering')").fetchone()[0]  # type: ignore[index]
    rows = conn.execute("SELECT count(*) FROM public.bench_codes").fetchone()[0]  # type: ignore[index]
    print(f"  the covering index of codes: {size / 2**20:.1f} MiB, {size / rows:.0f} bytes a row", flush=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument(
        "--data", choices=DATA, default="clustered",
        help="the vectors: isotropic clusters, or calibrated on real embeddings (bench/search/calibration.py)",
    )  # fmt: skip
    parser.add_argument(
        "--no-graphs", action="store_true", help="skip the per-category HNSW indexes (their build)"
    )
    parser.add_argument("--ivf", action="store_true", help="also IVF lists (ivfflat) with iterative scans")
    parser.add_argument(
        "--partitions", action="store_true", help="also a copy partitioned by category, a graph each"
    )
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    server = make_url(url)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    with psycopg.connect(
        host=server.query["host"], user="postgres", dbname=server.database, autocommit=True
    ) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        for relation in (
            "imgsearch.embeddings_hnsw_m1",
            "imgsearch.embeddings",
            "imgsearch.embeddings_category_price_idx",
        ):
            conn.execute("SELECT pg_prewarm(%s::regclass)", (relation,))
        categories = sorted(r[0] for r in conn.execute("SELECT DISTINCT category FROM imgsearch.embeddings"))

        def measure(phase: str) -> None:
            for n, (q, filters) in enumerate(cases):
                params: dict[str, Any] = {"q": halfvec_text(q)}
                for name, kwargs in filters:
                    if name not in FILTERS:
                        continue
                    cats = (
                        kwargs["category"] if isinstance(kwargs["category"], list) else [kwargs["category"]]
                    )
                    params |= {"cats": cats} | {f"c{i}": c for i, c in enumerate(cats)}
                    if phase == "codes":
                        methods = STORED | {"baseline, codes": STATEMENTS["baseline"]}
                    elif phase == "partitions":
                        methods = PARTS | {"baseline, partitions": STATEMENTS["baseline"]}
                    elif phase == "ivf":
                        methods = IVF | {"baseline, with IVF lists": STATEMENTS["baseline"]}
                    elif phase == "indexed":
                        methods = {f"per-category HNSW, ef {ef}": per_category(len(cats)) for ef in (40, 200)}
                        methods["baseline, with 100 partial indexes"] = STATEMENTS["baseline"]
                    else:
                        methods = STATEMENTS
                    for method, statement in methods.items():
                        got = explain(conn, statement, params, SETTINGS.get(method, []))
                        results.setdefault((name, method), []).append(got | {"rows": len(cats)})
                print(f"  {phase}: {n + 1}/{len(cases)} queries", flush=True)

        def measure_with(phase: str, what: str, make: Callable[[bool], float]) -> None:
            """``phase`` measured with ``make(True)``'s objects, dropped after (``make(False)``)."""
            built = make(True)
            print(f"  {what} built in {built:.0f} s", flush=True)
            try:
                measure(phase)
            finally:
                make(False)

        measure("plain")
        measure_with("codes", "stored codes and their covering index", partial(stored_codes, conn))
        if args.ivf:
            measure_with("ivf", "IVF lists", partial(ivf_lists, conn, args.rows))
        if args.partitions:
            measure_with("partitions", "partitions and their indexes", partial(partitions, conn, categories))
        if not args.no_graphs:
            measure_with(
                "indexed",
                f"{len(categories)} partial HNSW indexes",
                partial(category_indexes, conn, categories),
            )

    report(results, args)


def report(results: dict[tuple[str, str], list[dict[str, Any]]], args: argparse.Namespace) -> None:
    def p50(name: str, method: str, field: str) -> float:
        return statistics.median(r[field] for r in results[(name, method)])

    print(
        f"\n{args.rows} rows x 768 dims ({args.data} vectors), {args.queries} queries, k={K}; server time (EXPLAIN ANALYZE), "
        "p50 over the queries; ratio = (planning + execution) / the unfiltered HNSW query's\n"
    )
    print("| filter | method | recall@10 | planning ms | execution ms | ratio |")
    print("|---|---|---|---|---|---|")
    for name in FILTERS:
        base = p50(name, "baseline", "planning") + p50(name, "baseline", "execution")
        truths = [set(r["ids"]) for r in results[(name, "exact")]]
        for method in [m for (n, m) in results if n == name]:
            runs = results[(name, method)]
            if method in ("fetch only", "distances", "stored codes, scan only"):
                recall = "-"
            elif method.startswith(("baseline", "unfiltered")):
                recall = "(unfiltered)"
            else:
                recall = (
                    f"{np.mean([len(t & set(r['ids'])) / K for t, r in zip(truths, runs, strict=True)]):.3f}"
                )
            plan, run = p50(name, method, "planning"), p50(name, method, "execution")
            print(f"| {name} | {method} | {recall} | {plan:.2f} | {run:.2f} | {(plan + run) / base:.2f}x |")
    print()
    for name in FILTERS:
        rows = statistics.median(r["ids"][0] for r in results[(name, "fetch only")])  # count(embedding)
        fetch = p50(name, "fetch only", "execution")
        distances = p50(name, "distances", "execution") - fetch
        print(
            f"{name}: {rows:.0f} matching rows; reading them {1000 * fetch / rows:.2f} us/row, their distances "
            f"{1000 * distances / rows:.2f} us/row more"
        )


if __name__ == "__main__":
    main()
