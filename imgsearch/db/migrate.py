"""Run imgsearch's Alembic migrations programmatically (``Catalog.open`` and ``imgsearch migrate``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from alembic import command
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

from imgsearch.db import citus
from imgsearch.db.base import SCHEMA
from imgsearch.db.engine import stop_when_client_gone
from imgsearch.db.revisions import alembic_config, current, head
from imgsearch.errors import DatabaseUnavailable

__all__ = [
    "OWN_SCHEMAS", "alembic_config", "current", "downgrade", "downgrade_on", "ensure_current", "head",
    "include_name", "include_object", "upgrade", "upgrade_on",
]  # fmt: skip


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


def upgrade(engine: Engine, revision: str = "head") -> citus.Distributed | None:
    """Migrate to ``revision``; at the latest on a Citus coordinator with workers, the catalog is
    distributed too (:func:`imgsearch.db.citus.adopt`: what it did, else None)."""
    before = current(engine)
    adopted = None
    with engine.begin() as conn:
        stop_when_client_gone(conn, local=True)  # a migration rewriting a table holds its lock
        upgrade_on(conn, revision)
    after = current(engine)
    if after == head():  # on a Citus coordinator: Citus mode (imgsearch.db.citus)
        adopted = citus.adopt(engine)
    if before is not None and after is not None and before < REWRITES_EMBEDDINGS <= after:
        # every embedding row was rewritten: until a vacuum the HNSW index holds a dead entry for
        # each old version, which searches wade through (recall dropped in bench/search/search.py)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            stop_when_client_gone(conn)
            conn.execute(text("VACUUM (ANALYZE) imgsearch.embeddings"))
    return adopted


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
