"""imgsearch.db.wire: statements sent on psycopg's connection give what SQLAlchemy gives (rows,
errors, a broken connection invalidated), deferred ones run before the next statement whichever
way it goes, and anything listening to the statements turns it off."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Connection, Engine, Sequence, create_engine, event, func, select, text
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session

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
    with wire.begin(engine) as conn:  # wire's own deferring connection leaves the direct way open
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
    with wire.begin(engine) as conn:  # the next one on psycopg's connection: in its round trip
        wire.defer(conn, SCOPE)
        assert wire.deferred(conn) == [SCOPE]
        assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant == "acme"
        assert wire.deferred(conn) == []
    with wire.begin(engine) as conn:  # through SQLAlchemy (a Select, a listener's statement): first
        wire.defer(conn, SCOPE)
        assert conn.execute(text(TENANT)).scalar() == "acme"
    with wire.begin(engine) as conn:
        wire.defer(conn, SCOPE)
        wire.send(conn, ("SELECT set_config('imgsearch.tenant', %(tenant)s, true)", {"tenant": "globex"}))
        assert conn.execute(text(TENANT)).scalar() == "globex"  # in order: the deferred one first
    with wire.begin(engine) as conn:  # each transaction its own: nothing deferred is left over
        assert conn.execute(text(TENANT)).scalar() in (None, "")


@pytest.mark.parametrize("way", ["scalar", "exec_driver_sql", "core select", "orm session", "sequence"])
def test_every_way_sqlalchemy_executes_runs_the_deferred_first(engine: Engine, way: str) -> None:
    tenant = func.current_setting("imgsearch.tenant", True)
    with wire.begin(engine) as conn:
        wire.defer(conn, SCOPE)
        if way == "scalar":
            assert conn.scalar(text(TENANT)) == "acme"
        elif way == "exec_driver_sql":
            assert conn.exec_driver_sql(TENANT).scalar() == "acme"
        elif way == "core select":
            assert conn.execute(select(tenant)).scalar() == "acme"
        elif way == "orm session":
            with Session(bind=conn) as session:
                assert session.scalar(select(tenant)) == "acme"
        else:  # a Sequence's next value runs on the cursor, past SQLAlchemy's statement execution
            conn.exec_driver_sql("CREATE TEMPORARY SEQUENCE wire_seq")
            wire.defer(conn, SCOPE)
            assert conn.scalar(Sequence("wire_seq")) == 1
            assert wire.deferred(conn) == []  # sent before the sequence's statement
            assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant == "acme"


@pytest.mark.parametrize("on", ["engine", "every connection"])
def test_a_listener_on_the_transactions_sees_a_deferring_connections(
    engine: Engine, on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with wire.begin(engine) as conn:  # nothing listens: the connection joins no dispatch
        conn.exec_driver_sql("SELECT 1")
    seen: list[str] = []

    def commit(conn: Any) -> None:
        seen.append("commit")

    target: Any = engine if on == "engine" else Connection
    # a listener marks its target for good: the other tests' connections go back to none
    monkeypatch.setattr(target, "_has_events", target._has_events)
    event.listen(target, "commit", commit)
    try:
        with wire.begin(engine) as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        event.remove(target, "commit", commit)
    assert seen == ["commit"]


def test_a_listener_sees_the_deferred_statement(engine: Engine) -> None:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *args: seen.append(statement))
    with wire.begin(engine) as conn:
        wire.defer(conn, SCOPE)  # a listener: sent at once, through SQLAlchemy
        assert seen == [SCOPE[0]]
        assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant == "acme"
    assert seen == [SCOPE[0], TENANT + " AS tenant"]


def test_a_deferred_statement_of_an_ended_transaction_is_dropped(engine: Engine) -> None:
    with wire.Deferring(engine) as conn:  # transactions begun and ended by hand
        wire.defer(conn, SCOPE)
        conn.rollback()  # the transaction ends before any statement came
        assert wire.deferred(conn) == []
        assert conn.execute(text(TENANT)).scalar() in (None, "")  # the next one is not scoped
        assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant in (None, "")
        conn.commit()
        wire.defer(conn, SCOPE)
        conn.commit()
        assert wire.rows(conn, (TENANT + " AS tenant", {}))[0].tenant in (None, "")


def test_a_connection_not_from_begin_sends_a_deferred_statement_at_once(engine: Engine) -> None:
    with engine.begin() as conn:
        wire.defer(conn, SCOPE)
        driver_conn = conn.connection.driver_connection
        assert isinstance(driver_conn, psycopg.Connection)
        row = driver_conn.execute(TENANT).fetchone()  # past SQLAlchemy: it ran already
        assert row is not None and row[0] == "acme"
