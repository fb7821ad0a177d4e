"""Delivering webhooks: workers claim due deliveries with ``FOR UPDATE SKIP LOCKED`` under a
lease, as the embedding queue claims images, post them signed (:mod:`.signing`), and record the
answer.

* At least once: a delivery is done when its endpoint answered 2xx. A worker killed mid-batch
  leaves its claims leased; they come due again when the lease ends. Every attempt of an event
  carries the same ``webhook-id`` (``msg_<event id>``), so a receiver drops the repeats.
* In order per image (per product): a delivery is never claimed while an earlier one of the same
  endpoint and ``ordering_key`` is pending.
* Retries back off exponentially (``retry_seconds`` x 4^n, at most 6 hours, +-20% jitter) for
  ``give_up_hours`` (3 days); then the delivery is dead, and an endpoint that has failed that
  long is disabled with the reason kept (``imgsearch webhooks rotate-secret`` enables it again).
* Addresses are checked as image downloads are (public ones unless ``IMGSEARCH_WEBHOOK_ALLOW``
  lists them, on the address each connection goes to); no redirect is followed; an answer is
  read up to 64 KiB and within ``timeout`` seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.db import citus
from imgsearch.hooks import outbox, signing
from imgsearch.ingest.downloads import Downloads, Refused, opener

log = logging.getLogger(__name__)

CHANNEL = "imgsearch_webhook"
MAX_ANSWER_BYTES = 64 * 1024
MAX_BACKOFF_SECONDS = 6 * 3600.0
PREVIOUS_SECRET_HOURS = 24  # after a rotation, deliveries are signed under the old secret too
PRUNE_EVERY_SECONDS = 600.0


@dataclass(frozen=True)
class Policy:
    """How deliveries go: where endpoints may be (``network.allow``), the time an answer has,
    the retry schedule, the lease of a claim, and how many are claimed and posted at once."""

    network: Downloads = field(default_factory=Downloads)
    timeout: float = 10.0
    retry_seconds: float = 5.0
    give_up_hours: float = 72.0
    batch: int = 50
    concurrency: int = 8
    retention_days: int = 7

    @property
    def lease_seconds(self) -> int:
        """How long a claim is held: the longest a batch can take (its posts, ``concurrency`` at
        a time, each within ``timeout``), and a margin; then a killed worker's claims come due."""
        return math.ceil(self.timeout * math.ceil(self.batch / self.concurrency) * 1.5) + 5


@dataclass(frozen=True)
class Claimed:
    id: int
    tenant: str
    attempts: int
    event_id: int
    type: str
    data: dict[str, Any]
    event_at: dt.datetime
    endpoint_id: int
    url: str
    secret: str
    previous_secret: str | None
    rotated_at: dt.datetime | None


@dataclass(frozen=True)
class Outcome:
    """An attempt's answer: its HTTP status (None when none came) and what went wrong, if anything."""

    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.error is None


CLAIM = """
WITH picked AS MATERIALIZED (
    SELECT d.id FROM imgsearch.webhook_deliveries d
    JOIN imgsearch.webhook_endpoints w ON w.tenant = d.tenant AND w.id = d.endpoint_id
    WHERE d.state = 'pending' AND d.due_at <= statement_timestamp() AND w.disabled_at IS NULL
      AND (CAST(:tenant AS text) IS NULL OR d.tenant = :tenant)
      AND NOT EXISTS (
          SELECT 1 FROM imgsearch.webhook_deliveries o
          WHERE o.tenant = d.tenant AND o.endpoint_id = d.endpoint_id AND o.ordering_key = d.ordering_key
            AND o.state = 'pending' AND o.id < d.id)
    ORDER BY d.due_at, d.id
    LIMIT :limit
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE imgsearch.webhook_deliveries d
SET attempts = d.attempts + 1, due_at = statement_timestamp() + make_interval(secs => :lease)
FROM picked, imgsearch.webhook_events e, imgsearch.webhook_endpoints w
WHERE d.id = picked.id AND (CAST(:tenant AS text) IS NULL OR d.tenant = :tenant)
  AND e.tenant = d.tenant AND e.id = d.event_id AND w.tenant = d.tenant AND w.id = d.endpoint_id
RETURNING d.id, d.tenant, d.attempts, e.id, e.type, e.data, e.created_at, w.id, w.url, w.secret,
          w.previous_secret, w.rotated_at
"""


def claim(conn: Connection, limit: int, lease_seconds: int, tenant: str | None = None) -> list[Claimed]:
    """Claim up to ``limit`` due deliveries (of ``tenant`` alone with one), leased for ``lease_seconds``."""
    rows = conn.execute(text(CLAIM), {"limit": limit, "lease": lease_seconds, "tenant": tenant}).all()
    return sorted((Claimed(*row) for row in rows), key=lambda c: c.id)


def claim_batch(conn: Connection, limit: int, lease_seconds: int) -> list[Claimed]:
    """:func:`claim`; on a Citus cluster tenant by tenant, as shards lock rows only in a statement
    of one tenant (:func:`imgsearch.work.queue.claim_batch` does the same)."""
    if not citus.on_coordinator(conn):
        return claim(conn, limit, lease_seconds)
    due = conn.execute(
        text(
            "SELECT tenant FROM imgsearch.webhook_deliveries WHERE state = 'pending' "
            "AND due_at <= statement_timestamp() GROUP BY tenant ORDER BY min(due_at) LIMIT :n"
        ),
        {"n": limit},
    ).scalars()
    claims: list[Claimed] = []
    for tenant in list(due):
        claims += claim(conn, limit - len(claims), lease_seconds, tenant)
        if len(claims) >= limit:
            break
    return claims


def body(item: Claimed) -> bytes:
    """What a delivery posts: ``{"type", "timestamp", "data"}``, the timestamp the event's."""
    message = {"type": item.type, "timestamp": item.event_at.isoformat(), "data": item.data}
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()


def _secrets(item: Claimed, now: dt.datetime) -> list[str]:
    recent = item.rotated_at is not None and now - item.rotated_at < dt.timedelta(hours=PREVIOUS_SECRET_HOURS)
    return [item.secret] + ([item.previous_secret] if item.previous_secret and recent else [])


def send(item: Claimed, policy: Policy) -> Outcome:
    """Post one delivery; its outcome (never raises for what the endpoint or the network did)."""
    payload = body(item)
    headers = signing.headers(_secrets(item, dt.datetime.now(dt.UTC)), f"msg_{item.event_id}", int(time.time()), payload)
    headers["user-agent"] = "imgsearch-webhooks"
    request = urllib.request.Request(item.url, data=payload, headers=headers, method="POST")
    started = time.monotonic()
    try:
        with opener(policy.network, redirects=False).open(request, timeout=policy.timeout) as answer:
            read = 0
            while read < MAX_ANSWER_BYTES and time.monotonic() - started < policy.timeout:
                chunk = answer.read1(MAX_ANSWER_BYTES - read)  # what has come; the rest is never read
                if not chunk:
                    break
                read += len(chunk)
            return Outcome(int(answer.status), None)
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            where = exc.headers.get("Location", "elsewhere")
            return Outcome(exc.code, f"HTTP {exc.code} redirect to {where}: webhooks follow no redirect")
        return Outcome(exc.code, f"HTTP {exc.code}")
    except Refused as exc:
        if exc.where is None:
            return Outcome(None, str(exc))
        return Outcome(None, f"{exc.where} is not a public address; endpoints are on private networks only "
                             "when IMGSEARCH_WEBHOOK_ALLOW lists them")  # fmt: skip
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            return Outcome(None, f"no answer within {policy.timeout:g} s")
        return Outcome(None, f"cannot connect: {reason}")
    except TimeoutError:
        return Outcome(None, f"no answer within {policy.timeout:g} s")
    except Exception as exc:  # OSError, ValueError, http.client's errors: the endpoint's, retried
        return Outcome(None, f"{type(exc).__name__}: {exc}")


def backoff(attempts: int, policy: Policy, rng: random.Random) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    delay: float = min(policy.retry_seconds * 4.0 ** max(0, attempts - 1), MAX_BACKOFF_SECONDS)
    return delay * rng.uniform(0.8, 1.2)


DELIVERED = (
    "UPDATE imgsearch.webhook_deliveries SET state = 'delivered', delivered_at = now(), last_status = :status,"
    " last_error = NULL WHERE tenant = :t AND id = :id",
    "UPDATE imgsearch.webhook_endpoints SET failing_since = NULL"
    " WHERE tenant = :t AND id = :endpoint AND failing_since IS NOT NULL",
)
FAILED = (
    """
UPDATE imgsearch.webhook_deliveries SET last_status = :status, last_error = :error,
    due_at = now() + make_interval(secs => :delay),
    state = CASE WHEN created_at <= now() - make_interval(secs => :give_up * 3600.0) THEN 'dead' ELSE 'pending' END
WHERE tenant = :t AND id = :id
""",
    """
UPDATE imgsearch.webhook_endpoints SET failing_since = coalesce(failing_since, now()),
    disabled_at = CASE WHEN failing_since <= now() - make_interval(secs => :give_up * 3600.0) THEN now() END,
    disabled_reason = CASE WHEN failing_since <= now() - make_interval(secs => :give_up * 3600.0)
        THEN 'failing since ' || failing_since || ': ' || :error END
WHERE tenant = :t AND id = :endpoint
""",
)


def record(conn: Connection, item: Claimed, outcome: Outcome, policy: Policy, rng: random.Random) -> None:
    """Keep an attempt's outcome: delivered, or due again later (dead once given up on)."""
    values: dict[str, Any] = {"t": item.tenant, "id": item.id, "endpoint": item.endpoint_id, "status": outcome.status}
    if not outcome.delivered:
        values.update(error=outcome.error, delay=backoff(item.attempts, policy, rng), give_up=policy.give_up_hours)
    for statement in DELIVERED if outcome.delivered else FAILED:
        conn.execute(text(statement), values)


def deliver_due(engine: Engine, policy: Policy, rng: random.Random | None = None) -> list[tuple[Claimed, Outcome]]:
    """Claim a batch of due deliveries, post them (up to ``policy.concurrency`` at once) and
    record their outcomes; what was attempted."""
    rng = rng or random.Random()
    with engine.begin() as conn:
        tenancy.run_as_worker(conn)
        claimed = claim_batch(conn, policy.batch, policy.lease_seconds)
    if not claimed:
        return []
    if len(claimed) == 1:
        outcomes = [send(claimed[0], policy)]
    else:
        with ThreadPoolExecutor(min(policy.concurrency, len(claimed)), thread_name_prefix="webhook") as pool:
            outcomes = list(pool.map(lambda item: send(item, policy), claimed))
    with engine.begin() as conn:
        tenancy.run_as_worker(conn)
        for item, outcome in zip(claimed, outcomes, strict=True):
            record(conn, item, outcome, policy, rng)
    for item, outcome in zip(claimed, outcomes, strict=True):
        if not outcome.delivered:
            log.info("webhook %s to %s (attempt %d): %s", item.type, item.url, item.attempts, outcome.error)
    return list(zip(claimed, outcomes, strict=True))


class Deliverer(threading.Thread):
    """Delivers while its process runs: a batch whenever deliveries are due, woken by the
    outbox's NOTIFY (every second at the latest, e.g. for retries and on a Citus cluster)."""

    def __init__(
        self, engine: Engine, policy: Policy, *, idle_seconds: float = 1.0,
        on_batch: Callable[[list[tuple[Claimed, Outcome]]], None] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(name="imgsearch-webhooks", daemon=True)
        self.engine, self.policy, self.idle_seconds, self.on_batch = engine, policy, idle_seconds, on_batch
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        listening: Any = None
        pruned = 0.0
        failing: str | None = None  # the last error logged: a database down or behind says so once
        while not self._stop_event.is_set():
            try:
                if listening is None:
                    listening = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                    listening.execute(text(f"LISTEN {CHANNEL}"))
                done = deliver_due(self.engine, self.policy)
                if self.on_batch is not None and done:
                    self.on_batch(done)
                if time.monotonic() - pruned > PRUNE_EVERY_SECONDS:
                    with self.engine.begin() as conn:
                        tenancy.run_as_worker(conn)
                        outbox.prune(conn, self.policy.retention_days)
                    pruned = time.monotonic()
                failing = None
                if not done:  # nothing was due: wait for the outbox's NOTIFY, or a second
                    driver = listening.connection.driver_connection
                    for _ in driver.notifies(timeout=self.idle_seconds, stop_after=1):
                        pass
            except Exception as exc:  # the database restarting, say: try again
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                if message != failing:
                    log.warning("webhook delivery: %s", message)
                    failing = message
                if listening is not None:
                    with contextlib.suppress(Exception):
                        listening.close()
                    listening = None
                self._stop_event.wait(1.0)
        if listening is not None:
            listening.close()
