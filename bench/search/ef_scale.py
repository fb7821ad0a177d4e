"""The model's HNSW graph at a catalog's size: recall@10 and latency of unfiltered searches for a
range of ``hnsw.ef_search``, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/ef_scale.py --rows 1000000
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/ef_scale.py --rows 1000000 --data calibrated --database bench_search_cal1m

On bench/search/search.py's catalog (loaded first when missing, as that script loads it: clustered 768-d
rows, m 16, ef_construction 128), ``--queries`` of bench/search/search.py's query vectors (a catalog row
plus noise), each run as the statement an unfiltered imgsearch search runs, in a transaction that
sets ``hnsw.ef_search``, the settings interleaved query by query. Recall@10 is against the exact
top 10 in float32 (numpy). The baseline is pgvector's default, ef_search 40, in the same run.

It tells whether imgsearch's ef_search keeps its recall as the catalog grows, and what a higher
one costs. A second table runs the same queries through imgsearch's own search
(``search_vector``): the fixed floor of 200 against ``min_ef_search`` of the model's rows.

The figure it produces: docs/benchmarks.md, "ef_search and the catalog's size".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import DATA, query_cases, stored_catalog
from _data import exact_top_k

from imgsearch import Catalog
from imgsearch import search as vector_search
from imgsearch.db import vector_index
from imgsearch.settings import Settings

EFS = (40, 100, 200, 300, 400, 600, 800)
K = 10


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each query and setting")
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    args = parser.parse_args()
    url, data, labels, model_id = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    queries = np.stack([q for q, _ in cases]).astype(np.float32)
    print(f"exact top {K} of {len(queries)} queries ...", flush=True)
    truth = [set((row + 1).tolist()) for row in exact_top_k(data, queries, K)]  # ids are rows + 1
    dim = data.shape[1]
    engine = create_engine(url, pool_size=1)
    statement = text(
        f"SELECT image_id FROM imgsearch.embeddings WHERE model_id = {int(model_id)} "
        f"ORDER BY embedding::halfvec({dim}) <=> CAST(:q AS halfvec({dim})) LIMIT {K}"
    )
    recall: dict[int, list[float]] = {ef: [] for ef in EFS}
    times: dict[int, list[float]] = {ef: [] for ef in EFS}
    with engine.connect() as conn:
        for number, (q, expected) in enumerate(zip(queries, truth, strict=True)):
            literal = "[" + ",".join(f"{x:.6f}" for x in q) + "]"
            for ef in EFS:  # untimed: recall, and the graph's pages this query touches read in
                with conn.begin():
                    conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {ef}")
                    got = {r[0] for r in conn.execute(statement, {"q": literal}).all()}
                recall[ef].append(len(got & expected) / K)
            for _ in range(args.repeats):
                for ef in EFS:
                    with conn.begin():
                        conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {ef}")
                        start = time.perf_counter()
                        conn.execute(statement, {"q": literal}).all()
                        times[ef].append((time.perf_counter() - start) * 1000)
            if (number + 1) % 20 == 0:
                print(f"  {number + 1} queries", flush=True)
    base = statistics.median(times[EFS[0]])
    print(f"\n| ef_search | recall@{K} | queries with recall < 0.9 | p50 | against ef {EFS[0]} |")
    print("|---|---|---|---|---|")
    for ef in EFS:
        p50 = statistics.median(times[ef])
        low = sum(1 for r in recall[ef] if r < 0.9)
        print(
            f"| {ef} | {np.mean(recall[ef]):.3f} | {low} of {len(recall[ef])} | {p50:.2f} ms | {p50 / base:.2f}x |"
        )
    print(f"\n{args.rows:,} rows x {dim}; {len(queries)} queries, {args.repeats} timed runs each per setting")
    library(url, queries, truth, args.repeats)


def library(url: str, queries: np.ndarray, truth: list[set[int]], repeats: int) -> None:
    """The same queries through imgsearch's search (``search_vector``, as ``catalog.search`` runs
    it): the fixed ef_search floor of 200 against the floor for the model's rows."""
    settings = Settings()
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        model = catalog.active_model
        with catalog.engine.connect() as conn:
            rows = vector_index.indexed_rows(conn, model.id)
        floors = {"fixed": vector_search.MIN_EF_SEARCH, "for the rows": vector_search.min_ef_search(rows)}
        recall: dict[str, list[float]] = {name: [] for name in floors}
        times: dict[str, list[float]] = {name: [] for name in floors}
        for q, expected in zip(queries, truth, strict=True):
            for attempt in range(repeats + 1):
                for name, floor in floors.items():
                    with catalog.engine.begin() as conn:
                        start = time.perf_counter()
                        result = vector_search.search_vector(
                            conn, model, q, vector_search.Filters(), K, min_ef=floor
                        )
                        elapsed = (time.perf_counter() - start) * 1000
                    if attempt:  # the first: warm-up
                        times[name].append(elapsed)
                    else:
                        recall[name].append(len({h.image_id for h in result.hits} & expected) / K)
    base = statistics.median(times["fixed"])
    print(f"\nthrough imgsearch's search, {rows:,} rows in the model's index (the planner's estimate)")
    print(f"| ef_search floor | recall@{K} | p50 | against the fixed floor |")
    print("|---|---|---|---|")
    for name, floor in floors.items():
        p50 = statistics.median(times[name])
        print(f"| {name}: {floor} | {np.mean(recall[name]):.3f} | {p50:.2f} ms | {p50 / base:.2f}x |")


if __name__ == "__main__":
    main()
