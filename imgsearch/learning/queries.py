"""Every search recorded as User Behavior Insights records a query: its ``query_id``, tenant,
client, the query as typed and normalised, its filters and mode, and its hits in order, so that
the events on its hits (:mod:`imgsearch.learning.events`) can name it.

A ``query_id`` is a UUIDv7: its first 48 bits are the search's time in milliseconds, which is
the row's ``searched_at``, so an event finds its search in one day's partition. The row is
written on the primary after the search (the catalog's pool for writes, not the searches': those
may all be on replicas), in autocommit with ``synchronous_commit`` off for that statement only:
losing the last searches of a crash loses their clicks, not data the catalog needs. A failure to
write it is logged (a closed connection is tried once more), and the search still answers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import unicodedata
import uuid
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


_INSERT = text(
    """
    INSERT INTO imgsearch.search_queries (query_id, searched_at, tenant, client_id, user_query, query_norm,
        query_attributes, result_offset, product_ids, image_ids, product_pks)
    SELECT q.id, uuid_extract_timestamp(q.id), :tenant, :client_id, :user_query, :query_norm,
        CAST(:attributes AS jsonb), :result_offset, CAST(:product_ids AS text[]), CAST(:image_ids AS bigint[]),
        ARRAY(SELECT f.id FROM generate_series(1, cardinality(CAST(:product_ids AS text[]))) AS g(n)
              LEFT JOIN (SELECT h.n, p.id FROM unnest(CAST(:tenants AS text[]), CAST(:product_ids AS text[]))
                             WITH ORDINALITY AS h(tenant, product_id, n)
                         JOIN imgsearch.products p ON p.tenant = h.tenant AND p.product_id = h.product_id
                         WHERE CAST(:tenant AS text) = '' OR p.tenant = CAST(:tenant AS text)) AS f
              ON f.n = g.n ORDER BY g.n)
    FROM (SELECT CAST(:query_id AS uuid) AS id, set_config('synchronous_commit', 'off', true)) AS q
    """
)
# the hits' product keys by an inner join, placed by their order: Citus sends an inner join to the
# shards with the ids (a shop's to its node alone); an outer join would read every product
_COMPILED: dict[str, Compiled] = {}  # by driver


def record(
    engine: Engine,
    query_id: uuid.UUID,
    *,
    tenant: str | None,
    client_id: str | None,
    user_query: str | None,
    attributes: Mapping[str, Any],
    offset: int,
    hits: Sequence[Hit],
) -> bool:
    """Write one search's row; False (logged) when the database refused it."""
    values = {
        "query_id": str(query_id),
        "tenant": tenant or "",  # a search across tenants: '' (a distribution column holds no NULL)
        "client_id": client_id,
        "user_query": user_query,
        "query_norm": normalized(user_query),
        "attributes": json.dumps(attributes, default=str),
        "result_offset": offset,
        "product_ids": [hit.product_id for hit in hits],
        "image_ids": [hit.image_id for hit in hits],
        "tenants": [hit.tenant for hit in hits],
    }
    for attempt in (1, 2):
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                driver = conn.dialect.driver
                compiled = _COMPILED.get(driver)
                if compiled is None:
                    compiled = _COMPILED[driver] = Compiled.of(_INSERT, conn.dialect)
                compiled.execute(conn, values)
            return True
        except DBAPIError as exc:
            if exc.connection_invalidated and attempt == 1:
                continue  # a connection closed since its checkout: once more, on a new one
            log.warning("search %s not recorded (its events will be refused): %s", query_id, exc.orig)
            return False
    return False
