"""The console's SQL objects as they run: one file each under ``imgsearch/db/sql/``.

Every function, trigger, view and row-level security policy that imgsearch's migrations create
has its current definition in one file, readable as written:

- ``functions/NAME.sql``: the function (its overloads, if it has several), as
  ``pg_get_functiondef`` prints it;
- ``triggers/TABLE.sql``: the table's triggers (their functions are in ``functions/``);
- ``views/NAME.sql``;
- ``policies/TABLE.sql``: the table's policies.

The files are what a database migrated from empty holds (``tests/db/test_definitions.py`` checks
it, object by object, and that each file run again changes nothing). A change to an object ships
as a migration that holds the object's whole new definition, never an edit of an earlier
migration's text: edit the file, copy it into the migration (``op.execute`` of the whole
statement; its downgrade holds the whole previous one), and run
``python -m imgsearch.db.definitions --write`` after migrating to print the file back as the
server does (docs/architecture.md, "Where a console function lives").
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from sqlalchemy import Connection, text

from imgsearch.db.base import SCHEMA

FOLDER = Path(str(resources.files("imgsearch.db") / "sql"))
SCHEMAS = (SCHEMA, "imgsearch_log")
HEADER = "-- {what}: the definition a migrated catalog runs (imgsearch/db/definitions.py)\n\n"

_FUNCTIONS = """
SELECT p.proname, pg_get_functiondef(p.oid) AS definition
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = ANY(:schemas)
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)
"""
_TRIGGERS = """
SELECT c.relname, pg_get_triggerdef(t.oid, true) AS definition
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND NOT t.tgisinternal AND t.tgparentid = 0
ORDER BY c.relname, t.tgname
"""
_VIEWS = """
SELECT c.relname, pg_get_viewdef(c.oid, true) AS definition, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY(:schemas) AND c.relkind IN ('v', 'm')
ORDER BY c.relname
"""
_POLICIES = """
SELECT tablename, policyname, permissive, roles, cmd, qual, with_check
FROM pg_policies WHERE schemaname = ANY(:schemas)
ORDER BY tablename, policyname
"""


def _function(definition: str) -> str:
    return definition.strip() + ";\n"


def _trigger(definition: str) -> str:
    return definition.replace("CREATE TRIGGER", "CREATE OR REPLACE TRIGGER", 1).strip() + ";\n"


def _view(name: str, definition: str, kind: str) -> str:
    what = "MATERIALIZED VIEW" if kind == "m" else "OR REPLACE VIEW"
    return f"CREATE {what} {SCHEMA}.{name} AS\n{definition.rstrip().rstrip(';')};\n"


def _policy(table: str, name: str, permissive: str, roles: list[str], cmd: str, qual: str | None,
            check: str | None) -> str:  # fmt: skip
    lines = [f"CREATE POLICY {name} ON {SCHEMA}.{table} AS {permissive} FOR {cmd} TO {', '.join(roles)}"]
    if qual is not None:
        lines.append(f"    USING ({qual})")
    if check is not None:
        lines.append(f"    WITH CHECK ({check})")
    return "\n".join(lines) + ";\n"


def render(conn: Connection) -> dict[str, str]:
    """Each object's file, relative path to text, as the database ``conn`` reaches defines them."""
    bound = {"schemas": list(SCHEMAS)}
    grouped: dict[str, list[str]] = {}
    for name, definition in conn.execute(text(_FUNCTIONS), bound):
        grouped.setdefault(f"functions/{name}.sql", []).append(_function(definition))
    for table, definition in conn.execute(text(_TRIGGERS), bound):
        grouped.setdefault(f"triggers/{table}.sql", []).append(_trigger(definition))
    for name, definition, kind in conn.execute(text(_VIEWS), bound):
        grouped.setdefault(f"views/{name}.sql", []).append(_view(name, definition, kind))
    for table, name, permissive, roles, cmd, qual, check in conn.execute(text(_POLICIES), bound):
        grouped.setdefault(f"policies/{table}.sql", []).append(
            _policy(table, name, permissive, list(roles), cmd, qual, check)
        )
    return {path: _file(path, statements) for path, statements in sorted(grouped.items())}


def _file(path: str, statements: list[str]) -> str:
    kind, name = path.removesuffix(".sql").split("/")
    what = {
        "functions": f"{SCHEMA}.{name}",
        "triggers": f"the triggers of {SCHEMA}.{name}",
        "views": f"{SCHEMA}.{name}",
        "policies": f"the row-level security policies of {SCHEMA}.{name}",
    }[kind]
    return HEADER.format(what=what) + "\n".join(statements)


def files(folder: Path = FOLDER) -> dict[str, str]:
    """The definitions the package ships: relative path to text."""
    return {path.relative_to(folder).as_posix(): path.read_text() for path in sorted(folder.glob("*/*.sql"))}


def run(conn: Connection, body: str) -> None:
    """Execute a definition file's whole text (all its statements) in ``conn``'s transaction, as
    the driver's one simple query: no placeholders read in it, dollar-quoted and ``BEGIN ATOMIC``
    bodies whole. A migration that changes an object runs its whole new definition with it."""
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute(body.encode())


def write(conn: Connection, folder: Path = FOLDER) -> list[str]:
    """Write each object's file as ``conn``'s database defines it, and remove files of objects it
    no longer has; the paths changed."""
    wanted = render(conn)
    changed = []
    for path, body in wanted.items():
        target = folder / path
        if not target.exists() or target.read_text() != body:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(body)
            changed.append(path)
    for path in set(files(folder)) - set(wanted):
        (folder / path).unlink()
        changed.append(path)
    return sorted(changed)


def main(argv: list[str] | None = None) -> int:
    """``python -m imgsearch.db.definitions [--write] [URL]``: compare (or rewrite) the files with
    a database migrated to the latest revision (by default a fresh one on the embedded server)."""
    from imgsearch.db import embedded, migrate
    from imgsearch.db.engine import make_engine
    from imgsearch.settings import Settings

    parser = argparse.ArgumentParser(prog="python -m imgsearch.db.definitions", description=main.__doc__)
    parser.add_argument("url", nargs="?", help="a database to migrate and read (default: the embedded server's)")
    parser.add_argument("--write", action="store_true", help="rewrite the files from it")
    args = parser.parse_args(argv)
    url = args.url or embedded.ensure_started(Settings().home, "imgsearch_definitions")
    engine = make_engine(url)
    try:
        migrate.upgrade(engine)
        with engine.connect() as conn:
            if args.write:
                changed = write(conn)
            else:
                now, shipped = render(conn), files()
                changed = sorted(path for path in set(now) | set(shipped) if now.get(path) != shipped.get(path))
    finally:
        engine.dispose()
    for path in changed:
        print(("written " if args.write else "differs ") + path)
    return 0 if args.write or not changed else 1


if __name__ == "__main__":
    sys.exit(main())
