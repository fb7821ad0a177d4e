"""Turning a request's key into a :class:`~imgsearch.access.keys.Principal`, on every request.

A key is looked up in PostgreSQL for each request, so a revoked key is refused from the first
request that starts after ``imgsearch tenant revoke-key`` returns, by every server process. The
lookup is one prepared statement by primary key, on a few connections of the keyring's own, in
autocommit, with psycopg's asyncio interface: it runs on the event loop without a thread, where
SQLAlchemy's statement layer and a hop to a worker thread cost several times the round trip
(docs/benchmarks.md, "The HTTP service").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from sqlalchemy import URL

from imgsearch.access import keys
from imgsearch.access.keys import Principal
from imgsearch.db.engine import libpq_conninfo
from imgsearch.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

CONNECTIONS = 4  # lookups at once; each takes ~0.1 ms, so a few serve thousands a second
CONNECT_TIMEOUT_SECONDS = 10


class Keyring:
    """Checks API keys against the database, from the event loop."""

    def __init__(self, url: URL, connections: int = CONNECTIONS) -> None:
        self._conninfo = libpq_conninfo(url)
        self._size = connections
        self._idle: asyncio.LifoQueue[psycopg.AsyncConnection[Any]] = asyncio.LifoQueue()
        self._open = 0

    async def verify(self, key: str) -> Principal | None:
        """Who ``key`` belongs to; None when it is malformed, unknown or revoked.
        :class:`DatabaseUnavailable` when PostgreSQL can't be asked."""
        key_id = keys.key_id_of(key)
        if key_id is None:
            return keys.verified(key, None)  # the same digest comparison as for a stored key
        conn = await self._acquire()
        try:
            cursor = await conn.execute(keys.LOOKUP_SQL, (key_id,), prepare=True)
            row = await cursor.fetchone()
        except psycopg.OperationalError as exc:
            await self._discard(conn)
            raise DatabaseUnavailable(f"database unavailable: {str(exc).strip().splitlines()[0]}") from exc
        except BaseException:
            await self._discard(conn)
            raise
        self._idle.put_nowait(conn)
        return keys.verified(key, row)

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if not conn.closed and not conn.broken:
                return conn
            self._open -= 1
        if self._open >= self._size:
            return await self._idle.get()
        self._open += 1
        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
            )
        except psycopg.OperationalError as exc:
            self._open -= 1
            raise DatabaseUnavailable(f"database unavailable: {str(exc).strip().splitlines()[0]}") from exc

    async def _discard(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._open -= 1
        try:
            await conn.close()
        except Exception as exc:  # closing a broken connection may fail too; it's gone either way
            log.debug("closing a key lookup connection: %s", exc)

    async def close(self) -> None:
        while not self._idle.empty():
            await self._discard(self._idle.get_nowait())
