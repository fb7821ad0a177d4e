"""The tables of kept facet counts (migration 0039, :mod:`imgsearch.search.facets`): which
products each model's search rows count, under which values, and the signed counts per value that
triggers append. Part of :data:`imgsearch.db.models.Base`'s metadata."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from imgsearch.db.base import Base

# one row per (product, model) with search rows: how many, and the values it is counted under
# (tenant NULL: being counted by the statement that holds its key)
facet_members = Table(
    "facet_members",
    Base.metadata,
    Column("product_pk", BigInteger, nullable=False),
    Column("model_id", SmallInteger, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("tenant", Text),
    Column("category", Text),
    Column("brand", Text),
    Column("price", Numeric),
    Column("attributes", JSONB),
    PrimaryKeyConstraint("product_pk", "model_id", name="facet_members_pkey"),
    Index("facet_members_price_idx", "model_id", "tenant", "price"),
    Index("facet_members_category_price_idx", "model_id", "tenant", "category", "price"),  # a category's range
)

# an append-only log of signed counts per (tenant, model, facet, key, value), of a shop's products and
# again of each category's; a read sums its scope's
facet_counts = Table(
    "facet_counts",
    Base.metadata,
    Column("tenant", Text, nullable=False),
    Column("model_id", SmallInteger, nullable=False),
    Column("facet", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("category", Text),  # NULL: the shop's counts; a category's name: its products' (migration 0055)
    Index("facet_counts_scope_idx", "model_id", "tenant", "category", "facet"),
)
