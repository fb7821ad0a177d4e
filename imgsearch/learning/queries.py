"""Every search recorded as User Behavior Insights records a query: its ``query_id``, tenant,
client, the query as typed and normalised, its filters and mode, and its hits in order, so that
the events on its hits (:mod:`imgsearch.learning.events`) can name it.

A ``query_id`` is a UUIDv7: its first 48 bits are the search's time in milliseconds, which is
the row's ``searched_at``, so an event finds its search in one day's partition.

The row is written off the search's path: the search hands it to its catalog's :class:`Recorder`
and answers; the recorder's thread writes the rows waiting, together, at most
:data:`WRITE_DELAY` seconds after the first of them (one statement for a batch, on the
primary: the catalog's pool for writes, not the searches', which may all be on replicas), in
autocommit with ``synchronous_commit`` off. What a crash can lose: a process killed loses the
rows it had not written yet, the searches of its last :data:`WRITE_DELAY` seconds and of the
write under way; a database crash, as with any commit with ``synchronous_commit`` off, its last
commits (three times ``wal_writer_delay``, 0.6 s by default). Either way their events are refused
as events of an unknown search, and nothing the catalog needs is lost. An event may come before
its search's row is written: it waits for the row (:data:`MAX_DELAY`). A failure to write is
logged (a closed connection is tried once more), and the searches still answered.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import threading
import time
import unicodedata
import uuid
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from imgsearch.db.compiled import Compiled
from imgsearch.records import Hit

log = logging.getLogger(__name__)

MAX_NORMALIZED = 500  # characters of a normalised query kept (a boost's key)


def new_query_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): 48 bits of Unix time in milliseconds, then 74 random bits."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # the RFC's variant
    return uuid.UUID(int=value)


_SPACES = re.compile(r"\s+")


def normalized(query: str | None) -> str | None:
    """The key of a text query for its boosts: Unicode-normalised (NFKC), case-folded, runs of
    white space as one space, trimmed; None for no text."""
    if query is None:
        return None
    folded = _SPACES.sub(" ", unicodedata.normalize("NFKC", query).casefold()).strip()
    return folded[:MAX_NORMALIZED] or None


INSERT = text(
    """
    INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, client_id, user_query, query_norm,
        query_attributes, result_offset, product_ids, image_ids, product_pks)
    WITH r AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(query_id uuid, tenant text, client_id text,
            user_query text, query_norm text, attributes jsonb, result_offset int, product_ids text[],
            image_ids bigint[], tenants text[])
    )
    SELECT r.query_id, uuid_extract_timestamp(r.query_id), r.tenant, r.client_id, r.user_query, r.query_norm,
        r.attributes, r.result_offset, r.product_ids, r.image_ids,
        ARRAY(SELECT p.id FROM unnest(r.tenants, r.product_ids) WITH ORDINALITY AS h(tenant, product_id, n)
              LEFT JOIN imgsearch.products p ON p.tenant = h.tenant AND p.product_id = h.product_id
                  AND (r.tenant = '' OR p.tenant = r.tenant)
              ORDER BY h.n)
    FROM r
    WHERE set_config('synchronous_commit', 'off', true) = 'off'
    """
)
# a batch of rows as one JSON value, written by one statement; each search's hits, in order, with
# their product's key (NULL where the product is gone): a lookup of the shop's key and the
# product id per hit, whatever the catalog's size (a join of the batch's hits with products was
# planned for the 1,000 hits a JSON batch is estimated to hold, and read every product to hash
# them: 30-60 ms a batch at 100,000 products, bench/search/record_writes.py)


WRITE_DELAY = 0.05  # seconds a search's row may wait to be written with others
BATCH = 500  # rows written by one statement, at most
MAX_DELAY = 2.0  # seconds after a search by which its row is written (an event waits that long)


def row(
    query_id: uuid.UUID,
    *,
    tenant: str | None,
    client_id: str | None,
    user_query: str | None,
    attributes: Mapping[str, Any],
    offset: int,
    hits: Sequence[Hit],
) -> dict[str, Any]:
    """One search's row, as :func:`write` takes it."""
    return {
        "query_id": str(query_id),
        "tenant": tenant or "",  # a search across tenants: '' (a distribution column holds no NULL)
        "client_id": client_id,
        "user_query": user_query,
        "query_norm": normalized(user_query),
        "attributes": attributes,
        "result_offset": offset,
        "product_ids": [hit.product_id for hit in hits],
        "image_ids": [hit.image_id for hit in hits],
        "tenants": [hit.tenant for hit in hits],
    }


def write(engine: Engine, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Write searches' rows, all in one statement; False (logged) when the database refused them."""
    values = {"rows": json.dumps(list(rows), default=str)}
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                Compiled.once(INSERT, conn).execute(conn, values)
            return True
        except DBAPIError as exc:
            if exc.connection_invalidated and attempt == 1:
                continue  # a connection closed since its checkout: once more, on a new one
            _refused(rows, exc.orig)
            return False
    return False


def _refused(rows: Sequence[Mapping[str, Any]], error: Any) -> None:
    first = rows[0]["query_id"] if rows else None
    log.warning(
        "%d searches not recorded (their events will be refused), %s first: %s", len(rows), first, error
    )


class Recorder:
    """A catalog's searches' rows, written by a thread of its own (see the module): a search
    hands its row over (:meth:`record`) and answers (``background=False``: writes it first, for
    an engine whose connections belong to the calling thread, as Django's do). :meth:`flush`
    waits until every row handed over before it is written; :meth:`close` flushes and stops the
    thread (a process that exits without closing its catalog flushes at exit)."""

    def __init__(self, engine: Engine, background: bool = True) -> None:
        self._engine = engine
        self._background = background  # False: each row written before record() returns
        self._rows: list[tuple[uuid.UUID, dict[str, Any]]] = []  # handed over, not written yet
        self._changed = threading.Condition()
        self._handed = self._done = 0  # rows handed over, rows written (or refused)
        self._urgent = False
        self._thread: threading.Thread | None = None
        self._stopping = False
        atexit.register(_flush_at_exit, weakref.ref(self))

    def record(self, query_id: uuid.UUID, **search: Any) -> None:
        """Hand over one search's row (:func:`row`'s arguments; the row is made on the thread)."""
        if not self._background:
            write(self._engine, [row(query_id, **search)])
            return
        search["hits"] = list(search["hits"])  # (the caller's answer is its own)
        with self._changed:
            self._rows.append((query_id, search))
            self._handed += 1
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="imgsearch-recorder", daemon=True)
                self._thread.start()
            elif len(self._rows) == 1 or len(self._rows) >= BATCH:  # the thread waits for a first row
                self._changed.notify_all()

    def flush(self, timeout: float = MAX_DELAY) -> bool:
        """Wait until the rows handed over so far are written; False if ``timeout`` passed first."""
        with self._changed:
            wanted = self._handed
            if self._done >= wanted:
                return True
            self._urgent = True
            self._changed.notify_all()
            return self._changed.wait_for(lambda: self._done >= wanted, timeout)

    def close(self) -> None:
        """Flush, and stop the thread."""
        self.flush()
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=MAX_DELAY)

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._rows:
                    self._changed.wait_for(lambda: bool(self._rows) or self._stopping)
                if not self._rows:  # stopping, nothing left
                    return
                # the first row waits WRITE_DELAY for others, unless a flush or a full batch calls
                self._changed.wait_for(lambda: self._urgent or len(self._rows) >= BATCH, WRITE_DELAY)
                batch, self._rows = self._rows[:BATCH], self._rows[BATCH:]
                self._urgent = bool(self._rows) and self._urgent
            write(self._engine, [row(query_id, **search) for query_id, search in batch])
            with self._changed:
                self._done += len(batch)
                self._changed.notify_all()


def _flush_at_exit(recorder: weakref.ref[Recorder]) -> None:
    alive = recorder()
    if alive is not None:
        alive.flush()
