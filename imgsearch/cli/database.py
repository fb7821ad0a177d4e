"""``imgsearch db`` (the embedded server) and ``imgsearch migrate``."""

from __future__ import annotations

import argparse

from imgsearch.cli._common import Subparsers, positive
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.db import embedded
    from imgsearch.db.engine import libpq_uri

    if args.action == "distribute":
        return _distribute(settings)
    if args.action == "check":
        return _check(settings)
    if args.action == "console-setup":
        return _console_setup(args, settings)
    if args.action == "start":
        print(embedded.ensure_started(settings.home))
    elif args.action == "stop":
        print("stopped" if embedded.stop(settings.home) else "not running")
    elif args.action == "url":
        if settings.database_url:
            if args.database:
                raise InvalidInput(
                    "--database names a database of the embedded server; unset IMGSEARCH_DATABASE_URL"
                )
            url = settings.database_url
        else:
            url = embedded.ensure_started(settings.home, args.database or embedded.DATABASE)
        print(libpq_uri(url) if args.psql else url)
    else:
        status = embedded.status(settings.home)
        where = status.pgdata
        print(f"running (pid {status.pid}) in {where}" if status.running else f"not running ({where})")
        return 0 if status.running else 1
    return 0


def _distribute(settings: Settings) -> int:
    from imgsearch.db import citus, engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    try:  # a fresh cluster: Citus named first (nothing written without it), then migrated, then distributed
        citus.make_coordinator(eng)
        done = migrate.upgrade(eng) or citus.distribute(eng)
    finally:
        eng.dispose()
    if done.distributed:
        print(
            f"distributed by tenant over {done.workers} workers: {', '.join(done.distributed)}; "
            f"reference tables: {', '.join(done.reference)}"
        )
    else:
        print(f"already distributed ({done.workers} workers)")
    return 0


def _check(settings: Settings) -> int:
    """Each need of imgsearch on the database, met or with the statement that meets it."""
    from imgsearch.db import engine, readiness

    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        with eng.connect() as conn:
            needs = readiness.check(conn)
    finally:
        eng.dispose()
    for need in needs:
        print(need.line())
    ready = readiness.ready(needs)
    print("ready for `imgsearch migrate`" if ready else "not ready: an administrator runs the statements above")
    return 0 if ready else 1


def _console_setup(args: argparse.Namespace, settings: Settings) -> int:
    """The loopback connection ``imgsearch.search_text`` asks workers through (docs/operations.md)."""
    from sqlalchemy import text

    from imgsearch.cli._common import open_engine

    eng = open_engine(settings)
    try:
        with eng.begin() as conn:
            made = conn.execute(
                text("SELECT imgsearch.setup_text_loopback(:host, :port)"), {"host": args.host, "port": args.port}
            ).scalar_one()
    finally:
        eng.dispose()
    print(f"text search from psql: loopback to {made}")
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from alembic.util import CommandError

    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng, args.revision)
        print(f"database at revision {migrate.current(eng)}")
    except CommandError as exc:  # an unknown revision
        raise InvalidInput(f"cannot migrate to {args.revision!r}: {exc}") from exc
    finally:
        eng.dispose()
    return 0


def register(commands: Subparsers) -> None:
    db = commands.add_parser(
        "db",
        help="manage the embedded PostgreSQL server, or distribute the catalog on Citus",
        description="Start, stop or inspect the embedded PostgreSQL + pgvector server; `check` names "
        "what the database IMGSEARCH_DATABASE_URL names lacks (privileges, extensions, versions) with the "
        "statement that grants it; `console-setup` makes the loopback connection search_text needs in psql "
        "(docs/operations.md); `distribute` migrates the catalog when behind and distributes it by tenant "
        "on a Citus coordinator (docs/scaling.md).",
    )
    db.add_argument("action", choices=["start", "stop", "status", "url", "distribute", "check", "console-setup"])
    db.add_argument(
        "--psql", action="store_true", help="url: a libpq URI, as psql and other libpq clients take it"
    )
    db.add_argument("--database", help="url: this database of the embedded server (e.g. imgsearch_demo)")
    db.add_argument(
        "--host", help="console-setup: the address search_text's loopback connects to (default: the server's own)"
    )
    db.add_argument("--port", type=positive, help="console-setup: its port (default: the server's)")
    db.set_defaults(func=_db)

    mig = commands.add_parser("migrate", help="upgrade the schema", description="Run imgsearch's migrations.")
    mig.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    mig.set_defaults(func=_migrate)
