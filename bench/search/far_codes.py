"""Far filters through ``catalog.search``, with the binary codes (imgsearch.db.binary_codes) and
without, against the unfiltered query, in one run, on bench/search/search.py's catalog.

    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/far_codes.py --rows 100000 --data calibrated
    IMGSEARCH_HOME=/tmp/imgs-bench .venv/bin/python bench/search/far_codes.py --rows 1000000 --data calibrated --database bench_search_cal1m

First the model's codes are checked as ``imgsearch index refresh`` checks them (the recall found
decides whether searches use them; search.py's loader writes rows with COPY, which checks
nothing). Then, per filter of search.py's (far ones, and near ones to show they are left as they
were), each query in turn:

* baseline — the unfiltered HNSW query, ``ORDER BY embedding <=> q LIMIT 10`` with pgvector's
  defaults, on an SQLAlchemy engine of its own (checkout, BEGIN, the statement, COMMIT): the
  issue's "unfiltered query", as search.py times it
* imgsearch — ``catalog.search(vector=q, k=10, <filter>)``, codes on (the default)
* codes' scan — the codes part's first step alone, bare (the :data:`binary_codes.POOL` rows
  nearest by Hamming distance, counted): the floor of any search that compares every matching
  row's code
* imgsearch, no codes — the same on a catalog opened with ``binary_codes=False``: every matching
  row's full distance, as before migration 0043
* baseline, after — the baseline again, after the exact scans (which, at 1M rows, push the HNSW
  graph's pages out of the caches: shown in brackets, not used for the ratios)

After a warm-up (8 searches of each filter on each catalog, untimed), each filter is a block: each method's queries one after another (no search right after another of
the same vector, which would find its pages in the CPU caches), in the order above; each
filter's ratios are against its own block's first baseline p50. Recall@10 against an exact
search of the filter's rows (run before the timed blocks). The strategy column counts the plans
the searches took. Also prints the storage the codes add: the column (``pg_column_size``) and
the index that carries them against its size without them (measured by building that index
without the INCLUDE list beside it, then dropping it).

Before the timed blocks, the two numbers the codes' path is built on, measured on this run's
vectors (``--thresholds`` alone: only this part):

* :data:`binary_codes.POOL`, the rows re-ranked: recall@10 when only the 100, 200 or 400 rows
  nearest by Hamming distance are re-ranked, far filters of 1 to 10 categories and the 10% near one
  (a pool's rows are the first of the next larger pool's, so one ordering gives all three);
* :data:`binary_codes.MIN_ROWS`, where the codes start: the bare exact scan of a far filter of 1,
  2, 3, 5 and 10 categories against the codes' two steps bare (the scan, then the re-rank of
  :data:`binary_codes.POOL` rows), statement by statement in turns, p50 of 3 rounds;
* the settings' ``exact_max_fraction`` (0.15), the largest share of the catalog a search scans
  (exactly or by codes) before it turns to an iterative HNSW scan: far filters of 20 and 30
  categories through ``catalog.search`` as it is (iterative) and on a catalog opened with 0.35
  (codes), in turns, p50 and recall@10.

The figure it produces: docs/benchmarks.md, "Far filters read binary codes".
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).parents[1]))
from _catalog import query_cases, stored_catalog

from imgsearch import Catalog
from imgsearch.db import binary_codes, filter_indexes
from imgsearch.db.vector_index import halfvec_text
from imgsearch.settings import Settings

K = 10
WARM_UP = 8  # searches per filter and catalog before the clock starts
FILTERS = ("10% far", "3% far", "1% far", "1% far, shop", "10% near", "1% near")
BASELINE = "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 ORDER BY embedding::halfvec(768) <=> CAST(:q AS halfvec(768)) LIMIT 10"
SCAN_NAME = "codes' scan"
METHODS = ("baseline", "imgsearch", SCAN_NAME, "imgsearch, no codes", "baseline, after")
# the codes part's first step alone, bare: the least any search comparing each matching row's code
# does (the filters as imgsearch sends them, minus the shop's row-level security)
SCAN = (
    "SELECT count(*) FROM (SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND {where} "
    f"ORDER BY code <~> binary_quantize(CAST(:q AS halfvec(768))) LIMIT {binary_codes.POOL}) pool"
)


def exact(conn: psycopg.Connection[Any], q: np.ndarray, kwargs: dict[str, Any]) -> set[int]:
    where, params = ["true"], {"q": halfvec_text(q)}
    categories = kwargs.get("category")
    if categories is not None:
        where.append("category = ANY(%(cats)s)")
        params["cats"] = categories if isinstance(categories, list) else [categories]
    if "tenant" in kwargs:
        where.append("tenant = %(tenant)s")
        params["tenant"] = kwargs["tenant"]
    rows = conn.execute(
        f"SELECT image_id FROM imgsearch.embeddings WHERE {' AND '.join(where)} "
        f"ORDER BY embedding <=> %(q)s::halfvec LIMIT {K}",
        params,
    )
    return {int(r[0]) for r in rows}


def scan(kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """:data:`SCAN` for a filter: its statement and values."""
    where, params = ["category = ANY(:cats)"], {}
    categories = kwargs["category"]
    params["cats"] = categories if isinstance(categories, list) else [categories]
    if "tenant" in kwargs:
        where.append("tenant = :tenant")
        params["tenant"] = kwargs["tenant"]
    return SCAN.format(where=" AND ".join(where)), params


THRESHOLD_SIZES = (1, 2, 3, 5, 10)  # far categories, 1% of the catalog each
POOLS = (100, 200, binary_codes.POOL)
EXACT = (
    "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND category = ANY(%(cats)s) "
    f"ORDER BY embedding <=> %(q)s::halfvec LIMIT {K}"
)
BY_CODES = (
    "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND category = ANY(%(cats)s) "
    "ORDER BY code <~> binary_quantize(%(q)s::halfvec(768)), image_id LIMIT %(pool)s"
)
RERANKED = (
    f"WITH pool AS MATERIALIZED ({BY_CODES.replace('image_id FROM', 'image_id, product_pk, region FROM', 1)}) "
    "SELECT e.image_id FROM pool JOIN imgsearch.embeddings e USING (image_id, product_pk, region) "
    f"WHERE e.model_id = 1 ORDER BY e.embedding <=> %(q)s::halfvec LIMIT {K}"
)


def thresholds(conn: psycopg.Connection[Any], cases: list[Any]) -> None:
    """The module docstring's two numbers: recall by pool, and the exact scan against the codes by
    the filter's size."""
    named = [(f"{n} far", "far", n) for n in THRESHOLD_SIZES] + [("10 near", "near", 10)]

    def categories(filters: list[Any], side: str, n: int) -> list[str]:
        return list(dict(filters)[f"10% {side}"]["category"])[:n]

    print(f"\n| filter (categories) | rows | recall@{K}, pool {' / '.join(map(str, POOLS))} |", flush=True)
    print("|---|---|---|")
    for name, side, n in named:
        recalls: dict[int, list[float]] = {p: [] for p in POOLS}
        rows = 0
        for q, filters in cases:
            values = {"q": halfvec_text(q), "cats": categories(filters, side, n)}
            truth = {r[0] for r in conn.execute(EXACT, values)}
            order = [r[0] for r in conn.execute(BY_CODES, {**values, "pool": max(POOLS)})]
            for pool in POOLS:
                top = conn.execute(
                    "SELECT image_id FROM imgsearch.embeddings WHERE model_id = 1 AND image_id = ANY(%(ids)s) "
                    f"ORDER BY embedding <=> %(q)s::halfvec LIMIT {K}",
                    {"q": values["q"], "ids": order[:pool]},
                )
                recalls[pool].append(len({r[0] for r in top} & truth) / K)
            rows = conn.execute(
                "SELECT count(*) FROM imgsearch.embeddings WHERE model_id = 1 AND category = ANY(%(cats)s)",
                values,
            ).fetchone()[0]  # type: ignore[index]
        cells = " / ".join(f"{np.mean(recalls[p]):.3f}" for p in POOLS)
        print(f"| {name} | {rows} | {cells} |", flush=True)

    times: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    for _ in range(3):
        for n in THRESHOLD_SIZES:
            for how, statement in (("exact", EXACT), ("codes", RERANKED)):
                for q, filters in cases:
                    values = {
                        "q": halfvec_text(q),
                        "cats": categories(filters, "far", n),
                        "pool": binary_codes.POOL,
                    }
                    start = time.perf_counter()
                    conn.execute(statement, values).fetchall()
                    times[(n, how)].append(1000 * (time.perf_counter() - start))
    print(
        f"\n| far categories | exact scan p50 ms | codes (scan + re-rank of {binary_codes.POOL}) p50 ms | codes / exact |"
    )
    print("|---|---|---|---|")
    for n in THRESHOLD_SIZES:
        exact_ms, codes_ms = (statistics.median(times[(n, how)]) for how in ("exact", "codes"))
        print(f"| {n} | {exact_ms:.2f} | {codes_ms:.2f} | {codes_ms / exact_ms:.2f}x |", flush=True)


WIDE_SIZES = (20, 30)
WIDE_FRACTION = 0.35


def wider(conn: psycopg.Connection[Any], cases: list[Any], narrow: Catalog, wide: Catalog) -> None:
    """Far filters beyond ``exact_max_fraction``: the iterative scan they take against the codes."""
    print(
        "\n| far categories | rows | iterative scan p50 ms (recall, plans) "
        f"| codes, exact_max_fraction {WIDE_FRACTION} p50 ms (recall, plans) |"
    )
    print("|---|---|---|---|")
    for n in WIDE_SIZES:
        times: dict[str, list[float]] = collections.defaultdict(list)
        recalls: dict[str, list[float]] = collections.defaultdict(list)
        plans: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        rows = 0
        for q, filters in cases:
            far = int(dict(filters)["1% far"]["category"][4:])
            cats = [f"cat-{(far + i) % 100:03d}" for i in range(n)]
            truth = {r[0] for r in conn.execute(EXACT, {"q": halfvec_text(q), "cats": cats})}
            for how, catalog in (("iterative", narrow), ("codes", wide)):
                found: list[Any] = []
                catalog.on_search_plan = found.append
                start = time.perf_counter()
                hits = catalog.search(vector=q, k=K, category=cats)
                times[how].append(1000 * (time.perf_counter() - start))
                catalog.on_search_plan = None
                recalls[how].append(len({h.image_id for h in hits} & truth) / K)
                plans[how].update(p.strategy for p in found)
            rows = conn.execute(
                "SELECT count(*) FROM imgsearch.embeddings WHERE model_id = 1 AND category = ANY(%s)", (cats,)
            ).fetchone()[0]  # type: ignore[index]
        cells = [
            f"{statistics.median(times[how]):.2f} ({np.mean(recalls[how]):.3f}; "
            + ", ".join(f"{s} {c}" for s, c in plans[how].most_common())
            + ")"
            for how in ("iterative", "codes")
        ]
        print(f"| {n} | {rows} | {cells[0]} | {cells[1]} |", flush=True)


def prewarm(conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    for relation in (
        "imgsearch.embeddings_hnsw_m1",
        "imgsearch.embeddings",
        "imgsearch.embeddings_tenant_category_price_idx",
    ):
        conn.execute("SELECT pg_prewarm(%s::regclass)", (relation,))


def storage(conn: psycopg.Connection[Any]) -> str:
    code = conn.execute("SELECT avg(pg_column_size(code)) FROM imgsearch.embeddings").fetchone()[0]  # type: ignore[index]
    rows = conn.execute("SELECT count(*) FROM imgsearch.embeddings").fetchone()[0]  # type: ignore[index]
    carried = conn.execute(
        "SELECT pg_relation_size('imgsearch.embeddings_tenant_category_price_idx')"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "CREATE INDEX bench_keys_only ON imgsearch.embeddings (model_id, tenant, category, price_units)"
    )
    try:
        keys = conn.execute("SELECT pg_relation_size('imgsearch.bench_keys_only')").fetchone()[0]  # type: ignore[index]
    finally:
        conn.execute("DROP INDEX imgsearch.bench_keys_only")
    return (
        f"the column: {float(code):.0f} bytes a row ({float(code) * rows / 2**20:.1f} MiB); the index that "
        f"carries the codes: {carried / 2**20:.1f} MiB against {keys / 2**20:.1f} MiB with its keys alone "
        f"(+{(carried - keys) / rows:.0f} bytes a row)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--data", choices=("clustered", "calibrated"), default="clustered")
    parser.add_argument("--database", help="the embedded server's database holding the catalog (search.py's)")
    parser.add_argument("--thresholds", action="store_true", help="only the pool's and MIN_ROWS's figures")
    args = parser.parse_args()

    url, data, labels, _ = stored_catalog(args.rows, args.data, args.database)
    cases = query_cases(data, labels, args.queries)
    server = make_url(url)
    settings = Settings()
    with (
        Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as on,
        Catalog.open(
            url,
            model="google/siglip-base-patch16-224",
            settings=settings.model_copy(update={"binary_codes": False}),
        ) as off,
        psycopg.connect(
            host=server.query["host"], user="postgres", dbname=server.database, autocommit=True
        ) as conn,
    ):
        if args.thresholds:
            filter_indexes.refresh(on.engine, on.active_model)  # checks the codes when due
            prewarm(conn)
            thresholds(conn, cases)
            with Catalog.open(
                url,
                model="google/siglip-base-patch16-224",
                settings=settings.model_copy(update={"exact_max_fraction": WIDE_FRACTION}),
            ) as wide:
                wider(conn, cases, on, wide)
            return
        started = time.perf_counter()
        conn.execute(
            "DELETE FROM imgsearch.binary_code_checks"
        )  # checked now, as the refresh checks a new model
        filter_indexes.refresh(on.engine, on.active_model)
        recall = conn.execute("SELECT recall FROM imgsearch.binary_code_checks").fetchone()[0]  # type: ignore[index]
        print(
            f"the codes' check: recall@{K} {recall:.3f} (searches use them from {binary_codes.MIN_RECALL}) "
            f"in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        print(storage(conn), flush=True)
        prewarm(conn)
        thresholds(conn, cases)
        truths = {
            (n, name): exact(conn, q, kwargs)
            for n, (q, filters) in enumerate(cases)
            for name, kwargs in filters
            if name in FILTERS
        }
        baseline = create_engine(url)
        times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        recalls: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        strategies: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        on.on_search_plan = None
        for (
            name
        ) in FILTERS:  # warm-up, untimed: each statement built, its plan cached on each pooled connection
            for q, filters in cases[:WARM_UP]:
                for catalog in (on, off):
                    catalog.search(vector=q, k=K, **dict(filters)[name])
        for name in FILTERS:
            # a method's queries one after another (a search right after another of the same vector
            # finds its pages and its HNSW path in the CPU caches), the baseline before and after
            for method in METHODS:
                for n, (q, filters) in enumerate(cases):
                    kwargs = dict(filters)[name]
                    start = time.perf_counter()
                    if method.startswith("baseline") or method == SCAN_NAME:
                        statement, params = (BASELINE, {}) if method != SCAN_NAME else scan(kwargs)
                        with baseline.begin() as c:
                            c.execute(text(statement), {"q": halfvec_text(q), **params}).all()
                        times[(name, method)].append(1000 * (time.perf_counter() - start))
                        continue
                    catalog = on if method == "imgsearch" else off
                    plans: list[Any] = []
                    catalog.on_search_plan = plans.append
                    hits = catalog.search(vector=q, k=K, **kwargs)
                    times[(name, method)].append(1000 * (time.perf_counter() - start))
                    catalog.on_search_plan = None
                    recalls[(name, method)].append(len({h.image_id for h in hits} & truths[(n, name)]) / K)
                    if method == "imgsearch":
                        strategies[name].update(p.strategy for p in plans)
            print(f"  {name}: {len(cases)} queries", flush=True)
        baseline.dispose()

    print(
        f"\n{args.rows} rows x 768 dims ({args.data} vectors), {args.queries} queries, k={K}; p50 ms from "
        "checkout to commit; ratio = p50 / the block's unfiltered baseline p50 (the first pass, before the "
        "block's exact scans; after them in brackets)\n"
    )
    print(
        "| filter | baseline ms (after) | imgsearch ms (ratio, recall) | codes' scan ms (ratio) "
        "| no codes ms (ratio, recall) | codes / no codes | plans |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in FILTERS:
        p50 = {method: statistics.median(times[(name, method)]) for method in METHODS}
        base = p50["baseline"]

        cells = {}
        for method in ("imgsearch", SCAN_NAME, "imgsearch, no codes"):
            recall = f", {np.mean(recalls[(name, method)]):.3f}" if recalls[(name, method)] else ""
            cells[method] = f"{p50[method]:.2f} ({p50[method] / base:.2f}x{recall})"
        plans = ", ".join(f"{s} {c}" for s, c in strategies[name].most_common())
        print(
            f"| {name} | {base:.2f} ({p50['baseline, after']:.2f}) | {cells['imgsearch']} | {cells[SCAN_NAME]} "
            f"| {cells['imgsearch, no codes']} | {p50['imgsearch'] / p50['imgsearch, no codes']:.2f}x | {plans} |"
        )


if __name__ == "__main__":
    main()
