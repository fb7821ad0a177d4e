"""Texts asked for from SQL (``imgsearch.search_text``), answered by workers; and the text cache
table that those answers, and the library's text queries, share.

``search_text`` writes a request row over a loopback dblink connection and notifies
:data:`CHANNEL` (migration 0015 says why that way). A worker's :class:`Listener` thread holds a
connection that ``LISTEN``\\s on the channel; woken, it claims the waiting requests with
``FOR UPDATE SKIP LOCKED``, embeds their texts in one forward pass and writes the vectors into
``imgsearch.text_embeddings``, where the function reads them. A request claimed by a worker that
died is asked again by the function after a second, and claimable again after
:data:`CLAIM_SECONDS`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import Connection, Engine, text

from imgsearch.access import tenancy
from imgsearch.db import citus
from imgsearch.errors import ImgSearchError
from imgsearch.records import ModelInfo

log = logging.getLogger(__name__)

CHANNEL = "imgsearch_text_requests"
CLAIM_SECONDS = 2.0  # a claimed request no answer came for is claimable again after this
BATCH = 32  # texts per forward pass
FALLBACK_SECONDS = 5.0  # a listener looks for requests this often when no notification came
MAX_CACHED_TEXTS = 100_000  # rows of imgsearch.text_embeddings kept; the oldest go first
EVICT_SECONDS = 60.0
# the application_name of a listener's connection, made once its worker's model is loaded: each
# such connection is a worker that answers search_text now (:func:`listening`; search_text's
# timeout error counts them too: migration 0028)
LISTENER_NAME = "imgsearch text listener"


def _as_worker(conn: Connection) -> None:
    """The worker's role for the requests and the cache (tables of no tenant), except on a Citus
    coordinator: there a write of a reference table that names another (the models) locks that
    one's shards too, which Citus allows only a role that may change it; the catalog's own login
    writes them there."""
    if not citus.on_coordinator(conn):
        tenancy.run_as_worker(conn)


def text_hash(query: str) -> bytes:
    """The cache's key for a text (the table's ``imgsearch._text_hash``)."""
    return hashlib.sha256(query.encode()).digest()


@dataclass(frozen=True)
class CachedText:
    vector: np.ndarray
    logit_scale: float | None
    logit_bias: float | None


def cached(conn: Connection, model_id: int, query: str) -> CachedText | None:
    """A text's stored embedding under ``model_id``, or None."""
    row = conn.execute(
        text(
            "SELECT embedding::text, logit_scale, logit_bias FROM imgsearch.text_embeddings "
            "WHERE model_id = :model AND text_hash = :hash"
        ),
        {"model": model_id, "hash": text_hash(query)},
    ).first()
    if row is None:
        return None
    vector = np.array(row[0].strip("[]").split(","), dtype=np.float32)
    return CachedText(vector, row[1], row[2])


def store(
    conn: Connection,
    model_id: int,
    rows: Sequence[tuple[str, np.ndarray]],
    logit_params: tuple[float, float | None],
) -> None:
    """Put texts' embeddings in the cache (a text stored already keeps its row)."""
    if not rows:
        return
    scale, bias = logit_params
    conn.execute(
        text(
            "INSERT INTO imgsearch.text_embeddings (model_id, text_hash, text, embedding, logit_scale, logit_bias) "
            "VALUES (:model, :hash, :text, CAST(:embedding AS vector), :scale, :bias) "
            "ON CONFLICT (model_id, text_hash) DO NOTHING"
        ),
        [
            {
                "model": model_id,
                "hash": text_hash(query),
                "text": query,
                "embedding": "["
                + ",".join(repr(float(x)) for x in np.asarray(vector, dtype=np.float32))
                + "]",
                "scale": scale,
                "bias": bias,
            }
            for query, vector in rows
        ],
    )


def evict(conn: Connection, keep: int = MAX_CACHED_TEXTS) -> int:
    """Delete the oldest cached texts beyond ``keep``; how many."""
    return int(
        conn.execute(
            text(
                "DELETE FROM imgsearch.text_embeddings WHERE (model_id, text_hash) IN ("
                "SELECT model_id, text_hash FROM imgsearch.text_embeddings ORDER BY created_at DESC OFFSET :keep)"
            ),
            {"keep": keep},
        ).rowcount
    )


Embed = Callable[[list[str]], Any]


def answer_pending(
    engine: Engine,
    model: ModelInfo,
    embed: Embed,
    logit_params: Callable[[], tuple[float, float | None]],
) -> int:
    """Claim waiting requests for ``model``, embed them, store the answers; how many were answered.
    A text the model refuses (empty after all, bad characters) gets its error instead."""
    answered = 0
    while True:
        with engine.begin() as conn:
            _as_worker(conn)
            claimed = conn.execute(
                text(
                    # statement_timestamp(), not clock_timestamp(): a Citus cluster's reference
                    # table takes no volatile function in an UPDATE
                    "UPDATE imgsearch.text_requests SET claimed_at = statement_timestamp() WHERE id IN ("
                    " SELECT id FROM imgsearch.text_requests WHERE error IS NULL AND (claimed_at IS NULL"
                    " OR claimed_at < statement_timestamp() - make_interval(secs => :claim))"
                    " ORDER BY id LIMIT :batch FOR UPDATE SKIP LOCKED)"
                    " RETURNING id, model_id, text"
                ),
                {"claim": CLAIM_SECONDS, "batch": BATCH},
            ).all()
        if not claimed:
            return answered
        stale = [r.id for r in claimed if r.model_id != model.id]
        mine = [r for r in claimed if r.model_id == model.id]
        errors: dict[int, str] = {}
        vectors: list[tuple[str, np.ndarray]] = []
        if mine:
            texts = [r.text for r in mine]
            try:
                result = embed(texts)
                vectors = list(zip(texts, result, strict=True))
            except ImgSearchError:
                # one bad text: embed them one by one, so the others still get their answer
                for r in mine:
                    try:
                        vectors.append((r.text, embed([r.text])[0]))
                    except ImgSearchError as exc:
                        errors[r.id] = str(exc)
        with engine.begin() as conn:
            _as_worker(conn)
            store(conn, model.id, vectors, logit_params() if vectors else (1.0, None))
            done = [r.id for r in mine if r.id not in errors]
            if done:
                conn.execute(text("DELETE FROM imgsearch.text_requests WHERE id = ANY(:ids)"), {"ids": done})
            for request, error in errors.items():
                conn.execute(
                    text("UPDATE imgsearch.text_requests SET error = :error WHERE id = :id"),
                    {"error": error[:2000], "id": request},
                )
            if stale:
                # asked for under a model that is no longer active: the function asks again, for the new one
                conn.execute(text("DELETE FROM imgsearch.text_requests WHERE id = ANY(:ids)"), {"ids": stale})
        answered += len(done)


def listening(conn: Connection) -> int:
    """How many workers answer ``search_text`` on this database now: their listeners' connections
    (each made once its worker's model is loaded)."""
    return int(
        conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": LISTENER_NAME},
        ).scalar_one()
    )


class Listener:
    """A daemon thread that answers ``search_text``'s requests: woken by ``NOTIFY``, with a look
    every :data:`FALLBACK_SECONDS` in case a notification was missed (a reconnect).

    ``prepare`` (the worker's model loading) runs in the thread before it connects, so a listening
    connection (:data:`LISTENER_NAME`, :func:`listening`) is a worker ready to answer at once."""

    def __init__(
        self,
        conninfo: str,
        answer: Callable[[], int],
        evict_old: Callable[[], int] | None = None,
        prepare: Callable[[], object] | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.answer = answer
        self.evict_old = evict_old
        self.prepare = prepare
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="imgsearch-text-requests", daemon=True)
        self._evicted = 0.0

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=FALLBACK_SECONDS + 5)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                if self.prepare is not None:
                    self.prepare()
                with psycopg.connect(
                    self.conninfo, autocommit=True, connect_timeout=10, application_name=LISTENER_NAME
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._serve()  # requests that came while no one listened
                    while not self.stopped.is_set():
                        for _ in conn.notifies(timeout=FALLBACK_SECONDS, stop_after=1):
                            pass
                        self._serve()
            except psycopg.Error as exc:
                log.warning("text requests: %s; listening again in 2 s", str(exc).strip().splitlines()[0])
                self.stopped.wait(2.0)
            except Exception:  # never let the listener die with the worker alive
                log.exception("text requests: unexpected error; listening again in 2 s")
                self.stopped.wait(2.0)

    def _serve(self) -> None:
        answered = self.answer()
        if answered:
            log.info("text requests: %d answered", answered)
        if self.evict_old is not None and time.monotonic() - self._evicted > EVICT_SECONDS:
            self._evicted = time.monotonic()
            self.evict_old()
