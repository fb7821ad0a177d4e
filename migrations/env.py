"""Alembic environment for imgsearch.

imgsearch keeps its own version table (``imgsearch.alembic_version``), so its history can live
beside an application's own Alembic history in the same database. Runs serialise on an advisory
lock: two processes opening a fresh catalog at once don't race each other's DDL.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool, text

from imgsearch.db.models import SCHEMA, Base

MIGRATION_LOCK = 0x696D6773  # pg_advisory_xact_lock key shared by every imgsearch migration run
VERSION_TABLE = "alembic_version"

# pgvector's library loaded in this session before any migration: its hnsw.* parameters are then
# real ones, not placeholders. A function whose definition sets a placeholder (0002's SET
# hnsw.ef_search) can be created by a superuser only, and on a managed PostgreSQL the migrating
# role is not one, the extension having been created by an administrator in another session
# (docs/operations.md, "Managed PostgreSQL"). Reading a vector value loads the library; where the
# extension isn't there yet, migration 0001 creates it, which loads it too.
LOAD_PGVECTOR = """DO $load$
DECLARE
    schema text := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                    WHERE e.extname = 'vector');
BEGIN
    IF schema IS NOT NULL THEN
        EXECUTE format('SELECT %L::%I.vector', '[1]', schema);
    END IF;
END
$load$"""


def _migrate(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=lambda name, type_, parent: type_ != "schema" or name == SCHEMA,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))  # a constant
        connection.execute(text(LOAD_PGVECTOR))
        context.run_migrations()


def _url() -> str:
    from imgsearch.db.engine import resolve_url
    from imgsearch.settings import Settings

    return resolve_url(Settings())


def run() -> None:
    if context.is_offline_mode():
        context.configure(
            url=_url(),
            target_metadata=Base.metadata,
            literal_binds=True,
            version_table=VERSION_TABLE,
            version_table_schema=SCHEMA,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _migrate(conn)
        conn.commit()
    engine.dispose()


run()
