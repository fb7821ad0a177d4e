"""A search's round trips (imgsearch.db.wire, as the router and the strategy use it): a semantic
search of one statement is one round trip, its scope, settings and statement sent before one
Sync, a transaction of its own; a search whose answer is put together from several statements
(its total, its facets) runs them in one transaction, begun in their first round trip; a second
pass begins one transaction for the rest, with the scope and settings again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event

from imgsearch import Catalog
from imgsearch import search as search_mod
from imgsearch.settings import Settings
from tests.search.conftest import Fixture, K, queries

SCOPE = "SELECT set_config('role', $1, true), set_config('imgsearch.tenant', $2, true)"


def protocol_trace(engine: Any, path: Path) -> None:
    """libpq's trace of the protocol messages of every connection ``engine`` hands out from now on
    (a pool event: nothing listens to the statements, so searches run as they do unobserved)."""

    files: dict[int, int] = {}  # the trace file of each connection out, by its id

    @event.listens_for(engine, "checkout")
    def trace(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        files[id(dbapi_conn)] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        dbapi_conn.pgconn.trace(files[id(dbapi_conn)])
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    @event.listens_for(engine, "checkin")
    def untrace(dbapi_conn: Any, record: Any) -> None:
        if dbapi_conn is not None and id(dbapi_conn) in files:
            dbapi_conn.pgconn.untrace()  # flushes what it wrote
            os.close(files.pop(id(dbapi_conn)))


def round_trips(path: Path) -> list[list[tuple[str, str]]]:
    """The trace as round trips: each one the client's messages (kind, text) sent before it read
    the server's next answers; every answer read before the next round trip's first message."""
    trips: list[list[tuple[str, str]]] = []
    answered = True
    for line in path.read_text().splitlines():
        if line[:2] not in ("F\t", "B\t"):
            continue
        side, _, kind, *rest = [*line.split("\t"), ""]
        if side == "F":
            if answered:
                trips.append([])
                answered = False
            trips[-1].append((kind, rest[0].strip()))
        elif side == "B":
            answered = True
    return trips


def executed(trip: list[tuple[str, str]]) -> list[str]:
    """The SQL of each statement a round trip ran (its Parse's text, in order)."""
    return [text.split('"')[3] for kind, text in trip if kind == "Parse"]


def traced_search(url: str, tmp_path: Path, settings: Settings | None = None, **kwargs: Any) -> tuple[Any, Any]:
    """A search's hits (after the same search once, untraced: the statements built and the
    scope's role switch checked) and its round trips."""
    with Catalog.open(url, settings=settings) as catalog:
        expected = catalog.search(**kwargs)
        trace = tmp_path / "protocol.trace"
        protocol_trace(catalog.search_engine, trace)
        found = catalog.search(**kwargs)
    assert found == expected
    return found, round_trips(trace)


@pytest.mark.parametrize(
    "kwargs",
    [{"tenant": "acme", "category": "c00"}, {"category": ["c01", "c02"]}, {"tenant": "globex"}, {}],
)
def test_a_search_of_one_statement_is_one_round_trip(data: Fixture, kwargs: dict[str, Any], tmp_path: Path) -> None:
    """The shop's scope, the settings and the statement, then one Sync: nothing waits for an
    answer before they are all sent, and no BEGIN nor COMMIT (the Sync ends the transaction)."""
    q = queries(data, 0, 1)[0]
    _, trips = traced_search(data.url, tmp_path, vector=q, k=K, **kwargs)
    assert len(trips) == 1, trips
    (trip,) = trips
    statements = executed(trip)
    assert len(statements) == (3 if "tenant" in kwargs else 2), statements  # (the scope,) settings, statement
    assert statements[0] == SCOPE if "tenant" in kwargs else statements[0].startswith("SELECT set_config(")
    assert not any(sql in ("BEGIN", "COMMIT") for sql in statements)
    kinds = [kind for kind, _ in trip]
    assert kinds.count("Sync") == 1 and set(kinds[kinds.index("Sync") :]) <= {"Sync", "Flush"}, kinds
    assert ("Query", '"COMMIT"') not in trip


@pytest.mark.parametrize("asked", [{"total": True}, {"facets": True}])
def test_a_search_put_together_from_statements_runs_them_in_one_transaction(
    data: Fixture, asked: dict[str, Any], tmp_path: Path
) -> None:
    """Hits and their total (or facets) come from one snapshot: BEGIN goes in the first round trip
    with the scope, the settings and the hits' statement; the counts follow in the same
    transaction, then COMMIT."""
    q = queries(data, 0, 1)[0]
    found, trips = traced_search(data.url, tmp_path, vector=q, k=K, tenant="acme", **asked)
    assert found.total is not None and found.total > 0
    statements = [sql for trip in trips for sql in executed(trip)]
    assert executed(trips[0])[:2] == ["BEGIN", SCOPE], trips[0]
    assert statements.count("BEGIN") == 1 and statements.count(SCOPE) == 1, statements
    assert trips[-1] == [("Query", '"COMMIT"')], trips[-1]
    assert all(len(executed(trip)) for trip in trips[:-1]), trips  # each round trip runs statements


def test_a_second_pass_begins_one_transaction_with_the_scope_and_settings_again(
    data: Fixture, tmp_path: Path
) -> None:
    """A far filter's pass comes short and the iterative scan runs (a second statement): the first
    round trip was a transaction of its own, so the second begins one for the rest of the search,
    sending the shop's scope and the first's planner settings again before its own; the hits are
    the exact top-k."""
    q = queries(data, 0, 1)[0]
    far = {"category": [f"c{c:02d}" for c in range(25, 30)], "tenant": "acme"}
    settings = Settings(exact_max_rows=50, exact_max_fraction=0.0)
    plans: list[Any] = []
    with Catalog.open(data.url, settings=settings) as catalog:
        catalog.on_search_plan = plans.append
        catalog.search(vector=q, k=K, **far)
        assert plans[-1].strategy == "hnsw_iterative", plans[-1]
    found, trips = traced_search(data.url, tmp_path, settings, vector=q, k=K, **far)
    first, second = executed(trips[0]), executed(trips[1])
    assert first[0] == SCOPE and "BEGIN" not in first, first
    assert second[:3] == ["BEGIN", SCOPE, first[1]], second  # the scope and the first's settings again
    assert second[3].startswith("SELECT set_config('hnsw.ef_search'") and "iterative_scan" in second[3]
    assert trips[-1] == [("Query", '"COMMIT"')] and len(trips) == 3, trips
    with Catalog.open(data.url) as catalog, catalog.engine.begin() as conn:
        exact = conn.execute(
            search_mod.exact_statement(catalog.active_model, q, search_mod.Filters(**far), K)
        ).all()
    assert len(found) == len(exact) == K
    assert len({h.image_id for h in found} & {r.image_id for r in exact}) >= K - 1
    assert {h.tenant for h in found} == {"acme"}
