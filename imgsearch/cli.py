"""The ``imgsearch`` command. User mistakes print one line on stderr and exit 2; transient
faults (database unreachable) exit 75 (EX_TEMPFAIL); everything else is a bug and shows its traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from imgsearch.errors import ImgSearchError, InvalidInput, NotFound, TransientError
from imgsearch.settings import Settings

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_TEMPFAIL = 75


def _db(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.db import embedded

    if args.action == "start":
        print(embedded.ensure_started(settings.home))
    elif args.action == "stop":
        print("stopped" if embedded.stop(settings.home) else "not running")
    elif args.action == "url":
        if settings.database_url:
            print(settings.database_url)
        else:
            print(embedded.ensure_started(settings.home))
    else:
        status = embedded.status(settings.home)
        where = status.pgdata
        print(f"running (pid {status.pid}) in {where}" if status.running else f"not running ({where})")
        return 0 if status.running else 1
    return 0


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.db import engine, migrate

    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng, args.revision)
        print(f"database at revision {migrate.current(eng)}")
    finally:
        eng.dispose()
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.demo import run

    return run(settings, rows=args.rows)


def _tenant(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch import tenancy
    from imgsearch.db import engine, migrate

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng)
        tenancy.create_login(eng, args.login, args.tenant, password)
    finally:
        eng.dispose()
    print(f"created login {args.login!r}, restricted to tenant {args.tenant!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgsearch", description="Postgres-native image search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    db = commands.add_parser(
        "db",
        help="manage the embedded PostgreSQL server",
        description="Start, stop or inspect the embedded PostgreSQL + pgvector server.",
    )
    db.add_argument("action", choices=["start", "stop", "status", "url"])
    db.set_defaults(func=_db)

    mig = commands.add_parser("migrate", help="upgrade the schema", description="Run imgsearch's migrations.")
    mig.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    mig.set_defaults(func=_migrate)

    tenant = commands.add_parser("tenant", help="tenant isolation", description="Manage tenant-bound logins.")
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")
    login = tenant_commands.add_parser(
        "create-login",
        help="create a PostgreSQL login that sees one tenant only",
        description="Create a PostgreSQL login for a SQL console (psql) that row-level security "
        "restricts to one tenant.",
    )
    login.add_argument("login", help="login name: lowercase letters, digits, underscores")
    login.add_argument("--tenant", required=True, help="the only tenant the login may see")
    login.add_argument("--password-stdin", action="store_true", help="read the login's password from stdin")
    login.set_defaults(func=_tenant)

    demo = commands.add_parser(
        "demo",
        help="store and search a synthetic catalog",
        description="Store synthetic bring-your-own vectors and run filtered searches.",
    )
    demo.add_argument("--rows", type=int, default=2000, help="catalog size (default 2000)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        settings = Settings()
        return func(args, settings)
    except NotFound as exc:
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (InvalidInput, ImgSearchError) as exc:
        if isinstance(exc, TransientError):
            print(f"imgsearch: {exc}", file=sys.stderr)
            return EXIT_TEMPFAIL
        print(f"imgsearch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("imgsearch: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
