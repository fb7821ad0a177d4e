"""Run imgsearch's Alembic migrations programmatically (``Catalog.open`` and ``imgsearch migrate``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from imgsearch.db.models import SCHEMA
from imgsearch.errors import DatabaseUnavailable


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("imgsearch.migrations")))
    if engine is not None:
        config.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return config


def ensure_current(engine: Engine) -> None:
    """Migrate to the latest schema when behind (what opening a catalog does first); a database
    that can't be reached is :class:`DatabaseUnavailable`."""
    try:
        if current(engine) != head():
            upgrade(engine)
    except OperationalError as exc:
        raise DatabaseUnavailable(
            f"database connection failed while opening the catalog: {exc.orig}"
        ) from exc


REWRITES_EMBEDDINGS = "0004"  # fills the filter columns of every embedding row


def upgrade(engine: Engine, revision: str = "head") -> None:
    before = current(engine)
    with engine.begin() as conn:
        upgrade_on(conn, revision)
    after = current(engine)
    if after == head():  # on a Citus coordinator: Citus mode (imgsearch.db.citus)
        from imgsearch.db import citus

        citus.adopt(engine)
    if before is not None and after is not None and before < REWRITES_EMBEDDINGS <= after:
        # every embedding row was rewritten: until a vacuum the HNSW index holds a dead entry for
        # each old version, which searches wade through (recall dropped in bench/search/search.py)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM (ANALYZE) imgsearch.embeddings"))


def upgrade_on(connection: Connection, revision: str = "head") -> None:
    """Run imgsearch's migrations on an open connection, in its transaction.

    For projects with an Alembic history of their own: call it from one of your migrations
    (``upgrade_on(op.get_bind())``) before tables that refer to imgsearch's. imgsearch keeps its
    own version table, ``imgsearch.alembic_version``, so the two histories never mix.
    """
    config = alembic_config(connection.engine)
    config.attributes["connection"] = connection
    with _nestable():
        command.upgrade(config, revision)


@contextlib.contextmanager
def _nestable() -> Iterator[None]:
    """Let Alembic run inside another Alembic run (a user's migration calling :func:`upgrade_on`).

    Alembic exposes the running migration through module globals of ``alembic.op`` and
    ``alembic.context``; a nested run replaces them and deletes them when it ends, which would
    leave the outer run without its ``op``. They are put back as they were.
    """
    import alembic.context
    import alembic.op

    saved = [(module, dict(vars(module))) for module in (alembic.op, alembic.context)]
    try:
        yield
    finally:
        for module, before in saved:
            namespace = vars(module)
            for name in set(namespace) - set(before):
                del namespace[name]
            namespace.update(before)


def downgrade_on(connection: Connection, revision: str) -> None:
    config = alembic_config(connection.engine)
    config.attributes["connection"] = connection
    command.downgrade(config, revision)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
    """Alembic ``include_name`` hook for your env.py: autogenerate then doesn't reflect imgsearch's
    schemas (their tables, indexes and functions belong to imgsearch's own migrations)."""
    if type_ == "schema":
        return name not in OWN_SCHEMAS
    return parent_names.get("schema_name") not in OWN_SCHEMAS


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic ``include_object`` hook for your env.py: imgsearch's tables that your metadata holds
    (for foreign keys to them) are never proposed as new tables."""
    table = obj if type_ == "table" else getattr(obj, "table", None)
    return getattr(table, "schema", None) not in OWN_SCHEMAS


OWN_SCHEMAS = (SCHEMA, "imgsearch_log")  # imgsearch_log: the feedback logs' daily partitions (migration 0022)


def downgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as conn:
        downgrade_on(conn, revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table_schema": SCHEMA})
        return ctx.get_current_revision()


def head() -> str:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    rev = script.get_current_head()
    assert rev is not None
    return rev
