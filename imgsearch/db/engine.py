"""Engines: which database to talk to, and a check that it has what imgsearch needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text
from sqlalchemy.exc import ArgumentError, OperationalError

from imgsearch.db import embedded
from imgsearch.errors import ConfigurationError, DatabaseUnavailable, InvalidInput
from imgsearch.settings import Settings

MIN_PGVECTOR = (0, 8)
CONNECT_ARGS = {"connect_timeout": 10}  # seconds: an unreachable server fails fast
DEFAULT_POOL_SIZE: int = Settings.model_fields["pool_size"].default
# long work on a connection of its own (an index build, an import, a wait for a lock) stops within
# this many milliseconds once its client is gone (killed, its machine lost) rather than running on
# for minutes with its locks held: PostgreSQL checks the socket while a statement runs (14+)
GONE_CLIENT_CHECK_MS = 5000
GONE_CLIENT_CHECK = "SELECT set_config('client_connection_check_interval', %s, %s)"


def normalize_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(f"imgsearch needs PostgreSQL, got a {parsed.get_backend_name()!r} URL")
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_conninfo(url: URL) -> str:
    """A libpq connection string (for psycopg directly) for a SQLAlchemy URL of PostgreSQL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def connect(url: URL, what: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A psycopg connection of its own to ``url``'s database, for long work (its statements stop
    once the client is gone: :data:`GONE_CLIENT_CHECK_MS`); :class:`DatabaseUnavailable` naming
    ``what`` ("to build the index") when the server can't be reached."""
    try:
        conn = psycopg.connect(libpq_conninfo(url), autocommit=True, connect_timeout=CONNECT_ARGS["connect_timeout"])
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL {what}: {exc}") from exc
    try:
        conn.execute(GONE_CLIENT_CHECK, (str(GONE_CLIENT_CHECK_MS), False))
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


def apply_settings(conn: psycopg.Connection[Any], settings: Mapping[str, str], *, local: bool = False) -> None:
    """Set each of ``settings`` (server settings a caller chose, as ``maintenance_work_mem``) on
    ``conn``'s session, or its transaction with ``local``; :class:`InvalidInput` naming the one
    the server refuses, as it gives the reason."""
    for setting, value in settings.items():
        try:
            conn.execute("SELECT set_config(%s, %s, %s)", (setting, value, local))
        except psycopg.Error as exc:
            raise InvalidInput(f"{setting} can't be {value!r}: {str(exc).strip().splitlines()[0]}") from exc


def stop_when_client_gone(conn: Connection, *, local: bool = False) -> None:
    """The same check for long work on a connection of SQLAlchemy's: for its session, or with
    ``local`` for its transaction."""
    conn.exec_driver_sql(GONE_CLIENT_CHECK, (str(GONE_CLIENT_CHECK_MS), local))


def libpq_uri(url: str) -> str:
    """``url`` (a SQLAlchemy URL, as ``imgsearch db url`` prints it) as a libpq URI: what psql and
    every other libpq client take (``postgresql://user@/db?host=/socket/dir``)."""
    return libpq_conninfo(make_url(normalize_url(url)))


def resolve_url(settings: Settings) -> str:
    """``IMGSEARCH_DATABASE_URL`` when set, else the embedded server (started if needed)."""
    if settings.database_url:
        return normalize_url(settings.database_url)
    return embedded.ensure_started(settings.home)


def connect_args(lock_timeout_ms: int = 0) -> dict[str, Any]:
    """psycopg's connection arguments: the connect timeout and, when not 0, a ``lock_timeout``."""
    if not lock_timeout_ms:
        return dict(CONNECT_ARGS)
    return {**CONNECT_ARGS, "options": f"-c lock_timeout={int(lock_timeout_ms)}"}


def make_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE, lock_timeout_ms: int = 0) -> Engine:
    """An engine for ``url`` that fails fast with :class:`DatabaseUnavailable` when unreachable,
    keeping up to ``pool_size`` idle connections (and opening as many more, at least 10, which
    are closed when they come back to a full pool). With ``lock_timeout_ms``, a statement waiting
    longer than that for a lock fails (PostgreSQL's ``lock_timeout``)."""
    engine = create_engine(
        normalize_url(url),
        pool_pre_ping=True,
        connect_args=connect_args(lock_timeout_ms),
        pool_size=pool_size,
        max_overflow=max(10, pool_size),
    )
    check_server(engine)
    return engine


def make_search_engine(
    engine: Engine, pool_size: int = DEFAULT_POOL_SIZE, lock_timeout_ms: int = 0
) -> Engine:
    """A second pool on ``engine``'s database, for searches: no ping before each checkout. The
    ping is a round trip of its own, 3-9% of a search (bench/search/search_overheads.py); a search is
    read-only, so the catalog runs one again on a new connection when its connection turns out
    closed (a server restart, an idle timeout) instead. Writes keep the pinged pool."""
    return create_engine(
        engine.url,
        connect_args=connect_args(lock_timeout_ms),
        pool_size=pool_size,
        max_overflow=max(10, pool_size),
    )


def make_replica_engine(url: str, pool_size: int = DEFAULT_POOL_SIZE, lock_timeout_ms: int = 0) -> Engine:
    """A search pool on a hot standby: like :func:`make_search_engine`, and not checked when made
    (a replica that is down when the catalog opens joins the rotation when it comes up)."""
    return create_engine(
        normalize_url(url),
        connect_args=connect_args(lock_timeout_ms),
        pool_size=pool_size,
        max_overflow=max(10, pool_size),
    )


def _version(text_version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text_version.split(".")[:2] if part.isdigit())


def check_server(engine: Engine) -> None:
    """Raise unless the server is reachable and offers pgvector >= 0.8."""
    try:
        with engine.connect() as conn:
            available = conn.execute(
                text("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'")
            ).scalar()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL at {engine.url.render_as_string()}: {reason}"
        ) from exc
    where = engine.url.render_as_string()
    if available is None:
        raise ConfigurationError(
            f"PostgreSQL at {where} has no pgvector extension; imgsearch needs pgvector >= 0.8 "
            "(unset IMGSEARCH_DATABASE_URL to use the embedded server, which ships it)"
        )
    if _version(str(available)) < MIN_PGVECTOR:
        raise ConfigurationError(f"PostgreSQL at {where} has pgvector {available}; imgsearch needs >= 0.8")


def read_only(conn: Connection) -> bool:
    """Whether ``conn``'s transaction can't write (a standby's, or one begun read-only)."""
    return bool(conn.execute(text("SELECT current_setting('transaction_read_only') = 'on'")).scalar_one())
