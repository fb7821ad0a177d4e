"""HNSW build parameters: how often a build leaves a cluster out of reach, and what better graphs cost.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/index_build.py --builds 5

pgvector draws each element's level at random, so two builds of the same index over the same rows
are two different graphs. On bench/search/search.py's catalog (100,000 clustered 768-d rows, 200
clusters), one build in five at imgsearch's old parameters (m 16, ef_construction 64) left one
query's cluster so poorly linked that an unfiltered search at ef_search 200 found none of its top
10 (2026-11-23, session 16). One build tells little; this script builds the index ``--builds``
times for each pair of parameters (``--params``, ``m:ef_construction``), pairs taking turns, and
after each build measures, on the same catalog:

* recall@10 of the unfiltered HNSW query at ef_search 40 (pgvector's default) and 200
  (imgsearch's smallest) against the exact top 10, for two queries in each of the 200 clusters
  (a catalog row plus noise, as bench/search/search.py's queries), so that no cluster goes untried;
  "missed" counts queries that found fewer than half of their top 10
* build time: ``CREATE INDEX`` with maintenance_work_mem 2GB, as bench/search/search.py builds it
* what a write costs: ``--writes`` embeddings rows deleted and inserted again with new vectors
  of their clusters, in a transaction that is rolled back; the INSERT is timed. Every new row
  version enters the HNSW index: an upload's, a re-embedding's, a price change's (the embeddings
  carry the price, migration 0004). Ratios are against the first pair's mean in the same run.
* the unfiltered query's p50 at ef_search 200 (prepared, client time); builds follow each other,
  so this is not interleaved: read it as a rough figure.

At the end the index is rebuilt with imgsearch's current parameters, so bench/search/search.py finds the
catalog as it builds it. Uses (and if missing builds) the database ``bench_search``.

The figure it produces: docs/benchmarks.md, "HNSW build parameters".
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
from pgvector import HalfVector
from pgvector.psycopg import register_vector
from sqlalchemy import make_url

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import CLUSTERS, DATA, stored_catalog

from imgsearch.db.vector_index import HNSW_EF_CONSTRUCTION, HNSW_M, halfvec_text, index_name

K = 10
HNSW = (
    "SELECT image_id FROM imgsearch.embeddings WHERE model_id = {model} "
    "ORDER BY embedding::halfvec(768) <=> %(q)s::halfvec(768) LIMIT 10"
)
INSERT = (
    "INSERT INTO imgsearch.embeddings (model_id, image_id, product_pk, tenant, embedding) "
    "VALUES (%s, %s, %s, 'acme', %s)"
)


def queries_per_cluster(
    data: np.ndarray, labels: np.ndarray, per_cluster: int
) -> tuple[np.ndarray, np.ndarray]:
    """``per_cluster`` queries in every cluster (a row of it plus noise), rounded to float16 as a
    halfvec parameter is, and the clusters they came from."""
    rng = np.random.default_rng(23)
    dim = data.shape[1]
    rows = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), per_cluster, replace=False) for c in range(CLUSTERS)]
    )
    q = data[rows] + rng.standard_normal((len(rows), dim)).astype(np.float32) * 0.3 / np.sqrt(dim)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q.astype(np.float16).astype(np.float32), labels[rows]


def exact_ids(data: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    """Image ids (row + 1) of each query's exact top 10 by cosine distance over the stored
    (float16) vectors."""
    stored = data.astype(np.float16).astype(np.float32)
    stored /= np.linalg.norm(stored, axis=1, keepdims=True)
    sims = queries @ stored.T
    top = np.argpartition(-sims, K, axis=1)[:, :K]
    return [{int(i) + 1 for i in row} for row in top]


def build(conn: psycopg.Connection[Any], model_id: int, m: int, ef_construction: int) -> float:
    """Drop and rebuild the model's HNSW index with these parameters; seconds taken."""
    name = index_name(model_id)
    conn.execute(f"DROP INDEX IF EXISTS imgsearch.{name}")
    conn.execute("SET maintenance_work_mem = '2GB'")
    start = time.perf_counter()
    conn.execute(
        f"CREATE INDEX {name} ON imgsearch.embeddings USING hnsw ((embedding::halfvec(768)) "
        f"halfvec_cosine_ops) WITH (m = {int(m)}, ef_construction = {int(ef_construction)}) "
        f"WHERE model_id = {int(model_id)}"
    )
    seconds = time.perf_counter() - start
    conn.execute("VACUUM ANALYZE imgsearch.embeddings")
    conn.execute("SELECT pg_prewarm(%s::regclass)", (f"imgsearch.{name}",))
    return seconds


def recall_at(
    conn: psycopg.Connection[Any], model_id: int, queries: np.ndarray, truth: list[set[int]], ef: int
) -> tuple[list[float], list[float]]:
    """Per query: recall@10 at ``ef`` and the client time in ms."""
    conn.execute(f"SET hnsw.ef_search = {int(ef)}")
    recalls, times = [], []
    stmt = HNSW.format(model=int(model_id))
    for q, expected in zip(queries, truth, strict=True):
        start = time.perf_counter()
        found = {r[0] for r in conn.execute(stmt, {"q": halfvec_text(q)}, prepare=True)}
        times.append((time.perf_counter() - start) * 1000)
        recalls.append(len(found & expected) / K)
    return recalls, times


def write_cost(
    conn: psycopg.Connection[Any], model_id: int, data: np.ndarray, labels: np.ndarray, count: int, seed: int
) -> float:
    """Milliseconds a row to insert ``count`` embeddings rows again with new vectors of their
    clusters (rolled back)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data), count, replace=False)
    centres = np.stack([data[labels == c].mean(axis=0) for c in range(CLUSTERS)])
    fresh = centres[labels[rows]] + rng.standard_normal((count, data.shape[1])) * 0.6 / np.sqrt(data.shape[1])
    fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
    ids = [int(r) + 1 for r in rows]
    params = [(model_id, i, i, HalfVector(v)) for i, v in zip(ids, fresh, strict=True)]
    with conn.transaction(force_rollback=True):
        conn.execute(
            "DELETE FROM imgsearch.embeddings WHERE model_id = %s AND image_id = ANY(%s)", (model_id, ids)
        )
        start = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(INSERT, params)
        return (time.perf_counter() - start) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--builds", type=int, default=5, help="builds of each pair of parameters")
    parser.add_argument(
        "--params", default="16:64,16:128,24:64", help="m:ef_construction pairs, comma-separated"
    )
    parser.add_argument("--per-cluster", type=int, default=2, help="queries in each of the 200 clusters")
    parser.add_argument(
        "--writes", type=int, default=500, help="rows inserted (and rolled back) after each build"
    )
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()
    pairs = [tuple(int(x) for x in p.split(":")) for p in args.params.split(",")]

    url, data, labels, model_id = stored_catalog(args.rows, args.data)
    queries, _ = queries_per_cluster(data, labels, args.per_cluster)
    truth = exact_ids(data, queries)
    server = make_url(url)
    results: dict[tuple[int, ...], dict[str, list[float]]] = {p: {} for p in pairs}
    with psycopg.connect(
        host=server.query["host"], user="postgres", dbname=server.database, autocommit=True
    ) as conn:
        register_vector(conn)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        conn.execute("SET jit = off")
        conn.execute("SELECT pg_prewarm('imgsearch.embeddings'::regclass)")
        try:
            for b in range(args.builds):
                for pair in pairs:
                    m, ef_c = pair
                    cell = results[pair]
                    seconds = build(conn, model_id, m, ef_c)
                    r40, _ = recall_at(conn, model_id, queries, truth, 40)
                    r200, t200 = recall_at(conn, model_id, queries, truth, 200)
                    write_ms = write_cost(conn, model_id, data, labels, args.writes, seed=100 + b)
                    for key, value in (
                        ("build s", seconds),
                        ("recall 40", float(np.mean(r40))),
                        ("recall 200", float(np.mean(r200))),
                        ("missed 40", float(sum(r < 0.5 for r in r40))),
                        ("missed 200", float(sum(r < 0.5 for r in r200))),
                        ("worst 200", float(min(r200))),
                        ("p50 200", statistics.median(t200)),
                        ("write ms", write_ms),
                    ):
                        cell.setdefault(key, []).append(value)
                    print(
                        f"  build {b + 1}/{args.builds} m={m} ef_construction={ef_c}: {seconds:.1f} s, "
                        f"recall@10 {np.mean(r40):.4f} (ef 40) {np.mean(r200):.4f} (ef 200), "
                        f"missed {sum(r < 0.5 for r in r40)} / {sum(r < 0.5 for r in r200)}, "
                        f"write {write_ms:.2f} ms a row",
                        flush=True,
                    )
        finally:
            print(
                f"rebuilding with imgsearch's parameters (m {HNSW_M}, ef_construction {HNSW_EF_CONSTRUCTION}) ..."
            )
            build(conn, model_id, HNSW_M, HNSW_EF_CONSTRUCTION)

    base_write = statistics.mean(results[pairs[0]]["write ms"])
    base_build = statistics.mean(results[pairs[0]]["build s"])
    print(
        f"\n{args.rows} rows x 768 dims, {len(queries)} queries ({args.per_cluster} in each cluster), "
        f"{args.builds} builds of each; per build: recall@10 (mean over queries), queries missed "
        "(under 5 of their 10 found)\n"
    )
    print(
        "| m | ef_construction | recall@10, ef 40 (per build) | missed, ef 40 | recall@10, ef 200 (per build) "
        "| missed, ef 200 | worst query, ef 200 | build s | build / first | write ms a row | write / first "
        "| p50 ms, ef 200 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")

    def each(cell: dict[str, list[float]], key: str, fmt: str) -> str:
        return " ".join(format(v, fmt) for v in cell[key])

    for (m, ef_c), cell in results.items():
        print(
            f"| {m} | {ef_c} | {each(cell, 'recall 40', '.3f')} | {each(cell, 'missed 40', '.0f')} | "
            f"{each(cell, 'recall 200', '.3f')} | {each(cell, 'missed 200', '.0f')} | {min(cell['worst 200']):.1f} | "
            f"{statistics.mean(cell['build s']):.1f} | {statistics.mean(cell['build s']) / base_build:.2f}x | "
            f"{statistics.mean(cell['write ms']):.2f} | {statistics.mean(cell['write ms']) / base_write:.2f}x | "
            f"{statistics.median(cell['p50 200']):.2f} |"
        )


if __name__ == "__main__":
    main()
