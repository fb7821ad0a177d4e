"""A shop's webhook endpoints: added with the event types they take and a secret shown once,
listed, removed, their secret rotated.

An endpoint's address is checked as image downloads are (:mod:`imgsearch.ingest.downloads`): an
http(s) URL at a public address unless ``IMGSEARCH_WEBHOOK_ALLOW`` lists its network. A host
written as an address is checked here; a name is checked at each delivery, on the address the
connection actually goes to, and a redirect is never followed.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput, LimitReached, NotFound
from imgsearch.hooks import EVENT_TYPES, signing
from imgsearch.ingest import checks
from imgsearch.ingest.downloads import Downloads

MAX_URL_LENGTH = 2048
MAX_ENDPOINTS = 20  # per tenant


@dataclass(frozen=True)
class Endpoint:
    """An endpoint as listed: never its secret."""

    id: int
    tenant: str
    url: str
    events: list[str]
    created_at: dt.datetime
    disabled_at: dt.datetime | None
    disabled_reason: str | None
    pending: int
    delivered: int
    dead: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "url": self.url,
            "events": self.events,
            "created_at": self.created_at.isoformat(),
            "disabled_at": self.disabled_at.isoformat() if self.disabled_at else None,
            "disabled_reason": self.disabled_reason,
            "pending": self.pending,
            "delivered": self.delivered,
            "dead": self.dead,
        }


@dataclass(frozen=True)
class Created:
    """A new endpoint (or a rotated one): its id and its secret, shown this once."""

    id: int
    secret: str


def check_url(given: Any, policy: Downloads) -> str:
    """``url`` when an endpoint may be there, else :class:`InvalidInput` naming why."""
    if not isinstance(given, str) or not given.strip():
        raise InvalidInput(f"url must be an http(s) URL, got {given!r}")
    url: str = given.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidInput(f"url is over {MAX_URL_LENGTH} characters ({len(url)})")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - a port out of range raises here
    except ValueError as exc:
        raise InvalidInput(f"url {url!r} is not a URL: {exc}") from exc
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidInput(f"url must be an http(s) URL with a host, got {url!r}")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidInput(f"url {url!r} holds spaces or control characters")
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if host.rstrip(".").lower() == "localhost" or host.rstrip(".").lower().endswith(".localhost"):
            address = ipaddress.ip_address("127.0.0.1")
        else:
            return url  # a name: checked on the address each delivery connects to
    if not policy.permits(address):
        raise InvalidInput(
            f"url {url!r} is not at a public address; endpoints are on private networks only when "
            "IMGSEARCH_WEBHOOK_ALLOW lists them"
        )
    return url


def check_events(events: Any) -> list[str]:
    """The event types asked for (every type when ``None``), each known, without repeats."""
    if events is None:
        return list(EVENT_TYPES)
    if isinstance(events, str):
        events = [part.strip() for part in events.split(",") if part.strip()]
    if not isinstance(events, Iterable) or isinstance(events, bytes | dict):
        raise InvalidInput(f"events must be a list of event types, got {events!r}")
    chosen: list[str] = []
    for event in events:
        if event not in EVENT_TYPES:
            raise InvalidInput(f"unknown event type {event!r}; the types are {', '.join(EVENT_TYPES)}")
        if event not in chosen:
            chosen.append(event)
    if not chosen:
        raise InvalidInput(f"events must name at least one of {', '.join(EVENT_TYPES)}")
    return chosen


def add(engine: Engine, tenant: Any, url: Any, events: Any = None, *, policy: Downloads) -> Created:
    """A new endpoint of ``tenant`` for ``events`` (all when None), and its secret."""
    tenant = checks.identifier(tenant, "tenant")
    url, chosen = check_url(url, policy), check_events(events)
    secret = signing.new_secret()
    with tenancy.begin(engine, tenant) as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('imgsearch.webhooks:' || :t))"), {"t": tenant})
        count = conn.execute(
            text("SELECT count(*) FROM imgsearch.webhook_endpoints WHERE tenant = :t"), {"t": tenant}
        ).scalar_one()
        if count >= MAX_ENDPOINTS:
            raise LimitReached(f"tenant {tenant!r} has {count} webhook endpoints, the most there may be")
        found = conn.execute(
            text(
                "INSERT INTO imgsearch.webhook_endpoints (tenant, url, events, secret) "
                "VALUES (:t, :u, :e, :s) RETURNING id"
            ),
            {"t": tenant, "u": url, "e": chosen, "s": secret},
        ).scalar_one()
    return Created(int(found), secret)


LISTED = """
SELECT w.id, w.tenant, w.url, w.events, w.created_at, w.disabled_at, w.disabled_reason,
       count(*) FILTER (WHERE d.state = 'pending') AS pending,
       count(*) FILTER (WHERE d.state = 'delivered') AS delivered,
       count(*) FILTER (WHERE d.state = 'dead') AS dead
FROM imgsearch.webhook_endpoints w
LEFT JOIN imgsearch.webhook_deliveries d ON d.tenant = w.tenant AND d.endpoint_id = w.id
WHERE (CAST(:t AS text) IS NULL OR w.tenant = :t)
GROUP BY w.id, w.tenant ORDER BY w.tenant, w.id
"""


def listed(engine: Engine, tenant: Any = None) -> list[Endpoint]:
    """``tenant``'s endpoints (every tenant's without one), with their deliveries' counts."""
    tenant = None if tenant is None else checks.identifier(tenant, "tenant")
    with tenancy.begin(engine, tenant) as conn:
        if tenant is None:
            tenancy.run_as_worker(conn)
        rows = conn.execute(text(LISTED), {"t": tenant}).all()
    return [Endpoint(*row) for row in rows]


def _endpoint_id(endpoint_id: Any) -> int:
    if not checks.stored_id(endpoint_id):
        raise InvalidInput(f"a webhook endpoint id is a whole number, got {endpoint_id!r}")
    return int(endpoint_id)


def remove(engine: Engine, tenant: Any, endpoint_id: Any) -> None:
    """Remove an endpoint of ``tenant`` and its deliveries still to go."""
    tenant, endpoint = checks.identifier(tenant, "tenant"), _endpoint_id(endpoint_id)
    with tenancy.begin(engine, tenant) as conn:
        gone = conn.execute(
            text("DELETE FROM imgsearch.webhook_endpoints WHERE tenant = :t AND id = :i RETURNING id"),
            {"t": tenant, "i": endpoint},
        ).first()
    if gone is None:
        raise NotFound(f"tenant {tenant!r} has no webhook endpoint {endpoint}")


def rotate(engine: Engine, tenant: Any, endpoint_id: Any) -> Created:
    """A new secret for an endpoint of ``tenant``; deliveries are signed under the old one too for
    a day (:data:`imgsearch.hooks.delivery.PREVIOUS_SECRET_HOURS`). A disabled endpoint is enabled
    again: rotating is what a shop does once it has fixed its receiver."""
    tenant, endpoint = checks.identifier(tenant, "tenant"), _endpoint_id(endpoint_id)
    secret = signing.new_secret()
    with tenancy.begin(engine, tenant) as conn:
        found = conn.execute(
            text(
                "UPDATE imgsearch.webhook_endpoints SET previous_secret = secret, secret = :s, "
                "rotated_at = now(), disabled_at = NULL, disabled_reason = NULL, failing_since = NULL "
                "WHERE tenant = :t AND id = :i RETURNING id"
            ),
            {"t": tenant, "i": endpoint, "s": secret},
        ).first()
    if found is None:
        raise NotFound(f"tenant {tenant!r} has no webhook endpoint {endpoint}")
    return Created(endpoint, secret)
