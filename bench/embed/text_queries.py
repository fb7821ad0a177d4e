"""Text -> image searches: what a text query's forward pass costs, and what the embedder's text
cache saves when a query comes again (a shop's search box sees the same queries over and over).

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/embed/text_queries.py --rows 20000 --queries 30 --rounds 3

The model is the google/siglip-base-patch16-224 architecture with random weights (bench/embed/embedder.py's
checkpoint; speed doesn't depend on the weights, and no hub is needed), saved once under
``IMGSEARCH_HOME`` (the catalog names its model by that directory). The catalog is ``--rows``
clustered 768-d vectors in the embedded server's database ``bench_text`` (loaded once, kept).

Each round runs ``--queries`` new query strings; for each:

* text, first time: ``catalog.search(text=...)``, a cache miss: one text forward pass;
* vector: ``catalog.search(vector=...)`` with that text's embedding: the baseline, the same search
  without model work;
* text, again: the same text search once more, answered from the cache.

The other two follow the first in turn, one query one first, the next the other: the call
right after a forward pass finds the CPU's caches cold.

Times are client times of the whole call; the ratios are p50 against the baseline of the same run.

The figure it produces: docs/benchmarks.md, "Text queries".
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _data import clustered, database_url
from _models import base_checkpoint

from imgsearch import Catalog
from imgsearch.settings import Settings

DB = "bench_text"
KINDS = ("text, first time", "vector", "text, again")
FILTERS: dict[str, Any] = {"tenant": "acme", "category": "cat-07", "k": 10}


def timed(catalog: Catalog, query: dict[str, Any], into: list[float]) -> list[int]:
    """The image ids a search finds; its milliseconds go to ``into``."""
    start = time.perf_counter()
    hits = catalog.search(**query, **FILTERS)
    into.append((time.perf_counter() - start) * 1000)
    return [hit.image_id for hit in hits]


def load(catalog: Catalog, rows: int) -> None:
    with catalog.engine.connect() as conn:
        stored = conn.execute(text("SELECT count(*) FROM imgsearch.embeddings")).scalar_one()
    if stored == rows:
        print(f"reusing the stored catalog of {rows} rows", flush=True)
        return
    if stored:
        sys.exit(f"database {DB} holds {stored} rows, not {rows}: drop it or pass --rows {stored}")
    vectors = clustered(rows, catalog.dim, seed=5)
    catalog.add_many(
        {
            "embedding": v,
            "tenant": "acme",
            "product_id": f"sku-{i}",
            "category": f"cat-{i % 50:02d}",
            "price": i % 200,
        }
        for i, v in enumerate(vectors)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    settings = Settings()
    checkpoint = base_checkpoint(settings.home)
    url = database_url(settings.home, DB)
    with Catalog.open(url, model=str(checkpoint), settings=settings) as catalog:
        load(catalog, args.rows)
        catalog.search(text="warm up the model", tenant="acme", k=10)
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        same = 0
        for round_ in range(args.rounds):
            for i in range(args.queries):
                query = f"round {round_} query {i}: a red leather handbag with a gold clasp"
                # the call right after a forward pass finds the CPU's caches cold: the vector
                # search and the repeated text search take that place in turn (the vector search
                # reads the embedding from the cache, outside its time)
                order = KINDS if i % 2 else (KINDS[0], KINDS[2], KINDS[1])
                found = {}
                for kind in order:
                    given = (
                        {"vector": catalog.embedder.embed_text(query)}
                        if kind == "vector"
                        else {"text": query}
                    )
                    found[kind] = timed(catalog, given, times[kind])
                same += found["text, first time"] == found["text, again"] == found["vector"]
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        info = catalog.embedder.text_cache_info()

    total = args.rounds * args.queries
    base = statistics.median(times["vector"])
    print(f"\n{args.rows} rows, {total} queries, torch threads {torch.get_num_threads()}")
    print(f"text searches with the vector search's hits: {same} of {total}; cache {info}\n")
    print("| search | p50 ms | p95 ms | p50 / vector search |")
    print("|---|---|---|---|")
    for kind in KINDS:
        values = times[kind]
        p95 = float(np.percentile(values, 95))
        print(
            f"| {kind} | {statistics.median(values):.2f} | {p95:.2f} | {statistics.median(values) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
