"""The tables of shoppers' feedback (migration 0022, :mod:`imgsearch.learning`): searches and
their events, logs partitioned by day, and the boosts learned from them. Part of
:data:`imgsearch.db.models.Base`'s metadata."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pgvector.sqlalchemy import VECTOR
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, DOUBLE_PRECISION, JSONB, REAL
from sqlalchemy.orm import Mapped, mapped_column

from imgsearch.db.base import Base

_TS = DateTime(timezone=True)


class SearchQuery(Base):
    """A search as User Behavior Insights records it: its hits in order, for its events."""

    __tablename__ = "search_queries"
    __table_args__ = (
        Index("search_queries_tenant_searched_at_idx", "tenant", "searched_at"),
        {"postgresql_partition_by": "RANGE (searched_at)"},
    )

    query_id: Mapped[Any] = mapped_column(Uuid, primary_key=True)
    searched_at: Mapped[dt.datetime] = mapped_column(_TS, primary_key=True)  # the UUIDv7's time
    application: Mapped[str] = mapped_column(Text, server_default=text("'imgsearch'::text"))
    tenant: Mapped[str] = mapped_column(Text, server_default=text("''::text"))  # '': none (an admin's)
    client_id: Mapped[str | None] = mapped_column(Text)
    user_query: Mapped[str | None] = mapped_column(Text)
    query_norm: Mapped[str | None] = mapped_column(Text)
    query_attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result_offset: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    product_ids: Mapped[list[str]] = mapped_column(ARRAY(Text))
    image_ids: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))
    product_pks: Mapped[list[int]] = mapped_column(ARRAY(BigInteger))


search_events = Table(
    "search_events",
    Base.metadata,
    Column("query_id", Uuid, nullable=False),
    Column("occurred_at", _TS, nullable=False),
    Column("received_at", _TS, nullable=False, server_default=func.now()),
    Column("tenant", Text, nullable=False, server_default=text("''::text")),  # '': a search without one
    Column("action_name", Text, nullable=False),
    Column("object_id", Text, nullable=False),
    Column("object_id_field", Text, nullable=False),
    Column("position", Integer, nullable=False),
    Column("product_pk", BigInteger, nullable=False),
    Column("query_norm", Text),
    Column("event_id", Text),
    Column("client_id", Text),
    CheckConstraint("action_name IN ('impression', 'click', 'add_to_cart', 'purchase')", name="action"),
    CheckConstraint("object_id_field IN ('product_id', 'image_id')", name="object_field"),
    CheckConstraint("position >= 1", name="position"),
    Index("search_events_tenant_occurred_at_idx", "tenant", "occurred_at"),
    Index("search_events_query_id_idx", "query_id"),
    postgresql_partition_by="RANGE (occurred_at)",
)
"""Impressions, clicks, add-to-carts and purchases on a search's hits (no key: a log)."""


class EventId(Base):
    """An ``event_id`` already recorded (``tenant`` '' for a search without one)."""

    __tablename__ = "event_ids"
    __table_args__ = (Index("event_ids_occurred_at_idx", "occurred_at"),)

    tenant: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text, primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(_TS)


class Boost(Base):
    """How much searches lift a product for a normalised query (``query_norm`` '': for every
    query), learned from its feedback (imgsearch.learning.boosts)."""

    __tablename__ = "boosts"
    __table_args__ = (
        CheckConstraint("boost > 0 AND boost <= 1", name="boost"),
        Index("boosts_tenant_query_norm_product_id_idx", "tenant", "query_norm", "product_id", unique=True),
    )

    product_pk: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("products.id", ondelete="CASCADE"), primary_key=True
    )
    query_norm: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    product_id: Mapped[str] = mapped_column(Text)
    boost: Mapped[float] = mapped_column(REAL)
    clicks: Mapped[int] = mapped_column(Integer)
    conversions: Mapped[int] = mapped_column(Integer)
    expected: Mapped[float] = mapped_column(DOUBLE_PRECISION)
    computed_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())


class QueryAdapter(Base):
    """A tenant's query adapter for a model (migration 0023, imgsearch.learning.tuning): its
    held-out figures against the identity, and whether searches use it."""

    __tablename__ = "query_adapters"
    __table_args__ = (
        UniqueConstraint("tenant", "model_id", "version"),
        Index("query_adapters_active_idx", "tenant", "model_id", unique=True, postgresql_where=text("active")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    model_id: Mapped[int] = mapped_column(SmallInteger, ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONB)
    active: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    previous_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())
    activated_at: Mapped[dt.datetime | None] = mapped_column(_TS)


class QueryAdapterRow(Base):
    """One row of an adapter's matrix, as a vector (PostgreSQL maps queries with ``<#>``)."""

    __tablename__ = "query_adapter_rows"

    adapter_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("query_adapters.id", ondelete="CASCADE"), primary_key=True
    )
    row: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    weights: Mapped[Any] = mapped_column(VECTOR())
