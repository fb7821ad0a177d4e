"""What region rows cost: storage and HNSW size per image, the graph's build, and a search's p50
with regions against the same catalog's whole images only, at 100k images.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/regions_cost.py --images 100000 --grid 2

The catalog: ``--images`` images of calibrated 768-d vectors (``bench/_catalog.py``), one
product each, in 100 categories, loaded as the search benchmarks' catalog is. First measured as
it is (whole images only: the baseline), then given ``grid_size(--grid)`` region rows an image
(by COPY, the HNSW graph rebuilt after), whose vectors are partial views: half near their image
(its vector plus noise), half between it and another image's (a neighbour in the scene).
Each search kind runs ``--queries`` times per side, alternating; p50 of the library's search
(``catalog.search``, vector queries, k = 10) from the call to its answer.

The figure it produces: docs/benchmarks.md, "Regions: objects in scenes".
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
from sqlalchemy import make_url, text

sys.path.insert(0, str(Path(__file__).parents[1]))
sys.path.insert(0, str(Path(__file__).parents[2]))

from _catalog import load
from _data import fresh_database

from imgsearch import Catalog
from imgsearch.db import vector_index
from imgsearch.embed.regions import grid_boxes, grid_size
from imgsearch.ingest import bulk
from imgsearch.settings import Settings

SIDE = 512  # the images' size in pixels, for the boxes


def sizes(catalog: Catalog) -> dict[str, int]:
    name = vector_index.index_name(catalog.active_model.id)
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_table_size('imgsearch.embeddings') AS heap, "
                f"pg_relation_size('imgsearch.{name}') AS graph, "
                "pg_indexes_size('imgsearch.embeddings') AS indexes, "
                "(SELECT count(*) FROM imgsearch.embeddings) AS rows"
            )
        ).one()
    return {"heap": int(row.heap), "graph": int(row.graph), "indexes": int(row.indexes), "rows": int(row.rows)}


def p50(catalog: Catalog, queries: np.ndarray, **search: Any) -> float:
    took = []
    for q in queries:
        start = time.perf_counter()
        catalog.search(vector=q, k=10, boost=False, **search)
        took.append(time.perf_counter() - start)
    return statistics.median(took) * 1000


def add_regions(catalog: Catalog, data: np.ndarray, grid: int, seed: int) -> float:
    """COPY every image's region rows (the graph dropped first), then build the graph; its seconds."""
    rng = np.random.default_rng(seed)
    model = catalog.active_model
    boxes = grid_boxes(SIDE, SIDE, grid)
    url = make_url(catalog.engine.url)
    with psycopg.connect(host=url.query["host"], user="postgres", dbname=url.database) as conn:
        register_vector(conn)
        conn.execute(f"DROP INDEX IF EXISTS imgsearch.{vector_index.index_name(model.id)}")
        with conn.cursor().copy(
            "COPY imgsearch.embeddings (model_id, image_id, product_pk, tenant, region, box, embedding) "
            "FROM STDIN WITH (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["smallint", "bigint", "bigint", "text", "smallint", "integer[]", "halfvec"])
            for i, vec in enumerate(data):
                others = data[rng.integers(0, len(data), len(boxes))]
                noise = rng.standard_normal((len(boxes), data.shape[1])).astype(np.float32) / np.sqrt(data.shape[1])
                near = np.arange(len(boxes)) % 2 == 0
                parts = np.where(near[:, None], vec + 0.5 * noise, 0.6 * vec + 0.6 * others)
                parts /= np.linalg.norm(parts, axis=1, keepdims=True)
                for r, (box, part) in enumerate(zip(boxes, parts, strict=True), start=1):
                    copy.write_row((model.id, i + 1, i + 1, "acme", r, list(box), HalfVector(part)))
                if (i + 1) % 20000 == 0:
                    print(f"  region rows of {i + 1} images copied", flush=True)
        conn.commit()
    memory = bulk.auto_maintenance_work_mem(len(data) * (len(boxes) + 1), catalog.dim)
    with catalog.engine.begin() as conn:
        conn.execute(text("SELECT set_config('maintenance_work_mem', :m, true)"), {"m": memory})
        conn.execute(
            text("SELECT set_config('max_parallel_maintenance_workers', :w, true)"),
            {"w": str(vector_index.auto_parallel_workers())},
        )
        start = time.perf_counter()
        vector_index.create_index(conn, model.id, model.dim)
        built = time.perf_counter() - start
    with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE imgsearch.embeddings"))
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--grid", type=int, default=2)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    settings = Settings(record_queries=False)
    url = fresh_database(settings.home, "bench_regions_cost")
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        data, labels = load(catalog, args.images, seed=11, data_kind="calibrated")
        rng = np.random.default_rng(5)
        picked = rng.choice(len(data), args.queries, replace=False)
        queries = data[picked] + rng.standard_normal((args.queries, data.shape[1])).astype(np.float32) * 0.02
        category = f"cat-{int(labels[picked[0]]) // 2:03d}"
        kinds = {"unfiltered": {}, "a category (1%)": {"category": category}}
        for search in kinds.values():
            p50(catalog, queries[:20], **search)  # warm
        before = sizes(catalog)
        whole = {kind: p50(catalog, queries, **search) for kind, search in kinds.items()}
        built = add_regions(catalog, data, args.grid, seed=7)
        catalog.regions.set(grid=args.grid)
        after = sizes(catalog)
        for search in kinds.values():
            p50(catalog, queries[:20], **search)
        regions = {kind: p50(catalog, queries, **search) for kind, search in kinds.items()}
        only_whole = {kind: p50(catalog, queries, regions=False, **search) for kind, search in kinds.items()}
        again = {kind: p50(catalog, queries, **search) for kind, search in kinds.items()}
        n = args.images
        print(f"\ngrid {args.grid}: {grid_size(args.grid)} regions an image; graph built in {built:.0f} s")
        print("| per image | whole images only | with regions | ratio |")
        print("|---|---|---|---|")
        for key in ("heap", "graph", "indexes"):
            print(f"| {key} | {before[key] / n / 1024:.1f} kB | {after[key] / n / 1024:.1f} kB | {after[key] / before[key]:.2f}x |")
        print(f"| rows | {before['rows'] / n:.0f} | {after['rows'] / n:.0f} | {after['rows'] / before['rows']:.2f}x |")
        print("\n| search | whole images only (ms) | with regions (ms; a second pass) | ratio | regions=False | ratio |")
        print("|---|---|---|---|---|---|")
        for kind in kinds:
            print(
                f"| {kind} | {whole[kind]:.2f} | {regions[kind]:.2f} ({again[kind]:.2f}) | "
                f"{regions[kind] / whole[kind]:.2f}x | {only_whole[kind]:.2f} | {only_whole[kind] / whole[kind]:.2f}x |"
            )


if __name__ == "__main__":
    main()
