"""A category's own HNSW graph against an exact scan of its rows, for queries near and far, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/value_graphs.py --rows 1000000 --queries 20
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/value_graphs.py --rows 1000000 --queries 20 --data calibrated --database bench_search_cal1m

On bench/search/search.py's catalog (run it first; this script builds each category's index, kept
whatever its build check finds, where it has none), for each query of bench/search/search.py's "1% near" and "1% far" filters:
- the query's category through its own partial HNSW index, at ``ef_search`` 40, 200, 400 and 1000
  (planned for the value, as imgsearch plans such a search);
- the exact scan of the category's rows (the ground truth);
- the baseline: the unfiltered HNSW query with pgvector's defaults, interleaved with the others.

Each query's category is read once, untimed, before its timings (its rows and its graph in memory,
as on a server in service).

It gives the floor under a far filter's search at this size: what recall an HNSW graph of the
category's rows reaches, and at what cost against the unfiltered query.

The figure it produces: docs/benchmarks.md, "Filtered search at 1M rows" (the per-category graphs
against exact scans).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import DATA, DB, calibrated_with_labels, clustered_with_labels, database_url, query_cases

from imgsearch import Catalog
from imgsearch.db import filter_indexes
from imgsearch.settings import Settings

EFS = (40, 200, 400, 1000)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()
    settings = Settings()
    url = database_url(
        settings.home, args.database or (DB if args.data == "clustered" else f"{DB}_{args.data}")
    )
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        # every category's graph, whatever its build check finds (a refused one's index is
        # dropped): this measures each one's own graph
        refused = filter_indexes.MIN_RECALL
        filter_indexes.MIN_RECALL = 0.0
        with catalog.engine.begin() as conn:
            conn.execute(text("DELETE FROM imgsearch.filter_indexes WHERE recall < :r"), {"r": refused})
        print("building per-category indexes (those not built yet) ...", flush=True)
        catalog.index_filter_values("category", max(1, args.rows // 200), progress=False)
    make = calibrated_with_labels if args.data == "calibrated" else clustered_with_labels
    data, labels = make(args.rows, 768, 11)
    cases = query_cases(data, labels, args.queries)
    names = [name for name, _ in cases[0][1]]
    server = make_url(url)
    conn = psycopg.connect(
        host=server.query["host"], user="postgres", dbname=server.database, autocommit=True
    )
    register_vector(conn)
    graph_sql = (
        "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND category = %s "
        "ORDER BY embedding::halfvec(768) <=> %s LIMIT 10"
    )
    exact_sql = (
        "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND category = %s "
        "ORDER BY embedding <=> %s LIMIT 10"
    )
    baseline_sql = "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 ORDER BY embedding::halfvec(768) <=> %s LIMIT 10"

    def timed(statement: str, params: tuple[object, ...], settings: dict[str, str]) -> tuple[set[int], float]:
        with conn.transaction():
            for name, value in settings.items():
                conn.execute(f"SET LOCAL {name} = {value}")
            start = time.perf_counter()
            rows = conn.execute(statement, params).fetchall()
            return {r[0] for r in rows}, (time.perf_counter() - start) * 1000

    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    for which in ("1% near", "1% far"):
        position = names.index(which)
        for q, filters in cases:
            category = filters[position][1]["category"]
            vector = HalfVector(q)
            # the category's rows and graph in memory first, as a server in service has them
            timed(exact_sql, (category, vector), {"enable_indexscan": "off"})
            timed(
                graph_sql,
                (category, vector),
                {"hnsw.ef_search": "1000", "plan_cache_mode": "force_custom_plan"},
            )
            truth, exact_ms = timed(exact_sql, (category, vector), {"enable_indexscan": "off"})
            cell = results.setdefault((which, "exact scan of the category"), {"recall": [], "ms": []})
            cell["recall"].append(1.0)
            cell["ms"].append(exact_ms)
            for ef in EFS:
                got, ms = timed(
                    graph_sql,
                    (category, vector),
                    {"hnsw.ef_search": str(ef), "plan_cache_mode": "force_custom_plan"},
                )
                cell = results.setdefault((which, f"own graph, ef_search {ef}"), {"recall": [], "ms": []})
                cell["recall"].append(len(got & truth) / 10)
                cell["ms"].append(ms)
                _, base = timed(baseline_sql, (vector,), {})
                cell = results.setdefault((which, "baseline"), {"recall": [], "ms": []})
                cell["ms"].append(base)
        print(f"  {which}: done", flush=True)
    print(f"\n{args.rows:,} rows, {args.queries} queries per filter; baseline: the unfiltered HNSW query\n")
    print("| filter | method | recall@10 | p50 ms | p50 / baseline |")
    print("|---|---|---|---|---|")
    for (which, method), cell in results.items():
        if method == "baseline":
            continue
        base = statistics.median(results[(which, "baseline")]["ms"])
        p50 = statistics.median(cell["ms"])
        print(f"| {which} | {method} | {np.mean(cell['recall']):.3f} | {p50:.2f} | {p50 / base:.2f}x |")
    for which in ("1% near", "1% far"):
        print(
            f"| {which} | baseline | | {statistics.median(results[(which, 'baseline')]['ms']):.2f} | 1.00x |"
        )


if __name__ == "__main__":
    main()
