"""What the triggers that keep facet counts (migration 0039) cost the writes, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/ingest/facet_writes.py --rounds 3

A catalog of its own (``bench_facet_writes``, made for the run) with a base-size SigLIP's 768-d
rows. Each way of writing runs with the triggers on, then with them disabled (``ALTER TABLE ...
DISABLE TRIGGER``: the baseline, what the write costs without the counts), round after round, each
round into a tenant of its own, so that noise hits both alike. The model's HNSW index is dropped
first: its inserts (some ms a row) would hide what is measured, the rows, keys and triggers.

* **uploads, one at a time**: ``add_row`` of ``--uploads`` rows, one transaction each, as a
  worker's embedding lands (each appends its product's counts);
* **add_many**: ``--batch`` rows in one call;
* **import**: ``import_vectors`` of ``--imported`` rows (one transaction; the HNSW index kept);
* **product updates**: ``update_products`` moving ``--batch`` products to another category, brand
  and price (the counted values move: minus the old, plus the new).

The figure it produces: docs/benchmarks.md, "Hybrid search" (the write costs under its table).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _data import fresh_database
from _models import base_checkpoint

from imgsearch import Catalog
from imgsearch.db import citus
from imgsearch.settings import Settings


def rows(tenant: str, count: int, dim: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return [
        {
            "tenant": tenant,
            "product_id": f"p{i}",
            "embedding": vectors[i],
            "category": f"cat{i % 100}",
            "brand": f"brand{i % 200}",
            "price": round(float(rng.uniform(5, 500)), 2),
            "attributes": {"colour": f"c{i % 24}", "material": f"m{i % 12}"},
        }
        for i in range(count)
    ]


def switch(catalog: Catalog, on: bool) -> None:
    with catalog.engine.begin() as conn:
        for trigger, table in citus.FACET_TRIGGERS:
            conn.execute(text(f"ALTER TABLE imgsearch.{table} {'ENABLE' if on else 'DISABLE'} TRIGGER {trigger}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--imported", type=int, default=20_000)
    args = parser.parse_args()

    settings = Settings()
    url = fresh_database(settings.home, "bench_facet_writes")
    with Catalog.open(url, model=str(base_checkpoint(settings.home)), settings=settings) as catalog:
        dim = catalog.dim
        catalog.add_many(rows("warm", 100, dim, 0))  # the model registered
        with catalog.engine.begin() as conn:  # HNSW inserts would dwarf what is measured here
            conn.execute(text(f"DROP INDEX imgsearch.embeddings_hnsw_m{catalog.active_model.id}"))

        def uploads(tenant: str, seed: int) -> None:
            for row in rows(tenant, args.uploads, dim, seed):
                catalog.add_row(row)

        def add_many(tenant: str, seed: int) -> None:
            catalog.add_many(rows(tenant, args.batch, dim, seed), progress=False)

        def imported(tenant: str, seed: int) -> None:
            catalog.import_vectors(rows(tenant, args.imported, dim, seed), progress=False, rebuild_index=False)

        def updates(tenant: str, seed: int) -> None:
            catalog.add_many(rows(tenant, args.batch, dim, seed), progress=False)
            moved = [
                {"tenant": tenant, "product_id": f"p{i}", "category": f"moved{i % 50}", "brand": f"b{i % 7}",
                 "price": 1000 + i}
                for i in range(args.batch)
            ]  # fmt: skip
            start = time.perf_counter()
            catalog.update_products(moved, progress=False)
            times.setdefault(("product updates", state), []).append(time.perf_counter() - start)

        ways: dict[str, Callable[[str, int], None]] = {
            "uploads, one at a time": uploads,
            "add_many": add_many,
            "import": imported,
            "product updates": updates,
        }
        times: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for state in ("on", "off"):
                switch(catalog, state == "on")
                for name, fn in ways.items():
                    tenant = f"{name.split()[0].strip(',')}-{state}-{round_}"
                    start = time.perf_counter()
                    fn(tenant, round_)
                    if name != "product updates":  # timed inside: the update alone
                        times.setdefault((name, state), []).append(time.perf_counter() - start)
                    print(f"round {round_ + 1}/{args.rounds}, triggers {state}: {name} done", flush=True)
        switch(catalog, True)
        counted = {
            "uploads, one at a time": args.uploads,
            "add_many": args.batch,
            "import": args.imported,
            "product updates": args.batch,
        }
    print(f"\n{args.rounds} rounds; median seconds, rows/s and the ratio of with to without the triggers\n")
    print("| write | rows | without the triggers | with them | ratio |")
    print("|---|---|---|---|---|")
    for name in ways:
        off, on = statistics.median(times[(name, "off")]), statistics.median(times[(name, "on")])
        n = counted[name]
        print(f"| {name} | {n:,} | {off:.2f} s ({n / off:,.0f}/s) | {on:.2f} s ({n / on:,.0f}/s) | **{on / off:.2f}x** |")


if __name__ == "__main__":
    main()
