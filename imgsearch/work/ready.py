"""Waiting until images are searchable, without webhooks: PostgreSQL's ``LISTEN``/``NOTIFY``.

An image that becomes ``ready`` or ``failed`` notifies channel :data:`CHANNEL` with its id, from a
row trigger (migration 0036), when the transaction that changed it commits. A waiter listens on a
connection of its own, reads the states once (after ``LISTEN``, so no change falls between), then
reads them again only when a notification names one of its images. It also reads them every
:data:`RECHECK_SECONDS` without one: on a Citus cluster the trigger fires on the shards' nodes,
whose notifications reach their own listeners only, so there the wait is a slow poll.

>>> states = wait_ready(engine, [41, 42], tenant="acme", timeout=30)    # doctest: +SKIP
{41: 'ready', 42: 'failed'}
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import checks

CHANNEL = "imgsearch_image_state"
RECHECK_SECONDS = 2.0
MAX_IDS = 1000
MAX_TIMEOUT_SECONDS = 3600.0
DONE = ("ready", "failed")


class Listener:
    """A connection of its own listening on :data:`CHANNEL`; :meth:`changed` waits for ids."""

    def __init__(self, engine: Engine) -> None:
        self._conn: Connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._conn.execute(text(f"LISTEN {CHANNEL}"))

    def changed(self, timeout: float) -> set[int]:
        """The image ids notified within ``timeout`` seconds (returns at the first notification,
        with those that came with it; empty when none came)."""
        driver: Any = self._conn.connection.driver_connection
        found: set[int] = set()
        for note in driver.notifies(timeout=max(0.0, timeout), stop_after=1):
            if note.payload.isdigit():
                found.add(int(note.payload))
        return found

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def states(engine: Engine, ids: Iterable[int], tenant: str | None) -> dict[int, str]:
    """The state of each of ``ids`` the tenant may see (all, without one)."""
    with tenancy.begin(engine, tenant) as conn:
        if tenant is None:
            tenancy.run_as_worker(conn)
        rows = conn.execute(
            text("SELECT id, state FROM imgsearch.images WHERE id = ANY(:ids)"), {"ids": sorted(set(ids))}
        ).all()
    return {int(r.id): str(r.state) for r in rows}


def check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout):
        raise InvalidInput(f"timeout must be a number of seconds, got {timeout!r}")
    if not 0 <= timeout <= MAX_TIMEOUT_SECONDS:
        raise InvalidInput(f"timeout must be from 0 to {MAX_TIMEOUT_SECONDS:g} seconds, got {timeout!r}")
    return float(timeout)


def wait_ready(
    engine: Engine, ids: Iterable[Any], *, tenant: str | None = None, timeout: Any = 30.0
) -> dict[int, str]:
    """Each image's state, once every one of ``ids`` is ``ready`` or ``failed`` (or ``deleted``
    meanwhile), or ``timeout`` seconds have passed (then some are still ``pending`` or
    ``embedding``: the caller reads them).
    :class:`NotFound` names an id there is no image of (of ``tenant``'s, with one)."""
    given: list[Any] = [ids] if isinstance(ids, str | bytes) else list(ids)
    for image_id in given:
        if not checks.stored_id(image_id):
            raise InvalidInput(f"image ids must be whole numbers, got {image_id!r}")
    wanted: list[int] = given
    if len(wanted) > MAX_IDS:
        raise InvalidInput(f"wait for at most {MAX_IDS} images at once, got {len(wanted)}")
    seconds = check_timeout(timeout)
    if tenant is not None:
        tenant = checks.identifier(tenant, "tenant")
    if not wanted:
        return {}
    deadline = time.monotonic() + seconds
    with Listener(engine) as listener:
        found = states(engine, wanted, tenant)
        missing = sorted(set(wanted) - set(found))
        if missing:
            raise NotFound(f"no image {missing[0]}" + (f" of tenant {tenant!r}" if tenant else ""))
        waiting = {i for i, state in found.items() if state not in DONE}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            notified = listener.changed(min(left, RECHECK_SECONDS))
            if not notified or notified & waiting:  # a notification of ours, or the periodic read
                now = states(engine, waiting, tenant)
                found.update({i: now.get(i, "deleted") for i in waiting})  # deleted meanwhile
                waiting = {i for i in waiting if found[i] not in (*DONE, "deleted")}
    return found
