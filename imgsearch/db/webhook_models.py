"""The tables of webhooks (migration 0037, :mod:`imgsearch.hooks`): a shop's endpoints, the outbox
of its events, and their deliveries. Part of :data:`imgsearch.db.models.Base`'s metadata."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from imgsearch.db.base import Base

_TS = DateTime(timezone=True)


class WebhookEndpoint(Base):
    """Where a tenant's events go: its URL, the types it takes, its signing secret (and the one
    before for a day after a rotation), and why it was disabled."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("webhook_endpoints_tenant_idx", "tenant"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text))
    secret: Mapped[str] = mapped_column(Text)
    previous_secret: Mapped[str | None] = mapped_column(Text)
    rotated_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())
    failing_since: Mapped[dt.datetime | None] = mapped_column(_TS)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookEvent(Base):
    """An event in the outbox, written in the transaction of its change."""

    __tablename__ = "webhook_events"
    __table_args__ = (
        Index("webhook_events_tenant_created_at_idx", "tenant", "created_at"),  # a shop's replay
        Index("webhook_events_created_at_idx", "created_at"),  # the retention's prune
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSONB)
    ordering_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())


class WebhookDelivery(Base):
    """An event to send to one endpoint: pending until an answer in 2xx, dead after the retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'dead')", name="state_known"),
        Index("webhook_deliveries_due_idx", "due_at", postgresql_where=text("state = 'pending'")),
        Index(
            "webhook_deliveries_order_idx",
            "endpoint_id",
            "ordering_key",
            "id",
            postgresql_where=text("state = 'pending'"),
        ),
        Index("webhook_deliveries_event_id_idx", "event_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    tenant: Mapped[str] = mapped_column(Text)
    endpoint_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("webhook_events.id", ondelete="CASCADE"))
    ordering_key: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    due_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())
    created_at: Mapped[dt.datetime] = mapped_column(_TS, server_default=func.now())
    delivered_at: Mapped[dt.datetime | None] = mapped_column(_TS)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
