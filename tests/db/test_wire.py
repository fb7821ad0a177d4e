"""imgsearch.db.wire: statements sent on psycopg's connection give what SQLAlchemy gives (rows,
errors, a broken connection invalidated), deferred ones run before the next statement whichever
way it goes, and anything listening to the statements turns it off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DataError, DBAPIError

from imgsearch.db import wire

STATEMENT = (
    "SELECT n, %(tenant)s || '-' || n AS tag, %(price)s::numeric * n AS price FROM generate_series(1, %(most)s) AS n",
    {"tenant": "o'brien; DROP TABLE x; --", "price": "2.5", "most": 3},
)
SCOPE = ("SELECT set_config('imgsearch.tenant', %(tenant)s, true)", {"tenant": "acme"})
TENANT = "SELECT current_setting('imgsearch.tenant', true)"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = create_engine(database_url, pool_size=1, max_overflow=0)
    yield made
    made.dispose()


def test_rows_are_the_rows_sqlalchemy_gives(engine: Engine) -> None:
    with engine.begin() as conn:
        assert wire.driver(conn) is not None
        direct = wire.rows(conn, STATEMENT)
    seen: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda conn, cursor, statement, *args: seen.append(statement)
    )
    with engine.begin() as conn:
        assert wire.driver(conn) is None  # a listener: through SQLAlchemy, which shows it each statement
        through = wire.rows(conn, STATEMENT)
    assert seen == [STATEMENT[0]]
    assert (
        [tuple(r) for r in direct]
        == [tuple(r) for r in through]
        == [
            (1, "o'brien; DROP TABLE x; ---1", 2.5),
            (2, "o'brien; DROP TABLE x; ---2", 5.0),
            (3, "o'brien; DROP TABLE x; ---3", 7.5),
        ]
    )
    assert [(r.n, r.tag) for r in direct] == [(r.n, r.tag) for r in through]  # columns by name


@pytest.mark.parametrize("name", ["before_cursor_execute", "after_cursor_execute"])
def test_a_listener_on_the_statements_sends_them_through_sqlalchemy(engine: Engine, name: str) -> None:
    wire.install(engine)  # wire's own listener alone leaves the direct way open
    with engine.connect() as conn:
        assert wire.driver(conn) is not None
    listener = lambda *args: None  # noqa: E731
    event.listen(engine, name, listener)
    with engine.connect() as conn:
        assert wire.driver(conn) is None
    event.remove(engine, name, listener)
    with engine.connect() as conn:
        assert wire.driver(conn) is not None


def test_a_listener_on_errors_sends_them_through_sqlalchemy(engine: Engine) -> None:
    handled: list[Any] = []
    event.listen(engine, "handle_error", handled.append)
    with engine.connect() as conn:
        assert wire.driver(conn) is None
        with pytest.raises(DataError):
            wire.rows(conn, ("SELECT 1 / %(zero)s", {"zero": 0}))
    assert len(handled) == 1


def test_errors_are_sqlalchemys(engine: Engine) -> None:
    with engine.connect() as conn:
        with pytest.raises(DataError) as raised:
            wire.rows(conn, ("SELECT 1 / %(zero)s", {"zero": 0}), before=[SCOPE])
        assert isinstance(raised.value.orig, psycopg.errors.DivisionByZero)
        assert not raised.value.connection_invalidated
        assert "SELECT 1 / %(zero)s" in str(raised.value)  # the statement that failed is named
        conn.rollback()
        with pytest.raises(DBAPIError) as raised:  # a statement before the one read fails first
            wire.rows(conn, STATEMENT, before=[("SELECT no_such_function()", {})])
        assert "no_such_function" in str(raised.value)
        conn.rollback()
        assert [tuple(r) for r in wire.rows(conn, ("SELECT 1 AS one", {}))] == [(1,)]


def test_a_broken_connection_is_invalidated_as_sqlalchemy_does(engine: Engine) -> None:
    with engine.connect() as conn:
        pid = wire.rows(conn, ("SELECT pg_backend_pid() AS pid", {}))[0].pid
        with engine.pool._creator() as admin:  # type: ignore[attr-defined]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DBAPIError) as raised:
            wire.rows(conn, STATEMENT)
        assert raised.value.connection_invalidated
    with engine.connect() as conn:  # the pool made a new one
        assert wire.rows(conn, ("SELECT pg_backend_pid() AS pid", {}))[0].pid != pid


def test_a_deferred_statement_runs_before_the_next_one_either_way(engine: Engine) -> None:
    wire.install(engine)
    with engine.begin() as conn:  # the next one on psycopg's connection: in its round trip
        wire.defer(conn, SCOPE)
        assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant == "acme"
    with engine.begin() as conn:  # through SQLAlchemy (a Select, a listener's statement): first
        wire.defer(conn, SCOPE)
        assert conn.execute(text(TENANT)).scalar() == "acme"
    with engine.begin() as conn:
        wire.defer(conn, SCOPE)
        wire.send(conn, ("SELECT set_config('imgsearch.tenant', %(tenant)s, true)", {"tenant": "globex"}))
        assert conn.execute(text(TENANT)).scalar() == "globex"  # in order: the deferred one first
    with engine.begin() as conn:  # each transaction its own: nothing deferred is left over
        assert conn.execute(text(TENANT)).scalar() in (None, "")


def test_an_engine_not_installed_sends_a_deferred_statement_at_once(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            wire.defer(conn, SCOPE)
            driver_conn = conn.connection.driver_connection
            assert isinstance(driver_conn, psycopg.Connection)
            row = driver_conn.execute(TENANT).fetchone()  # past SQLAlchemy: it ran already
            assert row is not None and row[0] == "acme"
    finally:
        engine.dispose()
