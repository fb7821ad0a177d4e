"""Searches on PostgreSQL hot standbys: which replica answers a search, and when one may.

A :class:`Replicas` holds a search pool per standby (``IMGSEARCH_REPLICA_URLS``) and hands them
out round robin, skipping a replica that failed a moment ago (:data:`DOWN_SECONDS`) or lags more
than ``max_lag_seconds``; with none left, the catalog searches on the primary. Lag is read from
the replica itself every :data:`LAG_CHECK_SECONDS`: 0 when it has replayed all it received, else
the age of the last transaction it replayed (its uptime, when it has replayed none since it started).

Read-your-writes (``consistent=True``): the catalog reads the primary's WAL position when the
search starts (every write acknowledged before it lies below), and a replica answers only once
it has replayed up to there (:meth:`Replicas.wait_for`).

A Citus cluster's replica is a standby of the coordinator, its workers' standbys registered as
secondary nodes (``citus_add_secondary_node``) and its URL asking for them
(``options=-c citus.use_secondary_nodes=always``). The rows live on the workers, each with a WAL of
its own: there a position is each node group's (the coordinator's, group 0, and each worker's, read
with ``run_command_on_all_nodes``), and a replica answers once each of its nodes has replayed its
group's.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from imgsearch.db import citus
from imgsearch.db import engine as db_engine
from imgsearch.settings import Settings

log = logging.getLogger(__name__)

DOWN_SECONDS = 5.0  # a replica that failed is left out this long, then tried again
LAG_CHECK_SECONDS = 2.0
WAIT_POLL_SECONDS = 0.002

# a standby that has replayed no transaction since it started has no replay timestamp: behind, it
# lags at least since its start (read as 0, a paused or stuck standby just restarted kept searching)
LAG_SQL = text(
    "SELECT pg_is_in_recovery(), CASE WHEN pg_last_wal_receive_lsn() IS NULL "
    "OR pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() THEN 0 "
    "ELSE extract(epoch FROM now() - coalesce(pg_last_xact_replay_timestamp(), pg_postmaster_start_time())) END"
)


@dataclass
class Replica:
    """One standby: its search pool and what was last seen of it."""

    name: str  # its URL without a password, for logs, status and metrics
    engine: Engine
    down_until: float = 0.0
    lag_seconds: float | None = None
    lag_checked: float = 0.0
    in_recovery: bool = True
    failures: int = 0
    searches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class Replicas:
    """The standbys a catalog searches on (see the module's doc)."""

    def __init__(
        self,
        urls: list[str],
        *,
        pool_size: int,
        lock_timeout_ms: int = 0,
        max_lag_seconds: float = 30.0,
        wait_seconds: float = 1.0,
    ) -> None:
        self.max_lag_seconds = max_lag_seconds
        self.wait_seconds = wait_seconds
        self.members: list[Replica] = []
        for url in urls:
            engine = db_engine.make_replica_engine(url, pool_size, lock_timeout_ms)
            self.members.append(Replica(engine.url.render_as_string(hide_password=True), engine))
        self._turn = itertools.count()

    @classmethod
    def from_settings(cls, settings: Settings, urls: Sequence[str] | None = None) -> Replicas | None:
        """The standbys of ``urls`` (default ``IMGSEARCH_REPLICA_URLS``) with the settings' pool
        size, lock timeout, lag bound and wait; None when there are none."""
        chosen = list(settings.replica_urls if urls is None else urls)
        if not chosen:
            return None
        return cls(
            chosen,
            pool_size=settings.pool_size,
            lock_timeout_ms=settings.lock_timeout_ms,
            max_lag_seconds=settings.replica_max_lag_seconds,
            wait_seconds=settings.replica_wait_ms / 1000,
        )

    def __len__(self) -> int:
        return len(self.members)

    def dispose(self) -> None:
        for member in self.members:
            member.engine.dispose()

    def rotation(self) -> Iterator[Replica]:
        """The replicas in round-robin order, those out of rotation left out."""
        if not self.members:
            return
        start = next(self._turn) % len(self.members)
        now = time.monotonic()
        for member in self.members[start:] + self.members[:start]:
            if member.down_until > now:
                continue
            self._check_lag(member)
            if member.down_until > now or not member.in_recovery:
                continue
            if member.lag_seconds is not None and member.lag_seconds > self.max_lag_seconds:
                continue
            yield member

    def _check_lag(self, member: Replica, *, force: bool = False) -> None:
        now = time.monotonic()
        if (not force and now - member.lag_checked < LAG_CHECK_SECONDS) or not member.lock.acquire(
            blocking=False
        ):
            return
        try:
            with member.engine.connect() as conn:
                in_recovery, lag = conn.execute(LAG_SQL).one()
            member.in_recovery, member.lag_seconds = bool(in_recovery), float(lag or 0.0)
            if not in_recovery:
                # promoted: writes may now go to it, but imgsearch doesn't know; searches stay off it
                log.warning("replica %s is no longer a standby (promoted?); searches leave it", member.name)
        except DBAPIError as exc:
            self.failed(member, exc)
        finally:
            member.lag_checked = now
            member.lock.release()

    def failed(self, member: Replica, exc: BaseException) -> None:
        """Leave ``member`` out for :data:`DOWN_SECONDS` after it failed a search or a check."""
        member.failures += 1
        member.down_until = time.monotonic() + DOWN_SECONDS
        reason = getattr(exc, "orig", exc)
        log.warning(
            "replica %s left out for %g s: %s", member.name, DOWN_SECONDS, str(reason).strip().splitlines()[0]
        )

    def wait_for(self, conn: Connection, lsn: str) -> bool:
        """Whether the replica of ``conn`` has replayed up to ``lsn`` (:func:`primary_lsn`'s),
        waiting up to ``wait_seconds``."""
        deadline = time.monotonic() + self.wait_seconds
        check = _REPLAYED_GROUPS if lsn.startswith("{") else _REPLAYED
        while True:
            reached = conn.execute(check, {"lsn": lsn}).scalar()
            if reached:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(WAIT_POLL_SECONDS)

    def lags(self) -> dict[str, float | None]:
        """Each replica's lag in seconds as last seen (None: down, or not checked yet)."""
        for member in self.members:
            self._check_lag(member, force=True)
        return {m.name: (None if m.down_until > time.monotonic() else m.lag_seconds) for m in self.members}


def replica_fault(exc: DBAPIError) -> bool:
    """Whether a replica's error means "search elsewhere": the connection failed or was cut, the
    server is starting or stopping, or recovery cancelled the query (a conflict with replay)."""
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    return getattr(exc.orig, "sqlstate", None) in ("40001", "57P01", "57P02", "57P03")


def primary_lsn(conn: Connection) -> str:
    """The primary's WAL position now: every write acknowledged before lies below it. On a Citus
    coordinator, each node group's, as JSON (``{"0": "0/1A2B", "1": ...}``)."""
    if citus.on_coordinator(conn):
        return str(conn.execute(_GROUP_POSITIONS).scalar_one())
    return str(conn.execute(text("SELECT pg_current_wal_insert_lsn()")).scalar_one())


_REPLAYED = text("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)")
# a Citus cluster's positions: the coordinator's own (group 0) and each worker group's
_GROUP_POSITIONS = text(
    "SELECT json_object_agg(g, lsn)::text FROM ("
    " SELECT 0 AS g, pg_current_wal_insert_lsn()::text AS lsn"
    " UNION ALL SELECT n.groupid, r.result FROM run_command_on_all_nodes('SELECT pg_current_wal_insert_lsn()') AS r"
    " JOIN pg_dist_node n USING (nodeid) WHERE r.success AND n.groupid <> 0) AS positions"
)
# whether a Citus replica has replayed every group's position: the standby coordinator's own, and
# those of the nodes it searches (the secondaries, with citus.use_secondary_nodes = 'always')
_REPLAYED_GROUPS = text(
    "WITH want AS (SELECT key::int AS g, value::pg_lsn AS lsn FROM json_each_text(CAST(:lsn AS json))),"
    " have AS (SELECT 0 AS g, pg_last_wal_replay_lsn() AS lsn"
    "  UNION ALL SELECT n.groupid, r.result::pg_lsn"
    "  FROM run_command_on_all_nodes('SELECT coalesce(pg_last_wal_replay_lsn(), pg_current_wal_lsn())') AS r"
    "  JOIN pg_dist_node n USING (nodeid) WHERE r.success AND n.groupid <> 0)"
    " SELECT coalesce(bool_and(h.lsn >= w.lsn), false) FROM want w LEFT JOIN have h USING (g)"
)
