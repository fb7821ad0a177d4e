"""halfvec or vector for the embeddings column? Recall@10 against float32 exact search,
index size and HNSW build time for both, on one synthetic catalog, in one run.

    .venv/bin/python bench/search/storage_types.py --rows 20000 --dim 768
    .venv/bin/python bench/search/storage_types.py --rows 20000 --dim 768 --data calibrated

``--data calibrated``: bench/_catalog.py's vectors shaped as real embeddings are, in place of the
isotropic clusters.

Uses the embedded database (IMGSEARCH_HOME, or a temporary one) and drops its tables afterwards.

The figure it produces: docs/benchmarks.md, "Storage type: halfvec vs vector".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import DATA, calibrated_with_labels
from _data import clustered, exact_top_k

from imgsearch.db import embedded
from imgsearch.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", choices=DATA, default="clustered", help="the catalog's vectors")
    args = parser.parse_args()

    url = embedded.ensure_started(Settings().home).replace("postgresql+psycopg", "postgresql")

    def make(rows: int) -> np.ndarray:
        if args.data == "calibrated":
            return calibrated_with_labels(rows, args.dim, seed=1)[0]
        return clustered(rows, args.dim, seed=1)

    data = make(args.rows)
    rng = np.random.default_rng(2)
    queries = make(args.queries)  # same centres: queries land inside clusters
    queries = queries + rng.standard_normal(queries.shape).astype(np.float32) * 0.01
    truth = exact_top_k(data, queries, 10)

    print(f"{args.rows} rows x {args.dim} dims ({args.data} vectors), {args.queries} queries", flush=True)
    rows = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
        conn.execute("SET maintenance_work_mem = '1GB'")
        for kind in ("vector", "halfvec"):
            table = f"bench_storage_{kind}"
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, embedding {kind}({args.dim}))")
            with conn.cursor().copy(f"COPY {table} (id, embedding) FROM STDIN") as copy:
                for i, vec in enumerate(data):
                    copy.write_row((i, "[" + ",".join(f"{x:.7g}" for x in vec) + "]"))
            heap = conn.execute(f"SELECT pg_table_size('{table}')").fetchone()[0]
            start = time.perf_counter()
            conn.execute(f"CREATE INDEX {table}_idx ON {table} USING hnsw (embedding {kind}_cosine_ops)")
            build_s = time.perf_counter() - start
            size = conn.execute(f"SELECT pg_relation_size('{table}_idx')").fetchone()[0]
            recalls = {}
            for ef in (40, 100, 200):
                conn.execute(f"SET hnsw.ef_search = {ef}")
                hits = 0
                for q, t in zip(queries, truth, strict=True):
                    got = conn.execute(
                        f"SELECT id FROM {table} ORDER BY embedding <=> %s::{kind} LIMIT 10",
                        ("[" + ",".join(f"{x:.7g}" for x in q) + "]",),
                    ).fetchall()
                    hits += len({r[0] for r in got} & set(t.tolist()))
                recalls[ef] = hits / (10 * len(queries))
            conn.execute("RESET hnsw.ef_search")
            # exact search on the stored type: how much does storage precision alone cost?
            conn.execute("SET enable_indexscan = off")
            hits = 0
            for q, t in zip(queries[:50], truth[:50], strict=True):
                got = conn.execute(
                    f"SELECT id FROM {table} ORDER BY embedding <=> %s::{kind} LIMIT 10",
                    ("[" + ",".join(f"{x:.7g}" for x in q) + "]",),
                ).fetchall()
                hits += len({r[0] for r in got} & set(t.tolist()))
            conn.execute("RESET enable_indexscan")
            exact_recall = hits / (10 * 50)
            rows.append((kind, heap, size, build_s, recalls, exact_recall))
            print(f"{kind}: built in {build_s:.1f}s", flush=True)
            conn.execute(f"DROP TABLE {table}")

    base = rows[0]
    print(
        "\n| storage | table size | index size | build time | recall@10 ef=40 | ef=100 | ef=200 | exact scan recall@10 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for kind, heap, size, build_s, recalls, exact_recall in rows:
        print(
            f"| {kind} | {heap / 2**20:.1f} MiB ({heap / base[1]:.2f}x) | {size / 2**20:.1f} MiB ({size / base[2]:.2f}x) "
            f"| {build_s:.1f} s ({build_s / base[3]:.2f}x) | {recalls[40]:.4f} | {recalls[100]:.4f} "
            f"| {recalls[200]:.4f} | {exact_recall:.4f} |"
        )


if __name__ == "__main__":
    main()
