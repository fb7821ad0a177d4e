"""The outbox: events written in the transaction of the change that causes them, so that none is
lost and none is sent for a change that rolled back.

Images and products write theirs through row triggers (migration 0037: ``image.ready``,
``image.failed``, ``image.deleted``, ``product.updated``), whatever path made the change. The
library writes the others here, on the connection of the change: ``model.activated``
(:mod:`imgsearch.work.reembed`), ``boosts.refreshed`` (:mod:`imgsearch.learning.boosts`),
``finetune.finished`` (:mod:`imgsearch.finetune.run`). Either way ``imgsearch._webhook_event``
writes the event and one delivery per endpoint taking its type, when a live endpoint takes
it (an event none takes is not kept, nor replayed later).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput
from imgsearch.ingest import checks

EMIT = "SELECT imgsearch._webhook_event(:t, :type, CAST(:data AS jsonb), NULL)"
LIVE_TENANTS = "SELECT DISTINCT tenant FROM imgsearch.webhook_endpoints WHERE disabled_at IS NULL"


def emit(conn: Connection, tenant: str, type_: str, data: Mapping[str, Any]) -> None:
    """Write a ``type_`` event of ``tenant`` in ``conn``'s transaction."""
    conn.execute(text(EMIT), {"t": tenant, "type": type_, "data": json.dumps({**data, "tenant": tenant})})


def live_tenants(conn: Connection) -> list[str]:
    """The tenants with an endpoint that isn't disabled."""
    return sorted(conn.execute(text(LIVE_TENANTS)).scalars().all())


def emit_to_all(conn: Connection, type_: str, data: Mapping[str, Any]) -> None:
    """Write a ``type_`` event for every tenant with a live endpoint (a change of the whole
    catalog, such as its model)."""
    for tenant in live_tenants(conn):
        emit(conn, tenant, type_, data)


REPLAY = """
INSERT INTO imgsearch.webhook_deliveries (tenant, endpoint_id, event_id, ordering_key)
SELECT e.tenant, w.id, e.id, e.ordering_key
FROM imgsearch.webhook_events e
JOIN imgsearch.webhook_endpoints w ON w.tenant = e.tenant AND e.type = ANY (w.events)
WHERE e.tenant = :t AND e.created_at >= :since AND e.created_at < :until AND w.disabled_at IS NULL
  AND (CAST(:endpoint AS bigint) IS NULL OR w.id = :endpoint)
ORDER BY e.id
"""


def _moment(value: Any, what: str) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidInput(f"{what} must be a date and time (ISO 8601), got {value!r}") from exc
    if not isinstance(value, dt.datetime):
        raise InvalidInput(f"{what} must be a date and time, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def replay(engine: Engine, tenant: Any, since: Any, until: Any = None, endpoint_id: Any = None) -> int:
    """Send ``tenant``'s events from ``since`` to ``until`` (now without one) again, to each live
    endpoint taking their type (or to ``endpoint_id`` alone); the number of deliveries queued.
    Each goes with its event's own ``webhook-id``, so a receiver that has it already can tell."""
    tenant = checks.identifier(tenant, "tenant")
    start = _moment(since, "since")
    end = dt.datetime.now(dt.UTC) if until is None else _moment(until, "until")
    if start >= end:
        raise InvalidInput(f"since ({start.isoformat()}) must come before until ({end.isoformat()})")
    if endpoint_id is not None and not checks.stored_id(endpoint_id):
        raise InvalidInput(f"a webhook endpoint id is a whole number, got {endpoint_id!r}")
    with tenancy.begin(engine, tenant) as conn:
        done = conn.execute(text(REPLAY), {"t": tenant, "since": start, "until": end, "endpoint": endpoint_id})
        if done.rowcount:
            conn.execute(text("SELECT pg_notify('imgsearch_webhook', '')"))
        return int(done.rowcount)


@dataclass(frozen=True)
class Stats:
    """Deliveries by state (and those failing), how long the oldest pending one has waited (the lag)."""

    pending: int
    delivered: int
    dead: int
    lag_seconds: float
    disabled_endpoints: int
    failing: int = 0  # pending deliveries whose last attempt failed (waiting to be retried)


STATS = """
SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'delivered'),
       count(*) FILTER (WHERE state = 'dead'),
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'pending')), 0),
       count(*) FILTER (WHERE state = 'pending' AND last_error IS NOT NULL)
FROM imgsearch.webhook_deliveries
"""
DISABLED = "SELECT count(*) FROM imgsearch.webhook_endpoints WHERE disabled_at IS NOT NULL"


def stats(engine: Engine) -> Stats:
    """Every tenant's deliveries, for metrics."""
    with engine.begin() as conn:
        tenancy.run_as_worker(conn)
        row = conn.execute(text(STATS)).one()
        disabled = conn.execute(text(DISABLED)).scalar_one()
    return Stats(int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(disabled), int(row[4]))


PRUNE = """
DELETE FROM imgsearch.webhook_events e
WHERE e.created_at < now() - make_interval(days => :days)
  AND NOT EXISTS (SELECT 1 FROM imgsearch.webhook_deliveries d
                  WHERE d.tenant = e.tenant AND d.event_id = e.id AND d.state = 'pending')
"""


def prune(conn: Connection, days: int) -> int:
    """Forget events older than ``days`` that no delivery waits for (their deliveries with them)."""
    return int(conn.execute(text(PRUNE), {"days": days}).rowcount)
