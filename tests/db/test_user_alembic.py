"""A user's own Alembic project that includes imgsearch's migrations: one of its revisions runs
them (``upgrade_on(op.get_bind())``) before creating a table that refers to imgsearch's products;
the two histories keep separate version tables, and autogenerate leaves imgsearch's schema alone."""

from __future__ import annotations

import textwrap
from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import BigInteger, Column, ForeignKey, MetaData, Table, inspect, text

from imgsearch import Catalog
from imgsearch.db import migrate
from imgsearch.db.engine import make_engine
from imgsearch.db.models import Product

ENV = """
from alembic import context
from shop_models import metadata
from imgsearch.db.migrate import include_name, include_object

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    include_schemas=True,
    include_name=include_name,
    include_object=include_object,
)
with context.begin_transaction():
    context.run_migrations()
"""

REVISION = '''
"""shop tables"""
import sqlalchemy as sa
from alembic import op

from imgsearch.db.migrate import upgrade_on

revision = "shop0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    upgrade_on(op.get_bind())  # imgsearch's schema first: the wishlist refers to its products
    op.create_table(
        "wishlist",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("product_pk", sa.BigInteger, sa.ForeignKey("imgsearch.products.id", ondelete="CASCADE")),
    )


def downgrade():
    op.drop_table("wishlist")
'''

MODELS = """
from sqlalchemy import BigInteger, Column, ForeignKey, MetaData, Table

metadata = MetaData()
Table(
    "wishlist",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("product_pk", BigInteger, ForeignKey("imgsearch.products.id", ondelete="CASCADE")),
)
"""


def user_project(root: Path) -> Config:
    (root / "versions").mkdir(parents=True)
    (root / "env.py").write_text(ENV)
    (root / "script.py.mako").write_text("")
    (root / "versions" / "shop0001.py").write_text(textwrap.dedent(REVISION))
    (root / "shop_models.py").write_text(MODELS)
    config = Config()
    config.set_main_option("script_location", str(root))
    config.set_main_option("path_separator", "os")
    config.set_main_option("prepend_sys_path", str(root))
    return config


def test_a_users_alembic_history_includes_imgsearch(empty_database_url: str, tmp_path: Path) -> None:
    config = user_project(tmp_path / "shop_migrations")
    engine = make_engine(empty_database_url)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")

    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM public.alembic_version")).scalar() == "shop0001"
    assert migrate.current(engine) == migrate.head()  # imgsearch's own version table
    foreign = inspect(engine).get_foreign_keys("wishlist")
    assert foreign[0]["referred_schema"] == "imgsearch" and foreign[0]["referred_table"] == "products"

    user_metadata = MetaData()
    Product.__table__.to_metadata(user_metadata)
    Table(
        "wishlist",
        user_metadata,
        Column("id", BigInteger, primary_key=True),
        Column("product_pk", BigInteger, ForeignKey("imgsearch.products.id", ondelete="CASCADE")),
    )
    with engine.connect() as conn:
        hooked = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": migrate.include_name,
                "include_object": migrate.include_object,
            },
        )
        assert compare_metadata(hooked, user_metadata) == []
        unhooked = MigrationContext.configure(conn, opts={"include_schemas": True})
        removals = [d for d in compare_metadata(unhooked, user_metadata) if d[0] == "remove_table"]
        assert {d[1].name for d in removals} >= {"images", "embeddings"}  # what the hooks prevent

    with Catalog.open(empty_database_url) as catalog:  # imgsearch itself finds its schema at head
        image_id = catalog.add(embedding=[0.1] * catalog.dim, tenant="acme", product_id="sku-1")
        with catalog.engine.begin() as conn:
            pk = conn.execute(
                text("SELECT product_pk FROM imgsearch.images WHERE id = :i"), {"i": image_id}
            ).scalar()
            conn.execute(text("INSERT INTO wishlist (id, product_pk) VALUES (1, :pk)"), {"pk": pk})

    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert "wishlist" not in inspect(engine).get_table_names()
    assert migrate.current(engine) == migrate.head()  # the user's downgrade leaves imgsearch's data alone
    engine.dispose()
