"""A catalog's status (``/v1/status``, ``/metrics``, ``imgsearch status`` and its ``--wait``):
images per state, the oldest waiting and the latest failures, kept against counted, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/work/status.py --rows 100000 1000000

For each size, a database of its own (``bench_status_<rows>``, made once): ``--rows`` images of
two shops (acme 90%, globex 10%), 0.1% failed, 0.5% waiting, the rest ready, and 900 count rows not
yet folded (a state move each, as workers' batches leave them: about a read's worst case, as
the next folds them). Two ways, in turns, 3 rounds of 10, p50 from checkout to commit:

* **counted** (the baseline, before migration 0054; still a Citus coordinator's counts): the
  images grouped by state, the latest failures sorted from every image, the oldest waiting one
  through the work queue's index;
* **kept** (``imgsearch.work.progress.status``): the counts the triggers keep
  (``imgsearch.db.image_counts``), the failures and the oldest waiting image through their
  partial indexes.

For a shop (acme) and across shops (an admin's); both answers are checked to be the same.

``--writes BATCHES``: what the triggers cost a worker, in ``bench_status_writes``: a batch of 32
pending images claimed (one transaction) and stored ready with their 768-d vectors (another), as
``imgsearch.work.queue.process_batch`` does without the model; with the count triggers and with
them disabled, in turns, p50 per batch; then the insert trigger's own work on 100,000 rows (what a
bulk import's one statement adds), timed as its statement.

The figure it produces: docs/benchmarks.md, "Upload to ready through Celery workers" (status).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text

sys.path.insert(0, str(Path(__file__).parents[1]))
import _data

from imgsearch import Catalog
from imgsearch.access import tenancy
from imgsearch.settings import Settings
from imgsearch.work import progress, queue

# the status's statements before migration 0054
COUNTED = """
SELECT state, count(*) FROM imgsearch.images WHERE CAST(:t AS text) IS NULL OR tenant = :t GROUP BY state
"""
OLDEST = """
SELECT extract(epoch FROM now() - min(created_at)) FROM imgsearch.images
WHERE state IN ('pending', 'embedding') AND (CAST(:t AS text) IS NULL OR tenant = :t)
"""
LATEST = """
SELECT i.id, i.tenant, i.error, p.product_id FROM imgsearch.images i
JOIN imgsearch.products p ON p.tenant = i.tenant AND p.id = i.product_pk
WHERE i.state = 'failed' AND (CAST(:t AS text) IS NULL OR i.tenant = :t)
ORDER BY i.updated_at DESC, i.id DESC LIMIT 20
"""
LOAD = """
INSERT INTO imgsearch.products (tenant, product_id)
SELECT CASE WHEN i % 10 = 0 THEN 'globex' ELSE 'acme' END, 'p' || i FROM generate_series(1, :rows) i;
INSERT INTO imgsearch.images (product_pk, tenant, state, error)
SELECT id, tenant,
       CASE WHEN id % 1000 = 1 THEN 'failed' WHEN id % 200 = 2 THEN 'pending' ELSE 'ready' END,
       CASE WHEN id % 1000 = 1 THEN 'could not decode image ' || id END
FROM imgsearch.products;
"""
UNFOLDED = 900  # below the 1,016 rows (2 per cell of 2 shops' 4 states, plus COMPACT_AFTER) that a read folds


def prepared(rows: int) -> Engine:
    settings = Settings()
    url = _data.database_url(settings.home, f"bench_status_{rows}")
    with Catalog.open(url, settings=settings) as catalog:
        with catalog.engine.connect() as conn:
            loaded = conn.execute(text("SELECT count(*) FROM imgsearch.images")).scalar_one()
        if loaded != rows:
            print(f"loading {rows:,} images", file=sys.stderr)
            with catalog.engine.begin() as conn:
                conn.execute(text("TRUNCATE imgsearch.products CASCADE"))
                for statement in LOAD.split(";")[:-1]:
                    conn.execute(text(statement), {"rows": rows})
            with catalog.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE imgsearch.images"))
                conn.execute(text("VACUUM ANALYZE imgsearch.products"))
    engine = create_engine(url, pool_size=1)
    with engine.connect() as conn:  # count rows left to fold: a state move each, as workers leave them
        conn.execute(text("SELECT imgsearch.compact_image_counts(NULL)"))
        conn.commit()
        for _ in range(UNFOLDED // 4):
            for state in ("embedding", "pending"):
                conn.execute(
                    text("UPDATE imgsearch.images SET state = :s WHERE id = (SELECT min(id) "
                         "FROM imgsearch.images WHERE state IN ('pending', 'embedding'))"),
                    {"s": state},
                )  # fmt: skip
                conn.commit()
    return engine


def counted(engine: Engine, tenant: str | None) -> tuple[Any, ...]:
    with engine.begin() as conn:
        if tenant is not None:
            tenancy.scope(conn, tenant)
        counts = {"pending": 0, "embedding": 0, "ready": 0, "failed": 0}
        counts.update({s: int(n) for s, n in conn.execute(text(COUNTED), {"t": tenant})})
        conn.execute(text(OLDEST), {"t": tenant}).scalar()
        latest = [tuple(r) for r in conn.execute(text(LATEST), {"t": tenant})]
    return counts, latest


def kept(engine: Engine, tenant: str | None) -> tuple[Any, ...]:
    current = progress.status(engine, 20, tenant=tenant)
    return current.counts, [(*e, current.products[e[0]]) for e in current.latest_errors]


WAYS = {"counted": counted, "kept": kept}
TRIGGERS = ("images_counts_added", "images_counts_moved", "images_counts_removed")


def writes(batches: int) -> None:
    import numpy as np

    settings = Settings()
    url = _data.database_url(settings.home, "bench_status_writes", fresh=True)
    rng = np.random.default_rng(5)
    with Catalog.open(url, settings=settings) as catalog:
        catalog.add(embedding=rng.standard_normal(768).astype(np.float32), tenant="acme", product_id="first")
        model = catalog.active_model
        engine = catalog.engine
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO imgsearch.products (tenant, product_id) SELECT 'acme', 'p' || i "
                    "FROM generate_series(1, :n) i"
                ),
                {"n": 2 * batches * 32 + 32},
            )
            conn.execute(
                text(
                    "INSERT INTO imgsearch.images (product_pk, tenant, uri) SELECT id, tenant, "
                    "'https://example.com/' || id || '.jpg' FROM imgsearch.products WHERE product_id <> 'first'"
                )
            )
        times: dict[str, list[float]] = {"triggers": [], "no triggers": []}
        for i in range(2 * batches):
            way = ("triggers", "no triggers")[(i + i // 2) % 2]  # in turns, each first as often
            switch = "ENABLE" if way == "triggers" else "DISABLE"
            with engine.begin() as conn:
                for trigger in TRIGGERS:
                    conn.execute(text(f"ALTER TABLE imgsearch.images {switch} TRIGGER {trigger}"))
            vectors = [rng.standard_normal(768).astype(np.float32) for _ in range(32)]
            started = time.perf_counter()
            with engine.begin() as conn:
                tenancy.run_as_worker(conn)
                claims = queue.claim_batch(conn, 32, 300)
            with engine.begin() as conn:
                tenancy.run_as_worker(conn)
                stored = queue.store(conn, model, claims, vectors)
            times[way].append(time.perf_counter() - started)
            assert len(claims) == 32 and stored.ready == 32, stored
        with engine.begin() as conn:
            for trigger in TRIGGERS:
                conn.execute(text(f"ALTER TABLE imgsearch.images ENABLE TRIGGER {trigger}"))
            conn.execute(text("CREATE TEMP TABLE added AS SELECT * FROM imgsearch.images LIMIT 0"))
            conn.execute(
                text(
                    "INSERT INTO added (id, product_pk, tenant, state) "
                    "SELECT i, i, CASE WHEN i % 10 = 0 THEN 'globex' ELSE 'acme' END, 'ready' FROM generate_series(1, 100000) i"
                )
            )
            started = time.perf_counter()
            conn.execute(text("SELECT a.tenant, a.state, count(*) FROM added a GROUP BY 1, 2")).all()
            grouped = time.perf_counter() - started
    p50 = {way: statistics.median(t) * 1000 for way, t in times.items()}
    print("\n| a worker's batch of 32 (claim + store) | p50 ms |")
    print("|---|---:|")
    print(f"| count triggers disabled | {p50['no triggers']:.2f} |")
    print(f"| count triggers (migration 0054) | {p50['triggers']:.2f} ({p50['triggers'] / p50['no triggers']:.2f}x) |")
    print(f"\nthe insert trigger's grouping of 100,000 new images: {grouped * 1000:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--writes", type=int, metavar="BATCHES", help="a worker's batches, timed each way")
    args = parser.parse_args()
    if args.writes:
        writes(args.writes)
        return
    print("\n| images | caller | counted p50 ms | kept p50 ms | kept / counted |")
    print("|---|---|---:|---:|---:|")
    for rows in args.rows:
        engine = prepared(rows)
        for caller, shop in (("a shop", "acme"), ("across shops", None)):
            times: dict[str, list[float]] = {way: [] for way in WAYS}
            answers: dict[str, Any] = {}
            for round_ in range(3):
                for _ in range(10):
                    for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
                        started = time.perf_counter()
                        answers[way] = WAYS[way](engine, shop)
                        times[way].append(time.perf_counter() - started)
            assert answers["kept"] == answers["counted"], answers
            p50 = {way: statistics.median(t) * 1000 for way, t in times.items()}
            print(
                f"| {rows:,} | {caller} | {p50['counted']:.2f} | {p50['kept']:.2f} | "
                f"{p50['kept'] / p50['counted']:.2f}x |",
                flush=True,
            )
        engine.dispose()


if __name__ == "__main__":
    main()
