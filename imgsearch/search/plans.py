"""How a search reads the HNSW graph: each statement's :class:`Plan` (ef_search, iterative scan,
pool size) and the ``SET LOCAL`` settings that carry it, inside the query's transaction only."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Connection, column, func, select, table, text

from imgsearch.access import tenancy
from imgsearch.db import citus, wire
from imgsearch.settings import Settings

# the thresholds' defaults are declared once, on Settings (the class, not the environment)
EXACT_MAX_ROWS: int = Settings.model_fields["exact_max_rows"].default
MIN_EF_SEARCH = 200  # 100 missed a poorly connected cluster in bench/search/search.py; 200 found it
MAX_EF_SEARCH = 1000
# a graph's recall at a fixed ef_search falls as it grows (bench/search/ef_scale.py, clustered 768-d
# rows): ef 200 gave recall@10 1.000 at 100k rows and 0.953 at 1M, where 400 gave 0.980. The
# floor grows as rows ** EF_GROWTH from EF_BASE_ROWS: 200 up to 100k, 400 at 1M, 800 at 10M
EF_BASE_ROWS = 100_000
EF_GROWTH = 0.3
MIN_SCAN_TUPLES = 20_000  # pgvector's default hnsw.max_scan_tuples
MAX_SCAN_TUPLES = 10_000_000  # a hopeless scan's bound
EXACT_MAX_FRACTION: float = Settings.model_fields["exact_max_fraction"].default
MIN_POOL = 200
MAX_POOL = 4000
SCAN_MEM_MULTIPLIER = 4
SETTINGS_KEPT = 256  # distinct plans' settings remembered (an iterative scan's vary with its counts)


@dataclass(frozen=True)
class Plan:
    # "exact", "hnsw" (one pass), "hnsw_iterative" (a pool, then an exact re-sort) or "codes" (the
    # rows nearest by binary codes, then an exact re-sort: imgsearch.db.binary_codes)
    strategy: str
    matching: int  # rows the filters match, counted up to a bound (-1: not counted)
    ef_search: int = 0
    max_scan_tuples: int = 0
    pool: int = 0  # rows the iterative HNSW scan collects before the exact re-sort
    iterative_scan: str = "off"


def min_ef_search(rows: int) -> int:
    """The least ``hnsw.ef_search`` for a graph of ``rows`` rows: :data:`MIN_EF_SEARCH` up to
    :data:`EF_BASE_ROWS`, then growing as ``rows ** EF_GROWTH`` (see there), at most
    :data:`MAX_EF_SEARCH`."""
    if rows <= EF_BASE_ROWS:
        return MIN_EF_SEARCH
    grown = MIN_EF_SEARCH * (rows / EF_BASE_ROWS) ** EF_GROWTH
    return min(MAX_EF_SEARCH, math.ceil(float(grown)))


def one_pass_plan(wanted: int, min_ef: int = MIN_EF_SEARCH) -> Plan | None:
    """One HNSW pass over the ``ef_search`` nearest rows (at least ``min_ef``), or None when
    ``wanted`` rows need more candidates than :data:`MAX_EF_SEARCH`."""
    ef_search = max(min_ef, 2 * wanted)
    return Plan("hnsw", -1, ef_search=ef_search) if ef_search <= MAX_EF_SEARCH else None


def iterative_plan(wanted: int, matching: int, total: int, min_ef: int = MIN_EF_SEARCH) -> Plan:
    """An iterative (relaxed order) scan that collects a pool of matching rows."""
    return Plan(
        "hnsw_iterative",
        matching,
        ef_search=min(MAX_EF_SEARCH, max(min_ef, 2 * wanted)),
        # relaxed_order stops as soon as the pool is full; the cap only bounds a hopeless scan
        max_scan_tuples=min(max(MIN_SCAN_TUPLES, total), MAX_SCAN_TUPLES),
        pool=min(MAX_POOL, max(MIN_POOL, 4 * wanted)),
        iterative_scan="relaxed_order",
    )


def total_rows(conn: Connection) -> int:
    return int(conn.execute(select(reltuples())).scalar_one())


def reltuples() -> ColumnElement[Any]:
    """The planner's row estimate of the embeddings table (free: no scan)."""
    pg_class = table("pg_class", column("oid"), column("reltuples"), schema="pg_catalog")
    found = (
        select(func.greatest(pg_class.c.reltuples, 1).cast(BigInteger))
        .where(pg_class.c.oid == text("'imgsearch.embeddings'::regclass"))
        .scalar_subquery()
    )
    return func.coalesce(found, 1)


def open_ended_plan(conn: Connection, k: int) -> Plan:
    """Settings for a statement whose filters we don't know (a composed Select): a strict-order
    scan (the caller's ORDER BY must stay exact) that may visit every row before giving up."""
    total = total_rows(conn)
    ef_search = min(MAX_EF_SEARCH, max(min_ef_search(total), 2 * k))
    return Plan("hnsw", -1, ef_search, min(max(MIN_SCAN_TUPLES, 2 * total), MAX_SCAN_TUPLES), k, "strict_order")


def apply_open_ended(conn: Connection, k: int, *, tenant: str | None = None) -> None:
    """:meth:`imgsearch.Catalog.apply_search_settings`: ``tenant``'s row-level security, the
    planner's settings and an :func:`open_ended_plan`'s, in the caller's open transaction."""
    if tenant is not None:
        tenancy.scope(conn, tenant)
    planner_settings(conn)
    set_local(conn, open_ended_plan(conn, k))


def planner_settings(conn: Connection) -> None:
    """Planner settings for this transaction: JIT compiling an exact scan's distance expressions
    costs more than it saves at these sizes, catalogs live in memory, where random reads of the
    filter indexes cost about what sequential ones do (bench/search/search.py: 1% filter 26 -> 14 ms),
    and plans must see the actual query values."""
    # psycopg prepares a statement after 5 runs and PostgreSQL may then switch to a generic plan,
    # planned without the query vector and the filter values: plan for the actual values, unless
    # set_local says the statement's shape plans alike for every value
    _set_local(conn, PLANNER_SETTINGS)


PLANNER_SETTINGS = {"jit": "off", "random_page_cost": "1.1", "plan_cache_mode": "force_custom_plan"}


def plain_settings(conn: Connection, cached_plan: bool = False) -> None:
    """:func:`planner_settings` for a statement that reads no HNSW graph (the lexical side and the
    fusion, facets), after a vector statement of the same transaction: sequential scans and sorts
    allowed again (a cached vector plan turns them off). ``cached_plan``: the statement may run on
    the plan PostgreSQL cached for it (its filters :meth:`Filters.plans_alike`): planning the
    fusion statement costs more than running it."""
    wire.send(conn, plain_statement(conn, cached_plan))


def plain_statement(conn: Connection, cached_plan: bool = False) -> wire.Statement:
    """:func:`plain_settings` as one statement, to send in the round trip of the one after it."""
    mode = "force_generic_plan" if cached_plan else "force_custom_plan"
    return settings_statement(
        conn, {**PLANNER_SETTINGS, "plan_cache_mode": mode, "enable_seqscan": "on", "enable_sort": "on"}
    )


def set_local(conn: Connection, p: Plan, with_planner: bool = False, cached_plan: bool = False) -> None:
    """:func:`local_settings` for this transaction, now (one round trip)."""
    wire.send(conn, local_settings(conn, p, with_planner, cached_plan))


def local_settings(
    conn: Connection, p: Plan, with_planner: bool = False, cached_plan: bool = False
) -> wire.Statement:
    """The statement that sets pgvector's settings for ``p`` for this transaction only
    (integers computed here, never user text), for the caller to send before its statement, in
    its round trip (:func:`imgsearch.db.wire.rows`); ``with_planner`` adds
    :func:`planner_settings`.

    ``cached_plan``: the next statement may run on the plan PostgreSQL cached for it
    (``force_generic_plan``; psycopg prepares a statement at its 5th run on a connection). Only
    for statements whose every LIMIT is in their text and whose filters
    :meth:`Filters.plans_alike`: planning the filtered statement for each search costs 1-1.5 ms,
    half an unfiltered search. Otherwise each run is planned for its values.

    A cached plan is planned without the values, from average row estimates, so it is made
    without sequential scans or sorts where there is another way: an average that is most of the
    table (one tenant, few categories) would otherwise make the exact scan, which runs only when
    few rows match, a read of the whole table; and a small average would sort the filter's rows
    for the HNSW pass, which runs only when many rows match. The exact scan's sort has no other
    way, and stays."""
    coordinator = citus.on_coordinator(conn)
    sql = _settings_sql(p.ef_search, p.iterative_scan, p.max_scan_tuples, with_planner, cached_plan, coordinator)
    return sql, {}


@functools.lru_cache(maxsize=SETTINGS_KEPT)
def _settings_sql(
    ef_search: int, iterative_scan: str, max_scan_tuples: int, with_planner: bool, cached_plan: bool,
    coordinator: bool,
) -> str:  # fmt: skip
    """:func:`local_settings`' SQL text, made once per plan's settings and remembered (a search
    sends one or two; building the text costs more than sending it)."""
    mode = iterative_scan if iterative_scan in ("strict_order", "relaxed_order") else "off"
    settings = {
        "hnsw.ef_search": str(int(ef_search)),
        "hnsw.iterative_scan": mode,
        "plan_cache_mode": "force_generic_plan" if cached_plan else "force_custom_plan",
        "enable_seqscan": "off" if cached_plan else "on",
        "enable_sort": "off" if cached_plan else "on",
    }
    if cached_plan:
        # nor with parallel workers: planned without the values, a filter on attributes is
        # expected to match 1% of the products (jsonb @>'s default), whose exact scan a Gather
        # would split; at 1M that estimate is 10,000 rows, and starting the workers cost more
        # than a one-value filter's whole search (11.1 -> 2.35 ms; bench/search/shop_attributes.py).
        # It stays off for the rest of the transaction (its later statements read HNSW graphs or
        # a pool, which workers don't serve)
        settings["max_parallel_workers_per_gather"] = "0"
    if mode != "off":
        settings["hnsw.max_scan_tuples"] = str(int(max_scan_tuples))
        # iterative scans also stop at work_mem x this multiplier; long scans need the room
        settings["hnsw.scan_mem_multiplier"] = str(SCAN_MEM_MULTIPLIER)
    return _sql({**PLANNER_SETTINGS, **settings} if with_planner else settings, coordinator)


def _set_local(conn: Connection, settings: dict[str, str]) -> None:
    wire.send(conn, settings_statement(conn, settings))


def settings_statement(conn: Connection, settings: dict[str, str]) -> wire.Statement:
    """One statement that sets each setting for this transaction only: ``set_config(name, value,
    true)``, PostgreSQL's function form of ``SET LOCAL`` (a single statement, so it can share
    the round trip of the statement after it: :mod:`imgsearch.db.wire`). Names and values are
    constants and integers of this module, never user input. On a Citus coordinator, ``SET
    LOCAL`` commands, which it sends to the workers' sessions too
    (:data:`imgsearch.db.citus.PROPAGATE`)."""
    return _sql(settings, citus.on_coordinator(conn)), {}


def _sql(settings: dict[str, str], coordinator: bool) -> str:
    if coordinator:
        sets = "; ".join(f"SET LOCAL {name} = {value}" for name, value in settings.items())
        return f"{citus.PROPAGATE}; {sets}"
    calls = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in settings.items())
    return f"SELECT {calls}"
