"""``imgsearch tenant``: SQL console logins and HTTP API keys, each bound to one tenant."""

from __future__ import annotations

import argparse
import sys

from imgsearch.cli._common import Subparsers, open_engine
from imgsearch.errors import InvalidInput
from imgsearch.settings import Settings


def _create_login(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.access import tenancy
    from imgsearch.db import engine, migrate

    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    eng = engine.make_engine(engine.resolve_url(settings))
    try:
        migrate.upgrade(eng)
        made = tenancy.create_login(eng, args.login, args.tenant, password)
    finally:
        eng.dispose()
    print(f"created login {args.login!r}, restricted to tenant {args.tenant!r}")
    if password is None:
        print("its password, shown once (psql asks for it):")
        print(made)
    return 0


def _create_key(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.access import keys

    if args.admin == (args.tenant is not None):
        raise InvalidInput("give a TENANT for a tenant's key, or --admin for an admin key (not both)")
    eng = open_engine(settings)
    try:
        key, info = keys.create_key(eng, args.tenant, admin=args.admin, name=args.name)
    finally:
        eng.dispose()
    whom = "every tenant (admin)" if info.admin else f"tenant {info.tenant!r}"
    print(f"created key {info.key_id} for {whom}; it is shown this once: store it now")
    print(key)  # alone on the last line, for scripts: KEY=$(imgsearch tenant create-key acme | tail -1)
    return 0


def _list_keys(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.access import keys

    eng = open_engine(settings)
    try:
        rows = keys.list_keys(eng, tenant=args.tenant, revoked=args.all)
    finally:
        eng.dispose()
    if not rows:
        print("no keys")
        return 0
    table = [("key id", "tenant", "name", "created", "revoked")]
    for row in rows:
        table.append(
            (
                row.key_id,
                "(admin)" if row.admin else str(row.tenant),
                row.name or "-",
                f"{row.created_at:%Y-%m-%d %H:%M}",
                f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "-",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def _revoke_key(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.access import keys

    eng = open_engine(settings)
    try:
        info = keys.revoke_key(eng, args.key)
    finally:
        eng.dispose()
    print(f"revoked key {info.key_id} ({'admin' if info.admin else f'tenant {info.tenant!r}'})")
    return 0


def register(commands: Subparsers) -> None:
    tenant = commands.add_parser(
        "tenant",
        help="tenant isolation: SQL console logins and HTTP API keys",
        description="Manage PostgreSQL logins and HTTP API keys bound to one tenant.",
    )
    tenant_commands = tenant.add_subparsers(dest="tenant_command", required=True, metavar="COMMAND")
    login = tenant_commands.add_parser(
        "create-login",
        help="create a PostgreSQL login that sees one tenant only",
        description="Create a PostgreSQL login for a SQL console (psql) that row-level security "
        "restricts to one tenant.",
    )
    login.add_argument("login", help="login name: lowercase letters, digits, underscores")
    login.add_argument("--tenant", required=True, help="the only tenant the login may see")
    login.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the login's password from stdin (default: make one and print it once)",
    )
    login.set_defaults(func=_create_login)

    create_key = tenant_commands.add_parser(
        "create-key",
        help="create an HTTP API key for one tenant (or --admin)",
        description="Create a key for `imgsearch serve`: requests with `Authorization: Bearer KEY` "
        "see and change TENANT's images only (row-level security), or every tenant's with --admin. "
        "The key is printed once, alone on the last line; the database keeps only its digest.",
    )
    create_key.add_argument("tenant", nargs="?", help="the tenant the key is bound to")
    create_key.add_argument("--admin", action="store_true", help="a key for every tenant (no TENANT)")
    create_key.add_argument("--name", help="what the key is for, shown by list-keys (e.g. 'checkout')")
    create_key.set_defaults(func=_create_key)

    list_keys = tenant_commands.add_parser(
        "list-keys",
        help="list HTTP API keys (never their secrets)",
        description="List API keys by id, tenant and name; revoked keys too with --all.",
    )
    list_keys.add_argument("--tenant", help="only this tenant's keys")
    list_keys.add_argument("--all", action="store_true", help="include revoked keys")
    list_keys.set_defaults(func=_list_keys)

    revoke_key = tenant_commands.add_parser(
        "revoke-key",
        help="revoke an HTTP API key at once",
        description="Revoke a key, named by its id (from list-keys) or the whole key; requests with "
        "it fail with 401 from the next one on. Exit 3 when there is no such key.",
    )
    revoke_key.add_argument("key", metavar="KEY_ID", help="the key's id, or the whole key")
    revoke_key.set_defaults(func=_revoke_key)
