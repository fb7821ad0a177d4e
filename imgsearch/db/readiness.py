"""What a database needs before imgsearch can migrate and serve on it, and what is missing:
``imgsearch db check``.

On a managed PostgreSQL (RDS, Cloud SQL, Azure Flexible Server, Supabase, Neon) the application's
role owns its database but is not a superuser, and an administrator creates the extensions that
aren't trusted. Each line names a need, whether it is met, and when it isn't, the statement an
administrator runs (docs/operations.md, "Managed PostgreSQL").
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

MIN_PGVECTOR = (0, 8, 0)  # iterative index scans (hnsw.iterative_scan)
MIN_POSTGRES = 14  # CREATE OR REPLACE TRIGGER (imgsearch/db/sql/triggers/)


@dataclass(frozen=True)
class Need:
    name: str
    met: bool
    found: str  # what the database has (a version, an attribute)
    fix: str | None = None  # the statement an administrator runs, or the command to run
    required: bool = True  # False: only text search from psql waits for it

    def line(self) -> str:
        mark = "ok" if self.met else ("missing" if self.required else "optional")
        text_ = f"{mark:8} {self.name}: {self.found}"
        return text_ if self.met or self.fix is None else f"{text_}; {self.fix}"


def _version(found: str | None) -> tuple[int, ...]:
    if not found:
        return ()
    return tuple(int(part) for part in found.split(".") if part.isdigit())


def check(conn: Connection) -> list[Need]:
    """Each need of imgsearch on the database ``conn`` reaches, as its current role sees it."""
    role, database, superuser, createrole = conn.execute(
        text(
            "SELECT quote_ident(current_user), quote_ident(current_database()), r.rolsuper, r.rolcreaterole "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
    ).one()
    server = conn.execute(text("SELECT current_setting('server_version'), current_setting('server_version_num')::int")).one()
    rows = conn.execute(
        text(
            "SELECT a.name, e.extversion, a.default_version FROM pg_available_extensions a "
            "LEFT JOIN pg_extension e ON e.extname = a.name WHERE a.name IN ('vector', 'pg_trgm', 'dblink')"
        )
    ).all()
    installed = {name: version for name, version, _ in rows if version is not None}
    available = {name: default for name, _, default in rows}
    create = bool(conn.execute(text("SELECT has_database_privilege(current_database(), 'CREATE')")).scalar())
    needs = [
        Need("PostgreSQL", server[1] >= MIN_POSTGRES * 10000, f"{server[0]} (needs {MIN_POSTGRES} or later)"),
        _extension("vector", installed, available, superuser, database, MIN_PGVECTOR),
        _extension("pg_trgm", installed, available, True, database),  # trusted: the owner creates it
        Need(
            "create schemas in the database", create or superuser,
            "granted" if create or superuser else "not granted",
            f"an administrator runs GRANT CREATE ON DATABASE {database} TO {role}",
        ),
        Need(
            "CREATEROLE (imgsearch's roles for apps, workers and console logins)", createrole or superuser,
            "yes" if createrole or superuser else "no", f"an administrator runs ALTER ROLE {role} CREATEROLE",
        ),
        _extension("dblink", installed, available, superuser, database, required=False),
    ]
    if "dblink" in installed:
        usage = bool(conn.execute(text("SELECT has_foreign_data_wrapper_privilege('dblink_fdw', 'USAGE')")).scalar())
        needs.append(
            Need(
                "USAGE on dblink_fdw (text search from psql)", usage, "granted" if usage else "not granted",
                f"an administrator runs GRANT USAGE ON FOREIGN DATA WRAPPER dblink_fdw TO {role}", required=False,
            )
        )
        loopback = conn.execute(
            text(
                "SELECT (SELECT 1 FROM pg_foreign_server WHERE srvname = 'imgsearch_loopback') IS NOT NULL, "
                "(SELECT 1 FROM pg_user_mappings WHERE srvname = 'imgsearch_loopback' AND usename = current_user) "
                "IS NOT NULL"
            )
        ).one()
        made = loopback[0] and loopback[1]
        needs.append(
            Need(
                "the loopback connection of search_text", made, "made" if made else "not made",
                "run `imgsearch db console-setup` (after `imgsearch migrate`)", required=False,
            )
        )
    return needs


def _extension(
    name: str, installed: dict[str, str | None], available: dict[str, str | None], can_create: bool,
    database: str, minimum: tuple[int, ...] = (), *, required: bool = True,
) -> Need:  # fmt: skip
    title = f"extension {name}"
    want = f" (needs {'.'.join(map(str, minimum))} or later)" if minimum else ""
    if name not in available:
        return Need(title, False, "not available on this server", f"install {name} on the server{want}", required)
    version = installed.get(name)
    if version is None:
        if can_create:
            return Need(title, True, f"{available[name]} available; `imgsearch migrate` creates it")
        return Need(
            title, False, f"{available[name]} available, not created",
            f"an administrator runs CREATE EXTENSION {name} in database {database}", required,
        )
    if minimum and _version(version) < minimum:
        return Need(title, False, f"{version}{want}", f"an administrator runs ALTER EXTENSION {name} UPDATE", required)
    return Need(title, True, version)


def ready(needs: list[Need]) -> bool:
    """Whether every required need is met (optional ones only limit text search from psql)."""
    return all(need.met for need in needs if need.required)
