"""A search's round trips (imgsearch.db.wire, as the router and the strategy use it): the shop's
scope, the settings and the statement sent together, then COMMIT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event

from imgsearch import Catalog
from tests.search.conftest import Fixture, queries


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


@pytest.mark.parametrize(
    "kwargs",
    [{"tenant": "acme", "category": "c00"}, {"category": ["c01", "c02"]}, {"tenant": "globex"}, {}],
)
def test_a_search_sends_its_statements_in_one_round_trip_then_commits(
    data: Fixture, kwargs: dict[str, Any], tmp_path: Path
) -> None:
    """The shop's scope, the settings and the statement go together: each one is sent before the
    server's first answer to them is read (imgsearch.db.wire); then COMMIT, alone. (psycopg syncs
    a transaction's BEGIN on its own, before them, and ends the pipeline with a Sync.)"""
    q = queries(data, 0, 1)[0]
    with Catalog.open(data.url) as catalog:
        expected = catalog.search(vector=q, k=10, **kwargs)
        trace = tmp_path / "protocol.trace"
        protocol_trace(catalog.search_engine, trace)
        assert catalog.search(vector=q, k=10, **kwargs) == expected
    lines = [line.split("\t") for line in trace.read_text().splitlines() if line[:2] in ("F\t", "B\t")]
    assert lines[0][2:4] == ["Parse", ' "" "BEGIN" 0'], lines[0]
    begun = next(i for i, line in enumerate(lines) if line[0] == "B" and line[2] == "ReadyForQuery")
    commit = next(i for i, line in enumerate(lines) if line[0] == "F" and line[2:4] == ["Query", ' "COMMIT"'])
    # the statements' messages (then psycopg closes the pipeline with a Sync of its own)
    sent = [
        i for i in range(begun + 1, commit) if lines[i][0] == "F" and lines[i][2] not in ("Sync", "Flush")
    ]
    answered = [i for i in range(begun + 1, commit) if lines[i][0] == "B"]
    assert sent and answered and max(sent) < min(answered), "the client waited for an answer mid-search"
    executed = [lines[i] for i in sent if lines[i][2] == "Execute"]
    assert len(executed) == (3 if "tenant" in kwargs else 2), lines[
        :commit
    ]  # (the scope,) settings, statement
    assert all(line[0] == "B" for line in lines[commit + 1 :]), "nothing is sent after the COMMIT"
