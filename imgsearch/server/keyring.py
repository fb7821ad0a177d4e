"""Turning a request's key into a :class:`~imgsearch.keys.Principal`, fast, and never after its
revocation.

Looking a key up costs a database round trip, a fair share of a search. So a key verified once is
kept in memory, and dropped as soon as the database says a key changed: every update or delete
of ``imgsearch.api_keys`` notifies channel ``imgsearch_api_keys`` (migration 0011), which a thread
here listens on. Keys are served from memory only while that thread is connected; without it
every request looks its key up, and the memory is emptied when it reconnects (it may have missed a
notification). A lookup that raced with a notification doesn't fill the memory with what it read
(a generation count tells), and nothing is kept longer than ``max_age_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Engine

from imgsearch import keys
from imgsearch.keys import Principal

log = logging.getLogger(__name__)

CHANNEL = "imgsearch_api_keys"
MAX_AGE_SECONDS = 300.0
RECONNECT_SECONDS = (0.5, 1.0, 2.0, 5.0)


class Keyring:
    """Checks API keys against the database, keeping verified ones while it hears of changes."""

    def __init__(
        self, engine: Engine, *, cache: bool = True, max_age_seconds: float = MAX_AGE_SECONDS
    ) -> None:
        self.engine = engine
        self.max_age_seconds = max_age_seconds
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._listening = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if cache:
            self._thread = threading.Thread(target=self._listen, name="imgsearch-keyring", daemon=True)
            self._thread.start()

    def cached(self, key: str) -> Principal | None:
        """The principal of a key verified earlier and unchanged since; None: look it up."""
        if not self._listening:
            return None
        found = self._verified.get(keys.digest(key))
        if found is None or time.monotonic() - found[1] > self.max_age_seconds:
            return None
        return found[0]

    def verify(self, key: str) -> Principal | None:
        """Look ``key`` up in the database (None: malformed, unknown or revoked) and keep it."""
        generation = self._generation
        # begin(): the lookup commits. A transaction that ends in ROLLBACK (what returning a
        # connect()ed connection to the pool does) makes psycopg drop every statement it prepared
        # on the connection, and the searches sharing the pool would be planned afresh again
        with self.engine.begin() as conn:
            principal = keys.authenticate(conn, key)
        if principal is not None and self._listening:
            with self._lock:
                if generation == self._generation:  # no key changed while it was read
                    self._verified[keys.digest(key)] = (principal, time.monotonic())
        return principal

    def forget(self) -> None:
        """Drop every key kept (a key changed, or changes may have been missed)."""
        with self._lock:
            self._generation += 1
            self._verified.clear()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self._listen_once()
                attempt = 0
            except Exception as exc:  # the database went away: look every key up until it's back
                self._listening = False
                self.forget()
                delay = RECONNECT_SECONDS[min(attempt, len(RECONNECT_SECONDS) - 1)]
                attempt += 1
                log.warning("key notifications lost (%s); looking every key up, retrying in %g s", exc, delay)
                self._stop.wait(delay)

    def _listen_once(self) -> None:
        raw = self.engine.raw_connection()
        conn: Any = raw.driver_connection
        raw.detach()  # its own connection, not the pool's, for as long as it listens
        try:
            conn.autocommit = True
            conn.execute(f"LISTEN {CHANNEL}")
            self.forget()  # whatever was kept before may have changed unheard
            self._listening = True
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=1.0, stop_after=1):
                    self.forget()
                # a connection lost while waiting ends notifies() quietly: make sure it's alive
                if conn.closed or conn.broken:
                    raise ConnectionError("the listening connection closed")
        finally:
            self._listening = False
            raw.close()
