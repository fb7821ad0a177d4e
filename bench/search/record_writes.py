"""What writing searches' records costs the server: the recorder's statement for a batch of 1, 10,
100 and 500 searches (10 hits each), against the statement it replaced, in one run.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/record_writes.py --rows 100000 --data calibrated
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/record_writes.py --events 10000 30000 100000 300000

On bench/search/search.py's catalog (``--rows`` products, one shop; loaded first if missing).
Each batch is written as ``imgsearch.learning.queries.write`` writes it (a connection of the
pool, autocommit, ``synchronous_commit`` off, one statement), its hits products drawn at random:

* **join** (the baseline, the statement before 2026-11-29): the batch's hits joined with
  ``products`` on the shop's key and product id, planned for the 1,000 hits PostgreSQL assumes a
  JSON batch holds (100 searches of 10), whatever the batch holds;
* **lookups** (``queries.INSERT``): each search's hits looked up one by one, by the same key.

Both statements in turns, 3 rounds of 15 batches per size, p50 of the write from checkout to
commit; then each statement's rows are checked to be the same (the product keys, in order).

``--events N [N ...]``: what checking a batch of feedback events costs as a day of the log grows
to each N searches (``imgsearch._checked_events``, which ``record_events`` runs first), in a
database of its own (``bench_record_writes_events``, dropped after): batches of 1, 20 and 1,000
clicks on searches of that day, as the shop, against the definition before migration 0053 (the
events joined with the log), made for the run as ``pg_temp._checked_events``; each call planned
afresh (``DISCARD PLANS``: as a session's first calls are, and every call of an app that connects
per request), the day's partition without statistics (as a new day's partition is until
autovacuum analyzes it: PostgreSQL 18's ``pg_clear_*_stats``); in turns, 15 rounds, p50.
``--kept``: plans kept from call to call (a long session's), the day's statistics gathered.

``--throughput SECONDS``: what the record costs searches when they use the whole machine. Two
processes (one a core) search as fast as they can, ``catalog.search(vector=q, tenant="acme",
k=10)``, for SECONDS: **no log** (``record_queries`` off), **log** (each search recorded, the
statement above), **log, the join** (the statement before); 3 rounds in turns, searches a second
summed over the processes, median of the rounds, each against "no log".

The figure it produces: docs/benchmarks.md, "Feedback load".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Engine, TextClause, create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import database_url, stored_catalog

from imgsearch import Catalog
from imgsearch.db import definitions
from imgsearch.learning import queries
from imgsearch.settings import Settings

SIZES = (1, 10, 100, 500)
ROUNDS, BATCHES, HITS = 3, 15, 10
JOIN = text(
    """
    INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, client_id, user_query, query_norm,
        query_attributes, result_offset, product_ids, image_ids, product_pks)
    WITH r AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(query_id uuid, tenant text, client_id text,
            user_query text, query_norm text, attributes jsonb, result_offset int, product_ids text[],
            image_ids bigint[], tenants text[])
    ), hits AS MATERIALIZED (
        SELECT r.query_id, r.tenant AS scope, h.tenant, h.product_id, h.n
        FROM r, unnest(r.tenants, r.product_ids) WITH ORDINALITY AS h(tenant, product_id, n)
    ), matched AS MATERIALIZED (
        SELECT hits.query_id, hits.n, p.id
        FROM hits JOIN imgsearch.products p ON p.tenant = hits.tenant AND p.product_id = hits.product_id
        WHERE hits.scope = '' OR p.tenant = hits.scope
    ), placed AS (
        SELECT hits.query_id, array_agg(matched.id ORDER BY hits.n) AS product_pks
        FROM hits LEFT JOIN matched ON matched.query_id = hits.query_id AND matched.n = hits.n
        GROUP BY hits.query_id
    )
    SELECT r.query_id, uuid_extract_timestamp(r.query_id), r.tenant, r.client_id, r.user_query, r.query_norm,
        r.attributes, r.result_offset, r.product_ids, r.image_ids, coalesce(placed.product_pks, '{}')
    FROM r LEFT JOIN placed ON placed.query_id = r.query_id
    WHERE set_config('synchronous_commit', 'off', true) = 'off'
    """
)
STATEMENTS = {"join": JOIN, "lookups": queries.INSERT}
MODEL = "google/siglip-base-patch16-224"
CONDITIONS = ("no log", "log", "log, the join")
SEARCHERS = 2


def batch(products: list[tuple[str, str]], size: int, rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for _ in range(size):
        hits = rng.sample(products, HITS)
        rows.append(
            {"query_id": str(queries.new_query_id()), "tenant": hits[0][0], "client_id": None, "user_query": None,
             "query_norm": None, "attributes": {"bench": "record_writes"}, "result_offset": 0,
             "product_ids": [p for _, p in hits], "image_ids": list(range(1, HITS + 1)), "tenants": [t for t, _ in hits]}
        )  # fmt: skip
    return rows


def write(engine: Engine, statement: TextClause, rows: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(statement, {"rows": json.dumps(rows)})
    return time.perf_counter() - started


def searcher(url: str, condition: str, seconds: float, vectors: np.ndarray, ready: Any, go: Any, done: Any) -> None:
    """Search for ``seconds`` once ``go`` is set; add the searches made to ``done``."""
    if condition == "log, the join":
        queries.INSERT = JOIN  # the recorder's statement before 2026-11-29
    settings = Settings(model=MODEL, record_queries=condition != "no log")
    with Catalog.open(url, settings=settings) as catalog:
        for q in vectors[:20]:  # warm: the pools' connections, the statements' caches
            catalog.search(vector=q, tenant="acme", k=10)
        ready.release()
        go.wait()
        count, ends = 0, time.perf_counter() + seconds
        while time.perf_counter() < ends:
            catalog.search(vector=vectors[count % len(vectors)], tenant="acme", k=10)
            count += 1
        with done.get_lock():
            done.value += count


def throughput(url: str, data: np.ndarray, seconds: float) -> None:
    rng = np.random.default_rng(5)
    vectors = data[rng.integers(0, len(data), 400)] + rng.standard_normal((400, data.shape[1])) * 0.02
    ctx = mp.get_context("spawn")
    rates: dict[str, list[float]] = {name: [] for name in CONDITIONS}
    for round_ in range(3):
        for condition in CONDITIONS[round_:] + CONDITIONS[:round_]:
            ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Value("q", 0)
            processes = [
                ctx.Process(target=searcher, args=(url, condition, seconds, vectors[i::SEARCHERS], ready, go, done))
                for i in range(SEARCHERS)
            ]
            for process in processes:
                process.start()
            for _ in processes:
                ready.acquire()
            go.set()
            for process in processes:
                process.join()
            rates[condition].append(done.value / seconds)
            print(f"  round {round_ + 1}, {condition}: {done.value / seconds:.0f} searches/s", flush=True)
    base = statistics.median(rates["no log"])
    print(f"\n| {SEARCHERS} processes searching, {seconds:.0f} s | searches/s (median of 3) | / no log |")
    print("|---|---:|---:|")
    for condition in CONDITIONS:
        rate = statistics.median(rates[condition])
        print(f"| {condition} | {rate:.0f} | **{rate / base:.2f}x** |")


EVENT_SIZES = (1, 20, 1000)
EVENTS_DB = "bench_record_writes_events"
FILLER = text(
    # rows as a vector search of the shop records them (10 hits, its filters), spread over the day
    # so far as a shop's searches come (the ids of one statement would share milliseconds)
    "INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, query_attributes, result_offset, "
    "product_ids, image_ids, product_pks) SELECT u, uuid_extract_timestamp(u), 'acme', "
    "'{\"k\": 10, \"kind\": \"vector\", \"mode\": \"semantic\", \"boost\": false, "
    "\"filters\": {\"category\": \"cat-014\"}}', 0, "
    "ARRAY(SELECT 'sku-' || (g * 10 + h) FROM generate_series(1, 10) AS h), "
    "ARRAY(SELECT (g * 10 + h)::bigint FROM generate_series(1, 10) AS h), "
    "ARRAY(SELECT (g * 10 + h)::bigint FROM generate_series(1, 10) AS h) "
    "FROM (SELECT g, uuidv7(-(g * (now() - date_trunc('day', now())) / (:n + 1))) AS u "
    "FROM generate_series(:first, :first + :n - 1) AS g) AS s"
)
# statistics none, as a day's partition has until autovacuum analyzes it (PostgreSQL 18)
CLEAR = (
    "SELECT pg_clear_relation_stats('imgsearch_log', :day), pg_clear_attribute_stats('imgsearch_log', :day, a.attname, false) "
    "FROM pg_attribute a WHERE a.attrelid = ('imgsearch_log.' || :day)::regclass AND a.attnum > 0 AND NOT a.attisdropped"
)


def _migration_0053() -> Any:
    import importlib.util

    path = Path(__file__).parents[2] / "migrations/versions/0053_events_find_searches_by_key.py"
    spec = importlib.util.spec_from_file_location("m0053", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(conn: Any, function: str, batch: str, kept: bool) -> float:
    if not kept:
        conn.execute(text("DISCARD PLANS"))  # planned afresh, as a session's first calls are
    started = time.perf_counter()
    refused = conn.execute(
        text(f"SELECT count(*) FILTER (WHERE c.problem IS NOT NULL) FROM {function}(CAST(:e AS jsonb)) c"), {"e": batch}
    ).scalar_one()
    assert refused == 0, f"{function}: {refused} events refused"
    return time.perf_counter() - started


def events(home: Path, logs: list[int], kept: bool) -> None:
    """The events' check, before 0053 and now, on a log of each size in ``logs`` (a database of
    its own, grown from one size to the next); ``kept``: plans kept, statistics gathered."""
    before = _migration_0053().PREVIOUS_CHECKED.replace("imgsearch._checked_events(", "pg_temp._checked_events(", 1)
    url = database_url(home, EVENTS_DB)
    with Catalog.open(url, settings=Settings(model=MODEL)):
        pass  # migrated
    engine = create_engine(url, pool_size=1)
    rng = random.Random(3)
    print("\n| searches in the day's partition | events a batch | before 0053 p50 ms | now p50 ms | now / before |")
    print("|---:|---:|---:|---:|---:|")
    try:
        with engine.connect() as conn:
            definitions.run(conn, before)
            conn.execute(text("SELECT set_config('imgsearch.tenant', 'acme', false)"))  # the shop's scope
            functions = {"before": "pg_temp._checked_events", "now": "imgsearch._checked_events"}
            stored = 0
            for size in logs:
                conn.execute(FILLER, {"n": size - stored, "first": stored + 1})
                stored = size
                day = conn.execute(
                    text("SELECT c.relname FROM pg_class c WHERE c.oid = (SELECT tableoid FROM imgsearch.search_queries LIMIT 1)")
                ).scalar_one()
                conn.execute(text(f"ANALYZE imgsearch_log.{day}" if kept else CLEAR), {"day": day})
                conn.commit()
                named = [(str(q), str(first)) for q, first in conn.execute(text(
                    "SELECT query_id, product_ids[1] FROM imgsearch.search_queries ORDER BY random() LIMIT 5000"
                ))]  # fmt: skip
                for events_ in EVENT_SIZES:
                    times: dict[str, list[float]] = {name: [] for name in functions}
                    for round_ in range(15):
                        batch = json.dumps(
                            [{"query_id": q, "action": "click", "object_id": first, "position": 1}
                             for q, first in rng.choices(named, k=events_)]
                        )  # fmt: skip
                        for name in functions if round_ % 2 == 0 else reversed(functions):
                            times[name].append(_check(conn, functions[name], batch, kept))
                    old, new = (statistics.median(times[name]) * 1000 for name in functions)
                    print(f"| {size:,} | {events_:,} | {old:.2f} | {new:.2f} | **{new / old:.2f}x** |", flush=True)
    finally:
        engine.dispose()
        url_ = make_url(url)
        with psycopg.connect(host=str(url_.query["host"]), user="postgres", dbname="postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {EVENTS_DB} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--data", choices=("clustered", "calibrated"), default="clustered")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    parser.add_argument("--events", type=int, nargs="+", metavar="N", help="only the events' check, on a day of N searches (each N)")
    parser.add_argument("--kept", action="store_true", help="with --events: plans kept, the day's statistics gathered")
    parser.add_argument("--throughput", type=float, metavar="SECONDS", help="only the searches' throughput, each condition this long")
    args = parser.parse_args()
    if args.events:
        events(Settings().home, sorted(args.events), args.kept)
        return
    url, data, _, _ = stored_catalog(args.rows, args.data, args.database)
    if args.throughput:
        throughput(url, data, args.throughput)
        return
    engine = create_engine(url, pool_size=2)
    with engine.connect() as conn:
        products = [(str(t), str(p)) for t, p in conn.execute(text("SELECT tenant, product_id FROM imgsearch.products"))]
    rng = random.Random(7)
    print(f"{len(products)} products; batches of {HITS} hits a search")
    print("\n| searches a batch | join p50 ms | lookups p50 ms | lookups / join | per search: join / lookups |")
    print("|---:|---:|---:|---:|---|")
    for size in SIZES:
        times: dict[str, list[float]] = {name: [] for name in STATEMENTS}
        for round_ in range(ROUNDS):
            order = list(STATEMENTS) if round_ % 2 == 0 else list(reversed(STATEMENTS))
            for _ in range(BATCHES):
                for name in order:
                    times[name].append(write(engine, STATEMENTS[name], batch(products, size, rng)))
        join, lookups = (statistics.median(times[name]) * 1000 for name in STATEMENTS)
        print(f"| {size} | {join:.2f} | {lookups:.2f} | **{lookups / join:.2f}x** | {join / size:.3f} / {lookups / size:.3f} ms |")
    same = batch(products, 100, rng) + [
        {**row, "tenant": "", "product_ids": [*row["product_ids"], "no-such-product"], "tenants": [*row["tenants"], "acme"],
         "image_ids": [*row["image_ids"], 0]}
        for row in batch(products, 10, rng)
    ]  # fmt: skip
    stored = {}
    for name, statement in STATEMENTS.items():
        rows = [{**row, "query_id": str(queries.new_query_id())} for row in same]
        write(engine, statement, rows)
        with engine.connect() as conn:
            found: dict[str, list[int | None]] = dict(
                conn.execute(
                    text("SELECT query_id::text, product_pks FROM imgsearch.search_queries WHERE query_id = ANY(CAST(:ids AS uuid[]))"),
                    {"ids": [r["query_id"] for r in rows]},
                ).all()
            )
        stored[name] = [found[r["query_id"]] for r in rows]
    assert stored["join"] == stored["lookups"], "the statements stored different product keys"
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM imgsearch.search_queries WHERE query_attributes->>'bench' = 'record_writes'"))
    print(f"\nboth statements stored the same product keys for {len(same)} searches (10 of them across shops, a product gone)")
    engine.dispose()


if __name__ == "__main__":
    main()
