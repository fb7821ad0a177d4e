"""Initial schema: models, products, images, per-model embeddings.

Embeddings are halfvec without a fixed dimension; each model gets a partial HNSW index
over embedding::halfvec(dim) when it is registered (docs/benchmarks.md: why halfvec).

Revision ID: 0001
Revises:
Create Date: 2026-11-22 03:21:44.257274
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import HALFVEC
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "models",
        sa.Column("id", sa.SmallInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("dim BETWEEN 1 AND 4000", name=op.f("models_dim_range_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("models_pkey")),
        sa.UniqueConstraint("name", name=op.f("models_name_key")),
        schema="imgsearch",
    )
    op.create_index(
        "models_one_active_idx",
        "models",
        ["active"],
        unique=True,
        schema="imgsearch",
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "products",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("product_id", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("price", sa.Numeric(precision=14, scale=4), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column(
            "attributes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("products_currency_iso_check")),
        sa.CheckConstraint(
            "jsonb_typeof(attributes) = 'object'", name=op.f("products_attributes_object_check")
        ),
        sa.CheckConstraint("product_id <> ''", name=op.f("products_product_id_not_empty_check")),
        sa.CheckConstraint("tenant <> ''", name=op.f("products_tenant_not_empty_check")),
        sa.CheckConstraint("price >= 0", name=op.f("products_price_not_negative_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("products_pkey")),
        sa.UniqueConstraint("id", "tenant", name=op.f("products_id_tenant_key")),
        sa.UniqueConstraint("tenant", "product_id", name=op.f("products_tenant_product_id_key")),
        schema="imgsearch",
    )
    op.create_index(
        "products_attributes_idx",
        "products",
        ["attributes"],
        unique=False,
        schema="imgsearch",
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
    )
    op.create_index(
        "products_tenant_category_idx", "products", ["tenant", "category"], unique=False, schema="imgsearch"
    )
    op.create_index(
        "products_tenant_price_idx", "products", ["tenant", "price"], unique=False, schema="imgsearch"
    )
    op.create_index("products_category_idx", "products", ["category"], unique=False, schema="imgsearch")
    op.create_index("products_price_idx", "products", ["price"], unique=False, schema="imgsearch")
    op.create_table(
        "images",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("product_pk", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("sha256", sa.LargeBinary(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.Text(), nullable=True),
        sa.Column("byte_size", sa.BigInteger(), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("uri", sa.Text(), nullable=True),
        sa.Column("state", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "state IN ('pending', 'embedding', 'ready', 'failed')", name=op.f("images_state_known_check")
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("images_attempts_not_negative_check")),
        sa.CheckConstraint(
            "sha256 IS NULL OR octet_length(sha256) = 32", name=op.f("images_sha256_length_check")
        ),
        sa.ForeignKeyConstraint(
            ["product_pk", "tenant"],
            ["imgsearch.products.id", "imgsearch.products.tenant"],
            name="images_product_fkey",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("images_pkey")),
        sa.UniqueConstraint("id", "tenant", name=op.f("images_id_tenant_key")),
        sa.UniqueConstraint("tenant", "sha256", name=op.f("images_tenant_sha256_key")),
        schema="imgsearch",
    )
    op.create_index("images_product_pk_idx", "images", ["product_pk"], unique=False, schema="imgsearch")
    op.create_index(
        "images_queue_idx",
        "images",
        ["state", "id"],
        unique=False,
        schema="imgsearch",
        postgresql_where=sa.text("state IN ('pending', 'embedding')"),
    )
    op.create_table(
        "embeddings",
        sa.Column("model_id", sa.SmallInteger(), nullable=False),
        sa.Column("image_id", sa.BigInteger(), nullable=False),
        sa.Column("product_pk", sa.BigInteger(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("embedding", HALFVEC(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id", "tenant"],
            ["imgsearch.images.id", "imgsearch.images.tenant"],
            name="embeddings_image_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["product_pk", "tenant"],
            ["imgsearch.products.id", "imgsearch.products.tenant"],
            name="embeddings_product_fkey",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["imgsearch.models.id"], name=op.f("embeddings_model_id_fkey"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("model_id", "image_id", name=op.f("embeddings_pkey")),
        schema="imgsearch",
    )
    op.create_index("embeddings_image_id_idx", "embeddings", ["image_id"], unique=False, schema="imgsearch")
    op.create_index(
        "embeddings_product_pk_idx",
        "embeddings",
        ["product_pk", "model_id"],
        unique=False,
        schema="imgsearch",
    )


def downgrade() -> None:
    op.drop_index("embeddings_product_pk_idx", table_name="embeddings", schema="imgsearch")
    op.drop_index("embeddings_image_id_idx", table_name="embeddings", schema="imgsearch")
    op.drop_table("embeddings", schema="imgsearch")
    op.drop_index(
        "images_queue_idx",
        table_name="images",
        schema="imgsearch",
        postgresql_where=sa.text("state IN ('pending', 'embedding')"),
    )
    op.drop_index("images_product_pk_idx", table_name="images", schema="imgsearch")
    op.drop_table("images", schema="imgsearch")
    op.drop_index("products_price_idx", table_name="products", schema="imgsearch")
    op.drop_index("products_category_idx", table_name="products", schema="imgsearch")
    op.drop_index("products_tenant_price_idx", table_name="products", schema="imgsearch")
    op.drop_index("products_tenant_category_idx", table_name="products", schema="imgsearch")
    op.drop_index(
        "products_attributes_idx",
        table_name="products",
        schema="imgsearch",
        postgresql_using="gin",
        postgresql_ops={"attributes": "jsonb_path_ops"},
    )
    op.drop_table("products", schema="imgsearch")
    op.drop_index(
        "models_one_active_idx", table_name="models", schema="imgsearch", postgresql_where=sa.text("active")
    )
    op.drop_table("models", schema="imgsearch")
    # the vector extension stays: other schemas of the database may use it
