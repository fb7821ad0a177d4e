"""Typed SQLAlchemy 2.0 models of the imgsearch tables (schema ``imgsearch``).

A Flask or plain SQLAlchemy app can import and query them directly::

    from sqlalchemy import select
    from imgsearch.db.models import Image, Product

    stmt = select(Image.id, Product.product_id).join(Image.product).where(Product.category == "shoes")

The schema itself is created and changed by the Alembic migrations only; these classes mirror it.
"""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from pgvector.sqlalchemy import BIT, HALFVEC, VECTOR
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB, REAL, REGCONFIG, TSVECTOR
from sqlalchemy.dialects.postgresql import BIT as PG_BIT
from sqlalchemy.orm import Mapped, mapped_column, relationship

from imgsearch.db.base import SCHEMA as SCHEMA  # the schema name, for importers of the models
from imgsearch.db.base import Base


class ImageState(enum.StrEnum):
    PENDING = "pending"
    EMBEDDING = "embedding"
    READY = "ready"
    FAILED = "failed"


def _created() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Model(Base):
    """An embedding model; one is active (used by searches and workers) at a time, and one more may
    serve image queries beside it (``serves_images``, migration 0034)."""

    __tablename__ = "models"
    __table_args__ = (
        CheckConstraint("dim BETWEEN 1 AND 4000", name="dim_range"),
        Index("models_one_active_idx", "active", unique=True, postgresql_where=text("active")),
        Index("models_one_image_model_idx", "serves_images", unique=True, postgresql_where=text("serves_images")),
    )

    id: Mapped[int] = mapped_column(SmallInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(Text, unique=True)
    dim: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(server_default=text("false"))
    # vectors made elsewhere (`imgsearch model add`): imgsearch never loads it (migration 0018)
    external: Mapped[bool] = mapped_column(server_default=text("false"))
    created_at: Mapped[dt.datetime] = _created()
    # image queries and "more like this" use this model, not the active one (at most one; 0034)
    serves_images: Mapped[bool] = mapped_column(server_default=text("false"))


SEARCH_DOC = (
    "setweight(to_tsvector('english'::regconfig, coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(brand, '') || ' ' || coalesce(category, '')), 'B') || "
    "setweight(jsonb_to_tsvector('english'::regconfig, attributes, '[\"string\", \"numeric\"]'), 'C') || "
    "setweight(to_tsvector('english'::regconfig, coalesce(description, '')), 'D')"
)
# products' and embeddings' price_units (migration 0030); a NaN price gives NULL, so that the
# products' check refuses it by name (a bigint can't hold NaN, and the column is computed first)
PRICE_UNITS = "(nullif(price, 'NaN') * 10000)::bigint"
# embeddings' binary codes (migration 0043)
BINARY_CODE = "binary_quantize(embedding)::bit varying"
LEXICAL_TEXT = "lower(coalesce(title, '') || ' ' || coalesce(brand, '') || ' ' || product_id)"


class Product(Base):
    """A product of one tenant; ``product_id`` (the SKU) is unique per tenant."""

    __tablename__ = "products"
    __table_args__ = (
        UniqueConstraint("tenant", "product_id"),
        UniqueConstraint("id", "tenant"),  # target of the images' (product, tenant) foreign key
        CheckConstraint("tenant <> ''", name="tenant_not_empty"),
        CheckConstraint("product_id <> ''", name="product_id_not_empty"),
        CheckConstraint("price >= 0", name="price_not_negative"),
        CheckConstraint("price <> 'NaN'", name="price_not_nan"),  # NaN passes >= 0 (migration 0017)
        CheckConstraint("currency ~ '^[A-Z]{3}$'", name="currency_iso"),
        CheckConstraint("jsonb_typeof(attributes) = 'object'", name="attributes_object"),
        CheckConstraint("char_length(title) <= 1000", name="title_length"),
        CheckConstraint("char_length(brand) <= 1000", name="brand_length"),
        CheckConstraint("char_length(description) <= 100000", name="description_length"),
        Index("products_product_id_idx", "product_id"),  # an exact SKU typed into an admin's search
        # the last change to a tenant's (or the catalog's) products: when to read its words again
        Index("products_tenant_updated_at_idx", "tenant", "updated_at"),
        Index("products_updated_at_idx", "updated_at"),
        Index("products_search_doc_idx", "search_doc", postgresql_using="gin"),
        Index(
            "products_lexical_text_idx",
            "lexical_text",
            postgresql_using="gin",
            postgresql_ops={"lexical_text": "gin_trgm_ops"},
        ),
        Index("products_tenant_category_idx", "tenant", "category"),
        # on the price in units (migration 0030): a shop's range is an index condition
        Index("products_tenant_price_idx", "tenant", "price_units"),
        Index("products_category_idx", "category"),  # filters without a tenant (admins, one-shop setups)
        Index("products_price_idx", "price_units"),
        Index(
            "products_attributes_idx",
            "attributes",
            postgresql_using="gin",
            postgresql_ops={"attributes": "jsonb_path_ops"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    product_id: Mapped[str] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    # the price in ten-thousandths (numeric(14, 4)'s scale), generated from it (migration 0030):
    # what searches filter a price range on, as bigint's comparisons are leakproof: under a shop's
    # row-level security a range is an index condition, which numeric's can't be
    price_units: Mapped[int | None] = mapped_column(BigInteger, Computed(PRICE_UNITS, persisted=True))
    currency: Mapped[str | None] = mapped_column(String(3))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _created()
    # product text (migration 0020): shown with the hits and matched by the lexical side
    title: Mapped[str | None] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    brand: Mapped[str | None] = mapped_column(Text)
    # generated by PostgreSQL: the weighted document under the catalog's text-search configuration
    # (imgsearch.set_text_search_config), and the lower-case title, brand and id for pg_trgm
    search_doc: Mapped[Any] = mapped_column(TSVECTOR, Computed(SEARCH_DOC, persisted=True), deferred=True)
    lexical_text: Mapped[str] = mapped_column(Text, Computed(LEXICAL_TEXT, persisted=True), deferred=True)

    images: Mapped[list[Image]] = relationship(back_populates="product", passive_deletes=True)
    # every image of the product, its own and the ones it shares with other products (migration 0019)
    linked_images: Mapped[list[Image]] = relationship(
        secondary="imgsearch.image_products", viewonly=True, order_by="Image.id"
    )


class Image(Base):
    """An image: its bytes (or a URI), metadata and embedding state. ``product`` is the product
    that uploaded it first; ``products`` are all the products it belongs to (:class:`ImageProduct`)."""

    __tablename__ = "images"
    __table_args__ = (
        ForeignKeyConstraint(
            ["product_pk", "tenant"],
            ["products.id", "products.tenant"],
            ondelete="CASCADE",
            name="images_product_fkey",
        ),
        UniqueConstraint("tenant", "sha256"),  # same bytes, same tenant: one image
        UniqueConstraint("id", "tenant"),
        CheckConstraint("state IN ('pending', 'embedding', 'ready', 'failed')", name="state_known"),
        CheckConstraint("sha256 IS NULL OR octet_length(sha256) = 32", name="sha256_length"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        ForeignKeyConstraint(
            ["duplicate_of", "tenant"],
            ["images.id", "images.tenant"],
            ondelete="SET NULL (duplicate_of)",
            name="images_duplicate_of_fkey",
        ),
        Index("images_product_pk_idx", "product_pk"),
        # near-copies of an upload: the images a few bits away from its hash (migration 0016)
        Index(
            "images_phash_idx",
            "phash",
            postgresql_using="hnsw",
            postgresql_ops={"phash": "bit_hamming_ops"},
            postgresql_where=text("phash IS NOT NULL"),
        ),
        Index("images_duplicate_of_idx", "duplicate_of", postgresql_where=text("duplicate_of IS NOT NULL")),
        # the work queue: workers claim the oldest pending rows through this partial index
        Index("images_queue_idx", "state", "id", postgresql_where=text("state IN ('pending', 'embedding')")),
        # a status's latest failures and oldest waiting image (migration 0054)
        Index("images_failed_idx", "tenant", "updated_at", "id", postgresql_where=text("state = 'failed'")),
        Index(
            "images_waiting_idx", "tenant", "created_at", postgresql_where=text("state IN ('pending', 'embedding')")
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    product_pk: Mapped[int] = mapped_column(BigInteger)
    tenant: Mapped[str] = mapped_column(Text)
    sha256: Mapped[bytes | None] = mapped_column(LargeBinary)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(Text)
    byte_size: Mapped[int | None] = mapped_column(BigInteger)
    content: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    # a JPEG of at most 256 px kept when the bytes are dropped after embedding (migration 0013)
    thumbnail: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    uri: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # a pending image that failed for a passing reason is claimable again from then (migration 0014)
    retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # the 64-bit pHash as '0'/'1' text, and the image an upload with on_duplicate="link" copies
    phash: Mapped[str | None] = mapped_column(BIT(64))
    duplicate_of: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = _created()
    updated_at: Mapped[dt.datetime] = _created()

    product: Mapped[Product] = relationship(back_populates="images")
    products: Mapped[list[Product]] = relationship(
        secondary="imgsearch.image_products", viewonly=True, order_by="Product.id"
    )
    embeddings: Mapped[list[Embedding]] = relationship(back_populates="image", passive_deletes=True)


class ImageProduct(Base):
    """An image belongs to every product that uploads it (migration 0019): its bytes are stored
    and embedded once, and each product gets its own search row (:class:`Embedding`)."""

    __tablename__ = "image_products"
    __table_args__ = (
        ForeignKeyConstraint(
            ["image_id", "tenant"],
            ["images.id", "images.tenant"],
            ondelete="CASCADE",
            name="image_products_image_fkey",
        ),
        ForeignKeyConstraint(
            ["product_pk", "tenant"],
            ["products.id", "products.tenant"],
            ondelete="CASCADE",
            name="image_products_product_fkey",
        ),
        Index("image_products_product_pk_idx", "product_pk"),
    )

    image_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    product_pk: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()


class Embedding(Base):
    """An image's embedding under one model, one row per product the image belongs to (each row
    carries its product's filter columns); models of different dimensions coexist.

    The column has no fixed dimension; each model has its own partial HNSW index over
    ``embedding::halfvec(dim)`` (see :mod:`imgsearch.db.vector_index`).
    """

    __tablename__ = "embeddings"
    __table_args__ = (
        ForeignKeyConstraint(
            ["image_id", "tenant"],
            ["images.id", "images.tenant"],
            ondelete="CASCADE",
            name="embeddings_image_fkey",
        ),
        # a row per link of an image to a product; it goes with the link (migration 0019). The
        # link's own keys hold its image and product under one tenant, the image key above gives
        # the row that tenant: the row's product (repeated so that filtered searches join
        # embeddings to products directly) needs no key of its own (migration 0050)
        ForeignKeyConstraint(
            ["image_id", "product_pk"],
            ["image_products.image_id", "image_products.product_pk"],
            ondelete="CASCADE",
            name="embeddings_link_fkey",
        ),
        # a zero vector has no direction: its cosine distances are NaN (migration 0017)
        CheckConstraint("l2_norm(embedding) > 0", name="not_zero"),
        # an image's rows together (migration 0040); its first column serves lookups by image
        PrimaryKeyConstraint("image_id", "product_pk", "model_id", "region", name="embeddings_pkey"),
        # a region's box, a whole image's none (migration 0040)
        CheckConstraint(
            "region >= 0 AND (region = 0) = (box IS NULL) AND (box IS NULL OR cardinality(box) = 4)",
            name="region_box",
        ),
        Index("embeddings_product_pk_idx", "product_pk", "model_id"),
        # a category's price range (migrations 0029, 0030); its prefix serves category-only filters
        Index("embeddings_category_price_idx", "model_id", "category", "price_units"),
        Index("embeddings_price_idx", "model_id", "price_units"),
        # a shop's search within a category and its price range (migrations 0005, 0029, 0030),
        # and its price range alone (a skip scan over its categories); its prefixes serve
        # tenant-only filters and a shop's category; it carries each row's binary code and key,
        # so a far filter's nearest codes are an index-only scan (migration 0043,
        # imgsearch.db.binary_codes)
        Index(
            "embeddings_tenant_category_price_idx",
            "model_id",
            "tenant",
            "category",
            "price_units",
            postgresql_include=["code", "image_id", "product_pk", "region"],
        ),
    )

    model_id: Mapped[int] = mapped_column(SmallInteger, ForeignKey("models.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(BigInteger)
    product_pk: Mapped[int] = mapped_column(BigInteger)
    # 0: the whole image; 1, 2, ...: its regions, each with its box [x0, y0, x1, y1] in the
    # image's pixels (migration 0040, imgsearch.embed.regions)
    region: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    box: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    tenant: Mapped[str] = mapped_column(Text)
    # copies of the product's filter columns, kept by triggers (migration 0004), so a filtered
    # exact scan reads one table
    category: Mapped[str | None] = mapped_column(Text)
    price: Mapped[Decimal | None] = mapped_column(Numeric(14, 4))
    price_units: Mapped[int | None] = mapped_column(BigInteger, Computed(PRICE_UNITS, persisted=True))  # as products'
    embedding: Mapped[Any] = mapped_column(HALFVEC())
    # its sign bits, one a dimension, kept by PostgreSQL (migration 0043, imgsearch.db.binary_codes)
    code: Mapped[str] = mapped_column(PG_BIT(varying=True), Computed(BINARY_CODE, persisted=True))
    created_at: Mapped[dt.datetime] = _created()

    image: Mapped[Image] = relationship(back_populates="embeddings")
    model: Mapped[Model] = relationship()


class ApiKey(Base):
    """A key of the HTTP service (migration 0011): its public id and the SHA-256 of the whole key,
    bound to one tenant, or an admin key (no tenant) that sees every tenant."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint("key_id ~ '^[a-z2-7]{12}$'", name="key_id_form"),
        CheckConstraint("octet_length(secret_sha256) = 32", name="digest_length"),
        CheckConstraint("admin = (tenant IS NULL)", name="tenant_or_admin"),
        CheckConstraint("tenant <> ''", name="tenant_not_empty"),
        Index("api_keys_tenant_idx", "tenant"),
    )

    key_id: Mapped[str] = mapped_column(Text, primary_key=True)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary)
    tenant: Mapped[str | None] = mapped_column(Text)
    admin: Mapped[bool] = mapped_column(server_default=text("false"))
    name: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class FilterIndexRule(Base):
    """Which filter column gets per-value HNSW graphs, from how many rows (migration 0012)."""

    __tablename__ = "filter_index_rules"
    __table_args__ = (
        CheckConstraint("column_name IN ('category', 'tenant')", name="column_known"),
        CheckConstraint("min_rows > 0", name="min_rows_positive"),
    )

    column_name: Mapped[str] = mapped_column(Text, primary_key=True)
    min_rows: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = _created()


class RegionRule(Base):
    """Where an image's regions come from, for the catalog (``category`` '') or one category
    (migration 0040, :mod:`imgsearch.db.region_rules`)."""

    __tablename__ = "region_rules"
    __table_args__ = (
        CheckConstraint("source IN ('grid', 'detector', 'off')", name="source_known"),
        CheckConstraint("(source = 'grid') = (grid IS NOT NULL) AND grid BETWEEN 2 AND 4", name="grid"),
        CheckConstraint("(source = 'detector') = (detector IS NOT NULL)", name="detector"),
        CheckConstraint(
            "min_score BETWEEN 0 AND 1 AND min_area BETWEEN 0 AND 1 AND max_regions BETWEEN 1 AND 64",
            name="limits",
        ),
    )

    category: Mapped[str] = mapped_column(Text, primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    grid: Mapped[int | None] = mapped_column(SmallInteger)
    detector: Mapped[str | None] = mapped_column(Text)
    labels: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    min_score: Mapped[float] = mapped_column(REAL, server_default=text("0.3"))
    min_area: Mapped[float] = mapped_column(REAL, server_default=text("0.02"))
    max_regions: Mapped[int] = mapped_column(SmallInteger, server_default=text("18"))
    created_at: Mapped[dt.datetime] = _created()


class TextSearch(Base):
    """The catalog's text-search configuration, one row (migration 0020): products' ``search_doc``
    and the queries' ``websearch_to_tsquery`` both use it. Change it with
    ``SELECT imgsearch.set_text_search_config('german')``."""

    __tablename__ = "text_search"
    __table_args__ = (CheckConstraint("one", name="one"),)

    one: Mapped[bool] = mapped_column(primary_key=True, server_default=text("true"))
    config: Mapped[str] = mapped_column(REGCONFIG)


class FilterIndex(Base):
    """A value's own partial HNSW index of a model (:mod:`imgsearch.db.filter_indexes`)."""

    __tablename__ = "filter_indexes"
    __table_args__ = (CheckConstraint("column_name IN ('category', 'tenant')", name="column_known"),)

    model_id: Mapped[int] = mapped_column(
        SmallInteger, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    column_name: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    index_name: Mapped[str] = mapped_column(Text, unique=True)
    rows: Mapped[int] = mapped_column(BigInteger)
    recall: Mapped[float] = mapped_column(REAL)
    created_at: Mapped[dt.datetime] = _created()


class BinaryCodeCheck(Base):
    """How well a model's binary codes find an exact search's top 10, at its last check
    (:mod:`imgsearch.db.binary_codes`, migration 0043)."""

    __tablename__ = "binary_code_checks"
    __table_args__ = (CheckConstraint("recall BETWEEN 0 AND 1", name="recall"),)

    model_id: Mapped[int] = mapped_column(
        SmallInteger, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    rows: Mapped[int] = mapped_column(BigInteger)
    recall: Mapped[float] = mapped_column(REAL)
    checked_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=text("now()")
    )


class TenantLogin(Base):
    """A SQL console login bound to one tenant (created by ``imgsearch.create_tenant_login``)."""

    __tablename__ = "tenant_logins"
    __table_args__ = (CheckConstraint("tenant <> ''", name="tenant_check"),)

    role_name: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _created()


class TextEmbedding(Base):
    """A text query's embedding under a model (migration 0015): what ``imgsearch.search_text``
    reads, workers write, and the library's text queries share."""

    __tablename__ = "text_embeddings"
    __table_args__ = (Index("text_embeddings_created_idx", "created_at"),)

    model_id: Mapped[int] = mapped_column(
        SmallInteger, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True
    )
    text_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)  # sha256 of the UTF-8 text
    text: Mapped[str] = mapped_column(Text)
    embedding: Mapped[Any] = mapped_column(VECTOR())
    logit_scale: Mapped[float | None] = mapped_column(DOUBLE_PRECISION)
    logit_bias: Mapped[float | None] = mapped_column(DOUBLE_PRECISION)
    created_at: Mapped[dt.datetime] = _created()


class TextRequest(Base):
    """A text ``imgsearch.search_text`` waits for a worker to embed (migration 0015)."""

    __tablename__ = "text_requests"
    __table_args__ = (
        UniqueConstraint("model_id", "text_hash"),
        CheckConstraint("length(text) BETWEEN 1 AND 2000", name="text_length"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    model_id: Mapped[int] = mapped_column(SmallInteger, ForeignKey("models.id", ondelete="CASCADE"))
    text_hash: Mapped[bytes] = mapped_column(LargeBinary)
    text: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp()
    )
    claimed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)


# the feedback tables (migration 0022), the webhook tables (0037), the facet tables (0039) and the
# images' counts (0054) belong to this metadata too; they import the base, not this module
from imgsearch.db import facet_models, feedback_models, image_counts, webhook_models  # noqa: E402, F401
