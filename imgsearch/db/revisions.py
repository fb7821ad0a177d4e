"""Which revision a catalog's schema is at, and the latest one the package ships (Alembic's
script directory): read by :mod:`imgsearch.db.migrate`, which moves between them, and by
:mod:`imgsearch.db.citus`, which distributes only the latest schema."""

from __future__ import annotations

from importlib import resources

from alembic.config import Config
from sqlalchemy import Engine

from imgsearch.db.base import SCHEMA


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config pointing at the migrations shipped in the package."""
    config = Config()
    config.set_main_option("script_location", str(resources.files("imgsearch.migrations")))
    if engine is not None:
        config.set_main_option(
            "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return config


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
