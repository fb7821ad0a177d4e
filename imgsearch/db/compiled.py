"""A search statement compiled once and run with each search's values.

SQLAlchemy runs a Select by walking it for its cache key on every execution, then binding the
values; for a search's filtered statement that walk costs more than the socket's round trip
(about 0.4 ms a search, bench/search/profile_search.py). A :class:`Compiled` keeps the statement's
SQL text and how SQLAlchemy binds each value, and runs it on psycopg's connection with the
statements before it (:mod:`imgsearch.db.wire`), or with
:meth:`~sqlalchemy.engine.Connection.exec_driver_sql` where events are listened to: SQLAlchemy's
events, its error wrapping and its invalidation of broken connections stay as they were. Only for
statements whose result columns the driver returns as SQLAlchemy would (no vector columns: those
are parsed by their type).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ClauseElement, Connection, CursorResult, Dialect, Select
from sqlalchemy.sql.compiler import SQLCompiler

from imgsearch.db import wire

# module constants' statements compiled once per driver (Compiled.once)
_ONCE: dict[tuple[ClauseElement, str], Compiled] = {}


@dataclass(frozen=True)
class Compiled:
    """``sql``: the statement's text for one dialect, its constants (the model's id) written
    in; ``constants``: its own values (its literals), bound; ``processors``: how SQLAlchemy binds
    each named value (a query vector's type makes its wire form); ``order``: the parameters'
    order for a positional driver, else None."""

    sql: str
    constants: Mapping[str, Any]
    processors: Mapping[str, Callable[[Any], Any]]
    order: Sequence[str] | None

    @classmethod
    def once(cls, stmt: ClauseElement, conn: Connection) -> Compiled:
        """``stmt`` (a module's constant statement) compiled for ``conn``'s driver the first time
        it runs there, then kept."""
        key = (stmt, conn.dialect.driver)
        found = _ONCE.get(key)
        if found is None:
            found = _ONCE[key] = cls.of(stmt, conn.dialect)
        return found

    @classmethod
    def of(cls, stmt: ClauseElement, dialect: Dialect) -> Compiled:
        compiled = cast(SQLCompiler, stmt.compile(dialect=dialect))
        # a parameter without a value of its own is supplied by every run
        state = compiled.construct_expanded_state(
            {name: None for bind, name in compiled.bind_names.items() if bind.required}
        )
        escaped = compiled.escaped_bind_names
        processors = {}
        for bind, name in compiled.bind_names.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors[escaped.get(name, name)] = process
        constants = {
            name: processors[name](value) if name in processors else value
            for name, value in state.parameters.items()
        }
        order = list(state.positiontup) if compiled.positional and state.positiontup else None
        return cls(state.statement, constants, processors, order)

    def run(
        self, conn: Connection, values: Mapping[str, Any], before: Sequence[wire.Statement] = ()
    ) -> Sequence[Any]:
        """The rows of one run, ``values`` by parameter name (names the statement lacks are
        ignored, as SQLAlchemy ignores them), after the statements ``before`` in the same round
        trip where :mod:`~imgsearch.db.wire` allows."""
        return wire.rows(conn, self.bound(values), before)

    def send(self, conn: Connection, values: Mapping[str, Any]) -> None:
        """One run whose rows nobody reads (:func:`imgsearch.db.wire.send`)."""
        wire.send(conn, self.bound(values))

    def execute(self, conn: Connection, values: Mapping[str, Any]) -> CursorResult[Any]:
        """One run's result through SQLAlchemy (for a statement that returns no rows)."""
        return conn.exec_driver_sql(*self.bound(values))

    def bound(self, values: Mapping[str, Any]) -> wire.Statement:
        """The statement's SQL and its parameters for one run, as the driver takes them."""
        params = dict(self.constants)
        processors = self.processors
        for name, value in values.items():
            if name in params:
                process = processors.get(name)
                params[name] = value if process is None else process(value)
        if self.order is not None:
            return self.sql, tuple(params[name] for name in self.order)
        return self.sql, params


class Statements:
    """Statements built once per key (the shape of a search: building one costs more than
    running it) and kept :class:`Compiled` for each driver, at most ``size`` of them (the cache
    starts over when full). ``compile=False`` keeps a statement as a Select, for those whose
    result columns only a Select's execution parses (vectors)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._kept: dict[tuple[Any, ...], Select[Any] | Compiled] = {}

    def run(
        self,
        conn: Connection,
        key: tuple[Any, ...] | None,
        build: Callable[[], Select[Any]],
        params: Mapping[str, Any],
        *,
        compile: bool = True,
        before: Sequence[wire.Statement] = (),
    ) -> Sequence[Any]:
        """The rows of the statement kept for ``key`` (built by ``build`` the first time), run
        with ``params`` after the statements ``before`` (:meth:`Compiled.run`); a None key (a
        ``where=`` makes each search's statement its own) builds and runs it once."""
        if key is None:
            _send_all(conn, before)
            return conn.execute(build(), params).all()
        key = (conn.dialect.driver, *key)
        found = self._kept.get(key)
        if found is None:
            if len(self._kept) >= self.size:
                self._kept.clear()
            stmt = build()
            found = self._kept[key] = Compiled.of(stmt, conn.dialect) if compile else stmt
        if isinstance(found, Compiled):
            return found.run(conn, params, before)
        _send_all(conn, before)
        return conn.execute(found, params).all()


def _send_all(conn: Connection, statements: Sequence[wire.Statement]) -> None:
    """``statements`` before a statement that runs as a Select (one round trip each)."""
    for statement in statements:
        wire.send(conn, statement)
