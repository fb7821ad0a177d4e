"""Filtered search at every selectivity: imgsearch vs naive pgvector vs exact scan, in one run.

    .venv/bin/python bench/search/search.py --rows 100000 --queries 100

A synthetic catalog of 768-d unit vectors with product-like structure: 200 clusters; each category
holds two neighbouring clusters (1% of the catalog); prices follow the clusters. Filters of 10%, 3%,
1% and 0.1% of the catalog, each "near" (the rows lie around the query) and "far" (the rows lie in
clusters far from the query), the 1% ones also within the catalog's one tenant ("1% near, shop": a
shop's search in a category); 0.01%, one value of a random attribute; and two over the whole
catalog: none ("100%"), and its one tenant ("100% tenant": a shop's search). imgsearch runs the
searches with a tenant under row-level security. Methods, all on the same database:

* imgsearch — ``catalog.search(vector=q, k=10, <filters>)``
* naive — ``ORDER BY embedding <=> q LIMIT 10`` with the same WHERE, HNSW, pgvector defaults
  (ef_search 40, no iterative scan): what an application gets from plain pgvector
* floor — imgsearch's own statements, captured, replayed bare on a psycopg connection (below)
* library floor — the floor with the least Python any library taking an SQLAlchemy engine runs
  around it, checking what it is given as imgsearch must: the query vector (``as_vector``), the
  page (``check_page``) and the filters' values (``Filters(...).params()``), the floor's round
  trips over imgsearch's own transport (a pooled connection, ``imgsearch.db.wire``: the fastest way
  we know on an engine), a hit made from each row, the answer with its query id
  (``SearchResult``); what is above it is imgsearch's own Python (routing, the plan, its layers)
* exact — the same WHERE with an exact distance sort (no index): the ground truth for recall.
  At a far filter, where imgsearch's answer is an exact scan, it is also timed beside the others
  in the filter's block (the column ``imgsearch / exact``); elsewhere it runs in a phase of its own
  before them (it would evict the HNSW index from shared buffers at 1M rows)
* baseline — the unfiltered HNSW query, ``ORDER BY embedding <=> q LIMIT 10`` with pgvector's
  defaults, the ``10`` in its text: PostgreSQL's default plan cache then reuses the plan of its
  prepared statement instead of planning it for each vector, the fastest way to run it. The
  latency target is imgsearch's p50 within 2x of it. It is timed in every filter's block, between
  the other methods, and each filter's ratio is against its own block's baseline.
* baseline, ef 200 — the same query after ``SET LOCAL hnsw.ef_search = 200``, imgsearch's
  smallest ef_search (the recall its guarantee needs): what an unfiltered search at that recall
  costs, round trip included
* text baseline — the same query with the vector sent as text: the baseline until 2026-11-22
  session 11, when imgsearch's searches started sending it in halfvec's binary form; kept to
  compare runs before and after.

Every method is timed the way its caller waits for it: from taking a pooled connection to the end
of its transaction, as ``catalog.search`` is (naive and the baselines: checkout, BEGIN, the
statement, COMMIT, as SQLAlchemy runs them; imgsearch and its floor: one round trip, the statement
its own transaction, unless a second pass follows: imgsearch.db.wire). Every method but the text
baseline sends the query vector in halfvec's binary form, as ``catalog.search`` does, so the
comparison is between what the statements do. Naive and both baselines run on engines of their own
with SQLAlchemy's defaults (no pre-ping). Their statements are built before the clock starts.

No timed search reuses the vector of one of the searches just before it: a repeated vector finds its
HNSW path in the CPU caches and runs up to 2x faster, which real requests don't get.

``--data calibrated`` runs it all on vectors shaped as real embeddings are (a steep spectrum,
neighbours that stand out: bench/search/calibration.py), kept in ``bench_search_calibrated``.

``--category-indexes MIN_ROWS`` adds a third phase: each category of MIN_ROWS rows or more gets its
own HNSW index (``catalog.index_filter_values``), and imgsearch is timed again on every filter
("imgsearch, own graphs"), against a baseline timed in the same blocks. The sizing table gives the
disk sizes, ``shared_buffers``, PostgreSQL's memory (PSS of the server's processes) and the HNSW
build time (``maintenance_work_mem`` sized to the graph, one parallel worker per other core).

Writes the table to stdout, then each filter's Python calls in one search (imgsearch's and the
library floor's: :func:`python_calls`), and a recall/latency plot to docs/search_benchmark.png. The catalog is
kept in the database ``bench_search`` of the embedded server (IMGSEARCH_HOME) for reruns.

The figure it produces: docs/benchmarks.md, "Sizing: 100k and 1M rows", "Filtered search at 1M rows"
and "Filtered search at 100k rows" (tables, docs/search_benchmark.png and
docs/search_benchmark_100k.png).
"""

from __future__ import annotations

import argparse
import operator
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import tuple_row
from sqlalchemy import Engine, create_engine, event, literal_column, text

sys.path.insert(0, str(Path(__file__).parents[1]))

from _catalog import DATA, database_url, load, query_cases

from imgsearch import Catalog
from imgsearch import search as vector_search
from imgsearch.db import wire
from imgsearch.db.engine import libpq_conninfo
from imgsearch.db.vector_index import (
    HalfvecBinaryDumper,
    HalfvecValue,
    index_name,
    query_param,
    send_binary_queries,
)
from imgsearch.ingest.vectors import as_vector
from imgsearch.learning.queries import new_query_id
from imgsearch.records import SearchResult
from imgsearch.search.filters import Filters, check_page
from imgsearch.search.strategy import hit_of
from imgsearch.settings import Settings

K = 10


def sizing(catalog: Catalog) -> dict[str, str]:
    """Disk sizes, shared_buffers, PostgreSQL's RSS and the index build time, for the sizing table."""
    model = catalog.active_model
    with catalog.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT pg_total_relation_size('imgsearch.embeddings') - pg_indexes_size('imgsearch.embeddings'), "
                "pg_relation_size(CAST(:index AS regclass)), pg_indexes_size('imgsearch.embeddings'), "
                "pg_total_relation_size('imgsearch.products') + pg_total_relation_size('imgsearch.images'), "
                "pg_database_size(current_database()), current_setting('shared_buffers')"
            ),
            {"index": f"imgsearch.{index_name(model.id)}"},
        ).one()
        build = conn.execute(text("SELECT value FROM public.bench_meta WHERE key = 'build'")).scalar()
        pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    mib = 1024**2
    return {
        "embeddings table": f"{row[0] / mib:,.0f} MiB",
        "HNSW index": f"{row[1] / mib:,.0f} MiB",
        "all indexes of embeddings": f"{row[2] / mib:,.0f} MiB",
        "products + images": f"{row[3] / mib:,.0f} MiB",
        "database": f"{row[4] / mib:,.0f} MiB",
        "shared_buffers": str(row[5]),
        "PostgreSQL RSS": f"{postgres_rss(pid) / mib:,.0f} MiB",
        "HNSW build": str(build),
    }


def postgres_rss(backend_pid: int) -> int:
    """Resident memory of the server: the postmaster and its children (shared buffers counted once,
    as the largest RSS; private memory summed with PSS where /proc has it)."""
    postmaster = int(Path(f"/proc/{backend_pid}/stat").read_text().split()[3])
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().split()
            if int(entry.name) != postmaster and int(stat[3]) != postmaster:
                continue
            rollup = (entry / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
    return total


def in_transaction(
    engine: Engine, stmt: Any, planner: bool = False, ef_search: int | None = None
) -> list[Any]:
    """``stmt`` in a transaction of its own on a pooled connection: what its caller waits for
    (``planner``: with imgsearch's planner settings, as the exact scan runs; ``ef_search``: set
    first, one more round trip). The connection can send query vectors in binary, as imgsearch's
    do."""
    with engine.begin() as conn:
        send_binary_queries(conn)
        if planner:
            vector_search.planner_settings(conn)
        if ef_search is not None:
            conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
        return list(conn.execute(stmt).all())


def capture(
    catalog: Catalog, cases: list[Any], names: list[str]
) -> dict[tuple[int, int], list[tuple[str, Any]]]:
    """Each (query, filter)'s statements as ``catalog.search`` sends them, in order, with their
    values (an untimed pass). One search runs first, uncaptured: an engine's questions asked once
    (whether it is a Citus coordinator) would otherwise be replayed at every turn of the first case."""
    catalog.search(vector=cases[0][0], k=K)
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(catalog.search_engine, "before_cursor_execute", record)
    captured = {}
    try:
        for n, (q, filters) in enumerate(cases):
            for position, (_, kwargs) in enumerate(filters):
                sent.clear()
                catalog.search(vector=q, k=K, **kwargs)
                captured[(n, position)] = list(sent)
    finally:
        event.remove(catalog.search_engine, "before_cursor_execute", record)
    return captured


def bare_connection(url: Any) -> psycopg.Connection[Any]:
    """A psycopg connection of its own that sends query vectors in binary, as imgsearch's do, in
    autocommit: :func:`replay` begins its transactions, as imgsearch.db.wire does."""
    conn = psycopg.connect(libpq_conninfo(url), autocommit=True)
    conn.adapters.register_dumper(HalfvecValue, HalfvecBinaryDumper)
    return conn


def library_engine(url: Any) -> Engine:
    """A pool of :func:`bare_connection`-s."""
    return create_engine(url, creator=lambda: bare_connection(url))


def library_floor(
    engine: Engine, q: np.ndarray, calls: list[tuple[str, Any]], filters: dict[str, Any]
) -> list[Any]:
    """The least a library on an SQLAlchemy engine runs around the floor, checking its arguments
    as imgsearch must (bad input gets a typed error): the query vector, the page and the filters'
    values checked, the floor's statements sent over imgsearch's own transport (the fastest we
    know on an engine: a block's connection of :func:`imgsearch.db.wire.begin`, each statement with
    the settings before it in one pipeline, :func:`imgsearch.db.wire.rows`), a hit from each row
    (by distance), the answer with its query id; the hits' image ids."""
    as_vector(q, len(q))
    check_page(K, 0)
    Filters(**filters).params()
    found: Sequence[Any] = ()
    with wire.begin(engine, alone=True) as conn:
        for settings, statement in round_trips(calls):
            found = wire.rows(conn, statement, settings)
    rows = sorted([r for r in found if r.image_id is not None], key=BY_DISTANCE)[:K]
    answer = SearchResult([hit_of(r) for r in rows], query_id=str(new_query_id()))
    return [hit.image_id for hit in answer]


BY_DISTANCE = operator.attrgetter("distance")  # a C key: no Python call a row


def round_trips(calls: list[tuple[str, Any]]) -> Iterator[tuple[list[tuple[str, Any]], tuple[str, Any]]]:
    """A search's captured statements as imgsearch sends them: each statement with the ones
    before it that only set the transaction's settings (``set_config``: the shop's scope,
    pgvector's settings), which go in its round trip."""
    settings: list[tuple[str, Any]] = []
    for statement, params in calls:
        if statement.startswith("SELECT set_config("):
            settings.append((statement, params))
            continue
        yield settings, (statement, params)
        settings = []


def replay(conn: Any, calls: list[tuple[str, Any]]) -> list[Any]:
    """The floor: a search's statements as imgsearch sent them (in PostgreSQL's own form),
    prepared, in the round trips imgsearch sends them in (imgsearch.db.wire): the statements
    that only set the transaction's settings (``set_config``: the shop's scope, pgvector's
    settings) in one pipeline with the statement after them, its answers read after the
    pipeline's Sync. The first statement is a transaction of its own (a semantic search's is:
    its Sync ends it); a later one (a far filter's second pass) begins one transaction for the
    rest, the first one's settings sent again with its own, then COMMIT. The image ids of the
    last statement's ``K`` nearest rows (the filtered statement answers a row of NULL hit
    columns when it has none)."""
    nearest: list[Any] = []
    carried: list[tuple[str, Any]] | None = None  # what the first transaction set
    opened = False
    for settings, (statement, params) in round_trips(calls):
        sent = settings
        if carried is None:
            carried = settings
        elif not opened:
            sent, opened = [("BEGIN", None), *carried, *settings], True
        with conn.pipeline():
            for sql, values in sent:
                psycopg.RawCursor(conn).execute(*raw_form(sql, values), prepare=sql != "BEGIN")
            cursor = psycopg.RawCursor(conn, row_factory=tuple_row)
            cursor.execute(*raw_form(statement, params), prepare=True)
        answer = cursor.fetchall()
        names = [c.name for c in cursor.description or ()]
        if "image_id" in names:
            image, distance = names.index("image_id"), names.index("distance")
            nearest = sorted((r for r in answer if r[image] is not None), key=lambda r: r[distance])[:K]
    if opened:
        conn.commit()
    return [r[image] for r in nearest]


def raw_form(sql: str, params: Any) -> tuple[str, Any]:
    """A statement in PostgreSQL's own form (``$n``), as imgsearch sends it
    (:func:`imgsearch.db.wire.postgres_form`): the floor doesn't parse its text either."""
    form = wire.postgres_form((sql, params))
    assert form is not None
    return form


def far(name: str) -> bool:
    """Whether filter ``name`` selects rows far from the query: imgsearch answers it with an exact
    scan, whose plain query is timed beside it."""
    return "far" in name


def binary(q: np.ndarray) -> Any:
    """``q`` as a parameter sent in halfvec's binary form, as ``catalog.search`` sends its own."""
    return query_param(q, len(q), binary=True)


def python_calls(fn: Any, *args: Any, **kwargs: Any) -> int:
    """How many Python functions one call of ``fn`` runs (``sys.setprofile``'s "call" events; C
    functions aren't counted): unlike a time, a count the box's noise doesn't move. The Python a
    search runs between its waits runs cold (each wait hands the core to the server), so its cost
    follows how much of it there is."""
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        fn(*args, **kwargs)
    finally:
        sys.setprofile(None)
    return count


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument(
        "--category-indexes",
        type=int,
        metavar="MIN_ROWS",
        default=0,
        help="then give each category of MIN_ROWS rows its own HNSW index and time imgsearch again",
    )
    parser.add_argument(
        "--data", choices=DATA, default="clustered",
        help="the vectors: isotropic clusters, or calibrated on real embeddings (bench/search/calibration.py)",
    )  # fmt: skip
    parser.add_argument(
        "--database", help="the embedded server's database to keep it in (bench_search, bench_search_calibrated)"
    )
    parser.add_argument(
        "--plot", default=str(Path(__file__).resolve().parents[2] / "docs" / "search_benchmark.png")
    )
    args = parser.parse_args()

    # the search path alone: each search's record of itself (record_queries) is timed by
    # bench/search/feedback_load.py
    settings = Settings(record_queries=False)
    database = args.database or ("bench_search" if args.data == "clustered" else f"bench_search_{args.data}")
    url = database_url(settings.home, database)
    with Catalog.open(url, model="google/siglip-base-patch16-224", settings=settings) as catalog:
        data, labels = load(catalog, args.rows, seed=11, data_kind=args.data)
        model = catalog.active_model
        cases = query_cases(data, labels, args.queries)
        names = [name for name, _ in cases[0][1]]
        results: dict[tuple[str, str], dict[str, list[float]]] = {}

        def record(name: str, method: str, got: list[int], expected: set[int], ms: float) -> None:
            cell = results.setdefault((name, method), {"recall": [], "rows": [], "ms": []})
            # a filter that matches nothing has nothing to find: returning nothing is full recall
            cell["recall"].append(len(expected & set(got)) / len(expected) if expected else float(not got))
            cell["rows"].append(len(got))
            cell["ms"].append(ms)

        # Phase 1, the ground truth: exact scans read the whole table and would evict the HNSW
        # index from shared buffers if they ran between the timed HNSW queries.
        truths = []
        for n, (q, filters) in enumerate(cases):
            row_truth = []
            for name, kwargs in filters:
                stmt = vector_search.exact_statement(model, binary(q), vector_search.Filters(**kwargs), K)
                truth, ms = timed(in_transaction, catalog.engine, stmt, planner=True)
                ids = [r.image_id for r in truth]
                if not far(name):  # a far filter's is timed beside imgsearch (phase 2)
                    record(name, "exact", ids, set(ids), ms)
                row_truth.append(set(ids))
            truths.append(row_truth)
            if (n + 1) % 10 == 0:
                print(f"  exact: {n + 1}/{args.queries} queries", flush=True)
        # Phase 2: naive pgvector and imgsearch, alternating, on a warm index: a server in service
        # has its index and rows in shared_buffers; load them so the first method timed doesn't pay
        # for everyone's first reads.
        with catalog.engine.begin() as conn:
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
            for relation in (
                f"imgsearch.{index_name(model.id)}",
                "imgsearch.embeddings",
                "imgsearch.products",
            ):
                conn.execute(text("SELECT pg_prewarm(CAST(:relation AS regclass))"), {"relation": relation})
        # A search repeated with the same vector finds that vector's HNSW path in the CPU caches and
        # runs up to 2x faster, which a real request doesn't get. So each filter runs as a block of
        # steps; step n times each method in turn, the i-th on query n + iQ/4 (mod Q), starting
        # with the (n mod methods)-th method: every method meets every query once per filter, a
        # vector comes back only about Q searches after its last use; the methods interleave, so
        # machine noise hits them alike, each runs after every other as often (one that runs after
        # a method sharing its code finds that code in the CPU's caches), and each filter's ratio
        # is against the baseline timed in its own block.
        # plain pgvector as an application runs it: SQLAlchemy's defaults, no pre-ping
        naive_engine = create_engine(catalog.engine.url)
        baseline_engine = create_engine(catalog.engine.url)
        # the floor: each search's statements as imgsearch sent them (settings included), captured
        # in an untimed pass, then replayed on a bare psycopg connection as prepared statements
        captured = capture(catalog, cases, names)
        floor_conn = bare_connection(catalog.engine.url)
        library = library_engine(catalog.engine.url)

        def run_blocks(methods: tuple[str, ...], phase: str = "") -> None:
            shift = max(1, args.queries // len(methods))
            for position, name in enumerate(names):
                for n in range(args.queries):
                    # the order turns each step: no method always runs right after one whose code
                    # it shares (the floor after imgsearch: psycopg's pipeline; the library floor
                    # after the floor: its replay)
                    numbered, turn = list(enumerate(methods)), n % len(methods)
                    for i, method in numbered[turn:] + numbered[:turn]:
                        m = n + i * shift
                        q, filters = cases[m % args.queries]
                        kwargs = filters[position][1]
                        expected = truths[m % args.queries][position]
                        if method == "naive":
                            stmt = vector_search.hnsw_statement(
                                model, binary(q), vector_search.Filters(**kwargs), K
                            )
                            naive, ms = timed(in_transaction, naive_engine, stmt)
                            record(name, method, [r.image_id for r in naive], expected, ms)
                        elif method.startswith("imgsearch"):
                            ours, ms = timed(catalog.search, vector=q, k=K, **kwargs)
                            record(name, method, [h.image_id for h in ours], expected, ms)
                        elif method == "floor":
                            calls = captured[(m % args.queries, position)]
                            bare, ms = timed(replay, floor_conn, calls)
                            record(name, method, bare, expected, ms)
                        elif method == "exact":  # a far filter's (imgsearch's answer is an exact scan)
                            if not far(name):
                                continue
                            stmt = vector_search.exact_statement(
                                model, binary(q), vector_search.Filters(**kwargs), K
                            )
                            plain, ms = timed(in_transaction, naive_engine, stmt, planner=True)
                            record(name, method, [r.image_id for r in plain], expected, ms)
                        elif method == "library floor":
                            calls = captured[(m % args.queries, position)]
                            least, ms = timed(library_floor, library, q, calls, kwargs)
                            record(name, method, least, expected, ms)
                        else:  # plain unfiltered HNSW, its LIMIT in the text; the vector binary, or text
                            query = q if method == "text baseline" else binary(q)
                            limit = literal_column(str(K))
                            stmt = vector_search.hnsw_statement(model, query, vector_search.Filters(), limit)
                            ef = vector_search.MIN_EF_SEARCH if method == "baseline, ef 200" else None
                            plain, ms = timed(in_transaction, baseline_engine, stmt, ef_search=ef)
                            record(
                                name,
                                method + phase,
                                [r.image_id for r in plain],
                                truths[m % args.queries][0],
                                ms,
                            )
                print(f"  timed{phase}: {name}", flush=True)

        run_blocks(
            (
                *("naive", "imgsearch", "floor", "library floor", "baseline", "baseline, ef 200"),
                *("text baseline", "exact"),
            )
        )
        # a filter's Python calls, imgsearch's and the library floor's: the fewest of 5 searches (one
        # may do more, once: the catalog's model refresh every few seconds, a statement prepared)
        calls: dict[str, tuple[int, int]] = {}
        q = cases[0][0]
        for position, name in enumerate(names):
            kwargs = cases[0][1][position][1]
            calls[name] = (
                min(python_calls(catalog.search, vector=q, k=K, **kwargs) for _ in range(5)),
                min(python_calls(library_floor, library, q, captured[(0, position)], kwargs) for _ in range(5)),
            )
        floor_conn.close()
        sizes = sizing(catalog)
        value_indexes = ""
        if args.category_indexes:
            # Phase 3: every category of --category-indexes rows or more gets its own HNSW graph
            print(f"building per-category indexes (--min-rows {args.category_indexes}) ...", flush=True)
            start = time.perf_counter()
            built = catalog.index_filter_values("category", args.category_indexes, progress=False)
            seconds = time.perf_counter() - start
            graphs = catalog.filter_graphs()
            total = sum(g.size_bytes for g in graphs)
            value_indexes = (
                f"{len(built.built)} per-category indexes built in {seconds:.0f} s, "
                f"{total / 1024**2:,.0f} MiB in all"
            )
            print(f"  {value_indexes}", flush=True)
            with catalog.engine.begin() as conn:
                for g in graphs:
                    conn.execute(
                        text("SELECT pg_prewarm(CAST(:relation AS regclass))"),
                        {"relation": f"imgsearch.{g.index_name}"},
                    )
            run_blocks(("imgsearch, own graphs", "baseline"), phase=" (phase 3)")
        for engine in (naive_engine, baseline_engine, library):
            engine.dispose()

    baselines = {name: statistics.median(results[(name, "baseline")]["ms"]) for name in names}
    print(
        f"\n{args.rows} rows x 768 dims, {args.queries} queries per filter, k={K}; baseline = unfiltered "
        f"HNSW p50 {statistics.median(baselines.values()):.1f} ms (median of the filters' blocks)\n"
    )
    print(
        "| filter | method | recall@10 | rows returned (min / mean) | p50 ms | p95 ms | p50 / baseline "
        "| imgsearch / floor | imgsearch / library floor | imgsearch / exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    own = "imgsearch, own graphs"
    for name in names:
        methods = [
            *("imgsearch", "floor", "library floor", "naive", "exact"),
            *("baseline", "baseline, ef 200", "text baseline"),
        ]
        if (name, own) in results:
            methods.insert(1, own)
        for method in methods:
            cell = results[(name, method)]
            p50 = statistics.median(cell["ms"])
            p95 = float(np.percentile(cell["ms"], 95))
            # phase 3's searches against phase 3's baseline of the same filter block
            base = (
                statistics.median(results[(name, "baseline (phase 3)")]["ms"])
                if method == own
                else baselines[name]
            )
            over = ["", "", ""]
            if method == "imgsearch":
                below = ("floor", "library floor", "exact") if far(name) else ("floor", "library floor")
                for i, floor in enumerate(below):
                    over[i] = f"{p50 / statistics.median(results[(name, floor)]['ms']):.2f}x"
            print(
                f"| {name} | {method} | {np.mean(cell['recall']):.3f} | {min(cell['rows'])} / "
                f"{np.mean(cell['rows']):.1f} | {p50:.1f} | {p95:.1f} | {p50 / base:.2f}x | {' | '.join(over)} |"
            )
    print("\n| filter | Python calls a search: imgsearch | library floor |\n|---|---|---|")
    for name in names:
        print(f"| {name} | {calls[name][0]} | {calls[name][1]} |")
    print("\n| sizing | |\n|---|---|")
    print(f"| rows | {args.rows:,} x 768 (halfvec) |")
    for key, value in sizes.items():
        print(f"| {key} | {value} |")
    print(
        f"| unfiltered p50 (imgsearch) | {statistics.median(results[('100%', 'imgsearch')]['ms']):.1f} ms |"
    )
    if value_indexes:
        print(f"| per-category indexes | {value_indexes} |")
        before = statistics.median(results[("100%", "imgsearch")]["ms"]) / baselines["100%"]
        after = statistics.median(results[("100%", own)]["ms"]) / statistics.median(
            results[("100%", "baseline (phase 3)")]["ms"]
        )
        print(
            f"\nunfiltered imgsearch / baseline: {before:.2f}x without the per-category indexes, "
            f"{after:.2f}x with them ({(after / before - 1) * 100:+.0f}%)"
        )
    plot(results, names, baselines, Path(args.plot))
    print(f"\nplot: {args.plot}")


def plot(
    results: dict[tuple[str, str], dict[str, list[float]]],
    names: list[str],
    baselines: dict[str, float],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    bars = [("imgsearch", "tab:blue"), ("naive", "tab:red"), ("exact", "tab:gray")]
    if (names[0], "imgsearch, own graphs") in results:
        bars.insert(1, ("imgsearch, own graphs", "tab:green"))
    width = 0.8 / len(bars)
    for i, (method, colour) in enumerate(bars):
        offset = (i - (len(bars) - 1) / 2) * width
        recall = [np.mean(results[(n, method)]["recall"]) for n in names]
        p50 = [statistics.median(results[(n, method)]["ms"]) for n in names]
        left.bar(x + offset, recall, width=width, label=method, color=colour)
        right.bar(x + offset, p50, width=width, label=method, color=colour)
    left.set_ylabel("recall@10 (vs exact)")
    left.set_ylim(0, 1.05)
    left.axhline(0.98, color="black", linestyle=":", linewidth=1)
    right.set_ylabel("p50 latency (ms, log)")
    right.set_yscale("log")
    right.scatter(
        x, [2 * baselines[n] for n in names], marker="_", s=400, color="black", label="2x unfiltered HNSW"
    )
    for ax in (left, right):
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.legend(fontsize=8)
    left.set_title("Recall by filter selectivity")
    right.set_title("Latency by filter selectivity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
