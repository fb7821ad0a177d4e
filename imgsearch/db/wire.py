"""A search's statements sent on psycopg's own connection, several in one round trip.

SQLAlchemy's execution of a statement (an execution context, a cursor result, its rows) costs
about 80 us of Python, and each statement waited for its answer before the next went: a shop's
search was 5 round trips (BEGIN, its scope, the settings, the statement, COMMIT) and a third of
its Python went to SQLAlchemy (bench/search/profile_search.py). When the connection is psycopg 3's
and nothing listens to the engine's cursor events, :func:`rows` sends a statement on psycopg's
connection in one pipeline with the statements queued before it (a search's settings): all sent,
then the pipeline's Sync, before the first answer is read (see "Round trips" below), each in
PostgreSQL's own form (``$1, $2, ...``: :func:`postgres_form`, converted once per SQL text; psycopg
would parse a text longer than 4096 characters for its placeholders at every execution). Its rows
come back as named tuples (a column by its name, as a SQLAlchemy row gives it), its errors as
SQLAlchemy's (:class:`sqlalchemy.exc.DBAPIError`, a broken connection invalidated, as SQLAlchemy
does).

A statement that only sets this transaction's settings (a shop's row-level security scope) may be
:func:`defer`-red to the round trip of the next statement, whichever way that one runs: through
:func:`rows` or :func:`send` it takes it into its pipeline; through SQLAlchemy on that connection,
it runs it first (the connection is a :class:`Deferring` one, from :func:`begin`; not a listener on
the engine, which would make each of its connections dispatch events: 12 us a search). No
statement of the transaction runs without it.

Otherwise (another driver, a Citus coordinator, whose settings are commands it propagates, or a
listener on ``before_cursor_execute``, ``after_cursor_execute`` or ``handle_error``: tracing, a
test's recorder) each statement runs through SQLAlchemy, one after the other: the same statements,
in the same order, so a listener sees every one.

**Round trips.** On psycopg's connection, a transaction from :func:`begin` is begun by wire itself
(psycopg's connection in autocommit for the block, restored after it), not by psycopg, which syncs
its ``BEGIN`` alone: the first pipeline starts with ``BEGIN``, and its answers are read after the
pipeline's Sync, so a pipeline is one round trip; then the ``COMMIT``. ``begin(engine, alone=True)``
(a search whose statements each give an answer of their own: no hits, counts or facets put together
from two of them) sends its first statement as a transaction of its own: with its scope and
settings, before one Sync, which ends it (PostgreSQL's implicit transaction; ``set_config(...,
true)`` lasts until then), so a search of one statement is one round trip, no ``BEGIN`` nor
``COMMIT``. A statement after it (a far filter's second pass) begins one transaction for the rest
of the block, with the scope and settings the first one had, sent again. Statements through
SQLAlchemy on that connection run in that transaction too: the first one begins it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row, tuple_row
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from imgsearch.db import citus

Params = Mapping[str, Any] | Sequence[Any]
Statement = tuple[str, Params]  # SQL in the driver's parameter style, and its values
BEGIN: Statement = ("BEGIN", ())
_IDLE = TransactionStatus.IDLE
_UNASKED = object()


class Deferring(Connection):
    """A connection (:func:`begin`) that can :func:`defer` statements: whatever runs its
    transaction's next statement sends them first. :func:`rows` and :func:`send` take them into
    their pipeline; SQLAlchemy's own execution on it (a Select, text, the ORM's, a Sequence's next
    value) runs them first, in order, one by one (a listener on the engine sees them). Those of a
    transaction that ended before a statement came are dropped, never sent in the next one."""

    _deferred: tuple[Any, list[Statement]] | None = None  # (the transaction, its statements)
    # psycopg's connection while wire begins this block's transaction itself (begin())
    _raw: psycopg.Connection[Any] | None = None
    _alone = False  # the next pipeline may be a transaction of its own (begin(alone=True))
    _carried: Sequence[Statement] = ()  # what that one set (scope, settings): sent again with BEGIN
    _driver: Any = _UNASKED  # driver()'s answer when the block began (begin())

    def _pending(self) -> list[Statement] | None:
        """The statements deferred in this transaction (None when none were, or only in one that
        has ended)."""
        deferred = self._deferred
        return deferred[1] if deferred is not None and deferred[0] is self.get_transaction() else None

    def _take_deferred(self) -> list[Statement]:
        """The statements deferred in this transaction, taken."""
        pending, self._deferred = self._pending(), None
        return pending or []

    def _defer(self, statement: Statement) -> None:
        pending = self._pending()
        if pending is None:
            pending = []
            self._deferred = (self.get_transaction(), pending)
        pending.append(statement)

    def _send_deferred(self) -> None:
        """The deferred statements through SQLAlchemy, before the one it is about to execute
        (wire's transaction begun first, in their round trip, when it hasn't been)."""
        raw = self._raw
        if raw is not None and raw.pgconn.transaction_status == _IDLE:
            self._alone = False
            _pipelined(self, raw, [BEGIN, *self._carried, *self._take_deferred()])
            return
        for sql, params in self._take_deferred():
            self.exec_driver_sql(sql, params)

    def _framed(self, statements: list[Statement], fetch: bool) -> list[Statement]:
        """``statements`` (the last one's rows read when ``fetch``), framed for wire's own
        transaction: in the one open, else after ``BEGIN`` and what an earlier transaction of its
        own set, unless they may be one of their own (``begin(alone=True)``, the block's first
        pipeline)."""
        assert self._raw is not None
        if self._raw.pgconn.transaction_status != _IDLE:
            return statements
        alone, self._alone = self._alone, False
        if alone and fetch:
            self._carried = statements[:-1]  # the scope and the settings (rows nobody reads)
            return statements
        return [BEGIN, *self._carried, *statements]

    def _execute_context(self, *args: Any, **kwargs: Any) -> Any:
        self._send_deferred()
        return super()._execute_context(*args, **kwargs)

    def _execute_default(self, *args: Any, **kwargs: Any) -> Any:
        self._send_deferred()
        return super()._execute_default(*args, **kwargs)


@contextmanager
def begin(engine: Engine, *, alone: bool = False) -> Iterator[Connection]:
    """``engine.begin()`` on a :class:`Deferring` connection: a transaction, committed at the end
    of the block (rolled back on an error), whose statements may be :func:`defer`-red. When
    nothing listens to the engine's connections (nor to every connection's), the connection
    doesn't join the engine's event dispatch, as it otherwise does to find none (8 us a search).
    On psycopg's connection wire begins the transaction itself, in the first pipeline's round
    trip; ``alone``: the first pipeline is a transaction of its own (see above)."""
    listened = engine._has_events or Deferring._has_events
    conn = Deferring(engine, _has_events=None if listened else False)
    with conn:
        found = conn._driver = driver(conn)
        if conn.in_transaction():  # the engine's first block asked whether it is a Citus coordinator
            conn.commit()
        raw, was = None, False
        try:
            with conn.begin():
                if found is not None and found.pgconn.transaction_status == _IDLE:
                    # no BEGIN of psycopg's, synced alone: wire's goes in the first pipeline
                    raw, was = found, found.autocommit
                    found.autocommit = True
                    conn._raw, conn._alone = raw, alone
                yield conn
        finally:
            conn._driver = _UNASKED
            if raw is not None:  # committed or rolled back: psycopg's connection as it was
                conn._raw, conn._alone, conn._carried = None, False, ()
                _restore(conn, raw, was)


def _restore(conn: Connection, raw: psycopg.Connection[Any], autocommit: bool) -> None:
    """psycopg's connection back in its own mode, its transaction ended (committed or rolled
    back); one that can't be (broken, or a transaction left open) is dropped from the pool."""
    if raw.closed:
        return
    try:
        if raw.pgconn.transaction_status != _IDLE:
            status = TransactionStatus(raw.pgconn.transaction_status).name
            raise psycopg.ProgrammingError(f"transaction {status} at the end of the block")
        raw.autocommit = autocommit
    except psycopg.Error as exc:
        conn.invalidate(exc)


def defer(conn: Connection, statement: Statement) -> None:
    """Send ``statement`` (its rows unread) with the next statement of ``conn``'s transaction, in
    its round trip; now, when ``conn`` can't defer it (not from :func:`begin`, or :func:`driver`
    says no)."""
    raw = driver(conn)
    if raw is None or not isinstance(conn, Deferring):
        _sent(conn, raw, [statement])
        return
    _begun(conn)
    conn._defer(statement)


def deferred(conn: Connection) -> list[Statement]:
    """The statements deferred on ``conn`` in its transaction, not yet sent (for a profiler)."""
    return list((conn._pending() if isinstance(conn, Deferring) else None) or ())


def driver(conn: Connection) -> psycopg.Connection[Any] | None:
    """psycopg's connection under ``conn`` when statements may go to it directly (see above);
    None: through SQLAlchemy. A connection from :func:`begin` keeps the answer it had when its block
    began (a listener added in the block doesn't move its statements off the pipeline), while
    psycopg's connection is open."""
    known: Any = conn._driver if isinstance(conn, Deferring) else _UNASKED
    if known is None or (known is not _UNASKED and not known.closed):  # closed: SQLAlchemy's error below
        return cast("psycopg.Connection[Any] | None", known)
    if conn.dialect.driver != "psycopg":
        return None
    # the engine's listeners (a search's connections are its own, taken from the engine); a
    # connection's joined dispatch would make an object per event asked
    dispatch = conn.engine.dispatch
    if dispatch.before_cursor_execute or dispatch.after_cursor_execute or conn.dialect.dispatch.handle_error:
        return None
    if citus.on_coordinator(conn):
        return None
    found = conn.connection.driver_connection
    return found if isinstance(found, psycopg.Connection) else None


def rows(conn: Connection, statement: Statement, before: Sequence[Statement] = ()) -> Sequence[Any]:
    """The rows of ``statement``, sent after ``before`` (statements whose rows nobody reads),
    in the caller's transaction: in one round trip on psycopg's connection when :func:`driver`
    allows, else through SQLAlchemy one by one."""
    found = _sent(conn, driver(conn), [*before, statement], fetch=True)
    assert found is not None
    return found


def send(conn: Connection, statement: Statement) -> None:
    """Run ``statement`` (its rows unread) in the caller's transaction, as :func:`rows` does."""
    _sent(conn, driver(conn), [statement])


def _sent(
    conn: Connection, raw: psycopg.Connection[Any] | None, statements: Sequence[Statement], fetch: bool = False
) -> Sequence[Any] | None:
    """``statements`` run in order on ``raw`` (psycopg's connection under ``conn``), in one
    pipeline after those deferred on ``conn``; through SQLAlchemy when ``raw`` is None (the
    deferred go first there too: :class:`Deferring`). With ``fetch``: the last one's rows."""
    *before, last = statements
    if raw is None:
        for sql, params in before:
            conn.exec_driver_sql(sql, params)
        result = conn.exec_driver_sql(*last)
        return result.all() if fetch else None
    _begun(conn)
    sent = list(statements)
    if isinstance(conn, Deferring):
        sent = [*conn._take_deferred(), *sent]
        if conn._raw is raw:
            sent = conn._framed(sent, fetch)
    return _pipelined(conn, raw, sent, fetch)


def _pipelined(
    conn: Connection, raw: psycopg.Connection[Any], sent: Sequence[Statement], fetch: bool = False
) -> Sequence[Any] | None:
    """``sent`` in one pipeline on ``raw``, in one round trip: their answers read after its Sync
    (read inside it, they would wait once more, for the Sync's); with ``fetch``, the last one's
    rows."""
    *before, last = sent
    try:
        with raw.pipeline():
            for statement in before:
                _execute(raw, statement)
            cursor = _execute(raw, last, fetch)
        return cursor.fetchall() if fetch else None
    except psycopg.Error as exc:
        raise _wrapped(conn, sent, exc) from exc


def _execute(raw: psycopg.Connection[Any], statement: Statement, fetch: bool = False) -> psycopg.Cursor[Any]:
    """``statement`` run on a cursor of its own (its rows as named tuples when ``fetch``), in
    PostgreSQL's own form where :func:`postgres_form` has one."""
    sql, params = statement
    factory = namedtuple_row if fetch else tuple_row
    form = postgres_form(statement)
    cursor: psycopg.Cursor[Any]
    if form is None:
        cursor = raw.cursor(row_factory=factory)
        cursor.execute(sql, params, prepare=_prepare(sql))
    else:
        cursor = psycopg.RawCursor(raw, row_factory=factory)
        cursor.execute(*form, prepare=_prepare(sql))
    return cursor


# psycopg's placeholders: %(name)s or %s (%b, %t: a format asked for), %% a percent sign; any
# other % (one at the end included) is psycopg's to refuse
_PLACEHOLDER = re.compile(r"%(?:\((?P<name>[^)]*)\))?(?P<kind>.|$)", re.DOTALL)
Form = tuple[str, "tuple[str, ...] | int"]  # SQL with $n, and the parameters' names in order (or how many)
FORMS_KEPT = 1000  # distinct SQL texts remembered (a search sends a few per filter shape)


def postgres_form(statement: Statement) -> tuple[str, Sequence[Any] | None] | None:
    """``statement`` (SQL in psycopg's parameter style, and its values) in PostgreSQL's own form,
    for a :class:`psycopg.RawCursor`: ``$1, $2, ...`` and the values in their order. Each SQL text
    is converted once and remembered (:func:`_converted`): psycopg parses the text of every
    execution for its placeholders and remembers only texts up to 4096 characters, which a
    filtered search's statement passes (0.19 ms a search at 100k rows,
    bench/search/search_overheads.py). None where psycopg must convert it: a format asked for
    (``%b``, ``%t``), placeholders of both kinds, values that don't fit them (psycopg's error then
    says so)."""
    sql, params = statement
    if params is None:
        return sql, None
    form = _converted(sql)
    if form is None:
        return None
    text, names = form
    if isinstance(names, int):  # positional, or none at all (settings: no values, as ``{}``)
        if not names and not params:
            return text, None
        if isinstance(params, Mapping) or len(params) != names:
            return None
        return text, params
    if not isinstance(params, Mapping):
        return None
    try:
        return text, [params[name] for name in names]
    except KeyError:
        return None


@functools.lru_cache(maxsize=FORMS_KEPT)
def _converted(sql: str) -> Form | None:
    """``sql`` with ``$n`` for its placeholders, and the parameters' names in their order (or how
    many positional ones it takes); None when psycopg must convert it itself."""
    names: dict[str, int] = {}
    positional = 0
    convertible = True

    def placeholder(found: re.Match[str]) -> str:
        nonlocal positional, convertible
        name, kind = found.group("name"), found.group("kind")
        if kind == "%" and name is None:
            return "%"
        if kind != "s":
            convertible = False
            return ""
        if name is None:
            positional += 1
            return f"${positional}"
        return f"${names.setdefault(name, len(names) + 1)}"

    text = _PLACEHOLDER.sub(placeholder, sql)
    if not convertible or (names and positional):
        return None
    return text, tuple(names) if names else positional


def _prepare(sql: str) -> bool | None:
    """psycopg's prepared statement for ``sql``: its own choice (None), never for ``BEGIN``."""
    return False if sql == BEGIN[0] else None


def _begun(conn: Connection) -> None:
    """SQLAlchemy's transaction begun, as its own execution begins it ("autobegin"): so that its
    commit or rollback ends the one psycopg begins."""
    if not conn.in_transaction():
        conn.begin()


def _wrapped(conn: Connection, sent: Sequence[Statement], exc: psycopg.Error) -> DBAPIError:
    """``exc`` as SQLAlchemy raises a driver's error, naming the statements of its round trip
    (the one that failed is among them: a pipeline answers each after it); a connection that
    broke is invalidated (the pool replaces it), and the error says so, as SQLAlchemy's does."""
    dialect = conn.dialect
    disconnect = dialect.is_disconnect(cast(Any, exc), conn.connection, None)
    if disconnect:
        conn.invalidate(exc)
    wrapped = DBAPIError.instance(
        ";\n".join(sql for sql, _ in sent),
        sent[-1][1] if len(sent) == 1 else [params for _, params in sent],
        exc,
        psycopg.Error,
        hide_parameters=conn.engine.hide_parameters,
        connection_invalidated=disconnect,
        dialect=dialect,
    )
    return cast(DBAPIError, wrapped)
