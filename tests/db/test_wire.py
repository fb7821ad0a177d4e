"""imgsearch.db.wire: statements sent on psycopg's connection give what SQLAlchemy gives (rows,
errors, a broken connection invalidated), deferred ones run before the next statement whichever
way it goes, and anything listening to the statements turns it off (a block asks once, at its start, until
its connection breaks). A block of :func:`wire.begin`
is one transaction, begun in its first round trip; with ``alone``, its first pipeline is one of
its own and the rest one more, with what the first set; psycopg's connection is left as it was.
Statements go in PostgreSQL's own form (``$n``), each SQL text converted once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Connection, Engine, Sequence, create_engine, event, func, select, text
from sqlalchemy.exc import DataError, DBAPIError, PendingRollbackError
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


def test_statements_go_in_postgres_own_form_converted_once() -> None:
    """psycopg parses a statement's text for its placeholders at every execution (and remembers
    only texts up to 4096 characters): wire converts each text once, to ``$n``."""
    named = "SELECT %(a)s, %(b)s, %(a)s || '%%', 'x %%(a)s'"
    assert wire.postgres_form((named, {"b": 2, "a": 1, "unused": 3})) == (
        "SELECT $1, $2, $1 || '%', 'x %(a)s'", [1, 2]
    )
    assert wire.postgres_form(("SELECT %s, %s", (1, 2))) == ("SELECT $1, $2", (1, 2))
    assert wire.postgres_form(("SELECT '100%%'", {})) == ("SELECT '100%'", None)  # a settings' statement
    assert wire.postgres_form(("SELECT '100%'", None)) == ("SELECT '100%'", None)  # no values: as it is
    # psycopg's to convert, and to refuse: a format asked for, both kinds, values that don't fit
    for statement in [
        ("SELECT %(a)b", {"a": 1}),
        ("SELECT %(a)s, %s", {"a": 1}),
        ("SELECT %(a)s", {}),
        ("SELECT %(a)s", (1,)),
        ("SELECT %s, %s", (1,)),
        ("SELECT %s", {"a": 1}),
        ("SELECT 7 %", {}),
        ("SELECT %(a)", {"a": 1}),
        ("SELECT %d", (1,)),
    ]:
        assert wire.postgres_form(statement) is None, statement
    first, again = (wire.postgres_form((named, {"a": 1, "b": 2})) for _ in range(2))
    assert first is not None and again is not None and first[0] is again[0]  # converted once, remembered


def test_a_long_statement_gives_the_rows_sqlalchemy_gives(engine: Engine) -> None:
    """A statement past psycopg's 4096 characters, its placeholders repeated and a percent sign
    among them, gives through wire what it gives through SQLAlchemy; a value missing is psycopg's
    error, as SQLAlchemy raises it."""
    columns = ", ".join(f"%(tenant)s || '%%' || n || '-{i}' AS c{i}" for i in range(120))
    long = (f"SELECT n, {columns} FROM generate_series(1, %(most)s) AS n", {"tenant": "o'brien", "most": 2})
    assert len(long[0]) > 4096
    with engine.begin() as conn:
        direct = [tuple(r) for r in wire.rows(conn, long, before=[SCOPE])]
        through = [tuple(r) for r in conn.exec_driver_sql(*long)]
        assert direct == through and direct[1][:2] == (2, "o'brien%2-0")
    with engine.begin() as conn, pytest.raises(DBAPIError, match="most"):
        wire.rows(conn, (long[0], {"tenant": "acme"}))


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


SETTING = ("SELECT set_config('work_mem', '7MB', true)", {})
SEEN = (
    "SELECT current_setting('imgsearch.tenant', true) AS tenant, current_setting('work_mem') AS work_mem, "
    "pg_current_xact_id()::text AS xid",
    {},
)


def test_a_block_is_one_transaction_begun_in_its_first_round_trip(engine: Engine) -> None:
    with wire.begin(engine) as conn:
        raw = wire.driver(conn)
        assert raw is not None
        wire.defer(conn, SCOPE)
        first = wire.rows(conn, SEEN, [SETTING])[0]
        assert (first.tenant, first.work_mem) == ("acme", "7MB")
        assert raw.pgconn.transaction_status == TransactionStatus.INTRANS  # its BEGIN went with them
        assert tuple(wire.rows(conn, SEEN)[0]) == tuple(first)  # the same transaction
        assert tuple(conn.execute(text(SEEN[0])).one()) == tuple(first)  # SQLAlchemy's too
    assert raw.pgconn.transaction_status == TransactionStatus.IDLE  # committed
    assert raw.autocommit is False  # psycopg's connection as the pool lent it
    with engine.begin() as conn:  # and psycopg's own transactions on it again
        assert conn.connection.driver_connection is raw
        conn.exec_driver_sql("SELECT set_config('work_mem', '9MB', true)")
        assert conn.exec_driver_sql("SHOW work_mem").scalar() == "9MB"
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW work_mem").scalar() != "9MB"


@pytest.mark.parametrize("then", ["wire", "sqlalchemy"])
def test_alone_the_first_pipeline_is_a_transaction_of_its_own_the_rest_one_with_what_it_set(
    engine: Engine, then: str
) -> None:
    with wire.begin(engine, alone=True) as conn:
        raw = wire.driver(conn)
        assert raw is not None
        wire.defer(conn, SCOPE)
        first = wire.rows(conn, SEEN, [SETTING])[0]
        assert (first.tenant, first.work_mem) == ("acme", "7MB")
        assert raw.pgconn.transaction_status == TransactionStatus.IDLE  # its Sync ended it
        # the next statement begins one transaction for the rest, the scope and setting sent again
        second = wire.rows(conn, SEEN)[0] if then == "wire" else conn.execute(text(SEEN[0])).one()
        assert (second.tenant, second.work_mem) == ("acme", "7MB")
        assert second.xid != first.xid
        assert raw.pgconn.transaction_status == TransactionStatus.INTRANS
        assert tuple(wire.rows(conn, SEEN)[0]) == tuple(second)
    assert raw.autocommit is False and raw.pgconn.transaction_status == TransactionStatus.IDLE
    with wire.begin(engine, alone=True) as conn:  # nothing carried over from the last block
        fresh = wire.rows(conn, SEEN)[0]
        assert fresh.tenant in (None, "") and fresh.work_mem != "7MB"


@pytest.mark.parametrize(("alone", "failing"), [(False, 1), (True, 1), (True, 2)])
def test_an_error_ends_the_transaction_and_leaves_the_connection_as_it_was(
    engine: Engine, alone: bool, failing: int
) -> None:
    with pytest.raises(DataError, match="division by zero"), wire.begin(engine, alone=alone) as conn:
        raw = wire.driver(conn)
        assert raw is not None
        wire.defer(conn, SCOPE)
        if failing == 2:
            assert wire.rows(conn, SEEN)[0].tenant == "acme"
        wire.rows(conn, ("SELECT 1 / %(zero)s AS n", {"zero": 0}))
    assert not raw.closed and raw.autocommit is False
    assert raw.pgconn.transaction_status == TransactionStatus.IDLE  # rolled back
    with wire.begin(engine, alone=alone) as conn:  # the pool's connection serves the next block
        assert wire.driver(conn) is raw
        assert wire.rows(conn, SEEN)[0].tenant in (None, "")


def test_an_autocommit_engines_block_is_one_transaction_too(database_url: str) -> None:
    """On an engine in autocommit (``isolation_level="AUTOCOMMIT"``) a block's statements are still
    one transaction: a setting sent alone holds for the statement after it; the connection goes
    back in autocommit."""
    auto = create_engine(database_url, pool_size=1, max_overflow=0, isolation_level="AUTOCOMMIT")
    try:
        for alone in (False, True):
            with wire.begin(auto, alone=alone) as conn:
                raw = wire.driver(conn)
                assert raw is not None and raw.autocommit is True
                wire.send(conn, SCOPE)
                wire.send(conn, SETTING)
                seen = wire.rows(conn, SEEN)[0]
                assert (seen.tenant, seen.work_mem) == ("acme", "7MB")
                assert tuple(conn.execute(text(SEEN[0])).one()) == tuple(seen)
            assert raw.autocommit is True and raw.pgconn.transaction_status == TransactionStatus.IDLE
    finally:
        auto.dispose()


def test_a_block_keeps_the_way_it_began_with_until_its_connection_breaks(engine: Engine) -> None:
    listener = lambda *args: None  # noqa: E731
    with wire.begin(engine) as conn:
        raw = wire.driver(conn)
        assert raw is not None
        event.listen(engine, "before_cursor_execute", listener)  # asked once a block, at its start
        assert wire.driver(conn) is raw
        pid = wire.rows(conn, ("SELECT pg_backend_pid() AS pid", {}))[0].pid
    with wire.begin(engine) as conn:  # the next block asks again
        assert wire.driver(conn) is None
    event.remove(engine, "before_cursor_execute", listener)
    with pytest.raises(PendingRollbackError), wire.begin(engine) as conn:
        with engine.pool._creator() as admin:  # type: ignore[attr-defined]
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DBAPIError) as raised:
            wire.rows(conn, STATEMENT)
        assert raised.value.connection_invalidated
        with pytest.raises(PendingRollbackError):  # SQLAlchemy's error, not the closed connection
            wire.driver(conn)
    with wire.begin(engine) as conn:  # a new connection, and the way asked of it
        assert wire.driver(conn) is not None
        assert wire.rows(conn, ("SELECT pg_backend_pid() AS pid", {}))[0].pid != pid
