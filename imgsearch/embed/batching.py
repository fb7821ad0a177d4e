"""Query embeddings from many threads, computed together: a micro-batcher and a text cache.

An HTTP server (or a threaded Django/Flask app) asks for one text or one image embedding per
request, from many threads at once. A forward pass over 16 texts costs far less than 16 passes
over one, so :class:`MicroBatcher` collects what callers submit, up to ``max_size`` items and
``max_wait_seconds`` after the first, runs one call over all of them on its own thread, and hands
each caller its result. What arrives while a pass runs goes into the next one.

While requests come in batches (the last pass had several), the first of a batch also waits up
to :data:`BUSY_WAIT_FRACTION` of the last pass's time (at most :data:`MAX_BUSY_WAIT_SECONDS`): the
callers of the pass that just ended are sending their next requests, and without the wait the
callers split into two halves that alternate, each a half-full pass (bench/server/serve.py). A lone
request after a lone request waits ``max_wait_seconds`` only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Generic, NamedTuple, TypeVar

log = logging.getLogger(__name__)

BUSY_WAIT_FRACTION = 0.1
MAX_BUSY_WAIT_SECONDS = 0.1

T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class MicroBatcher(Generic[T, R]):
    """Runs ``run(items)`` over items submitted from many threads, several at a time.

    ``run`` returns one result per item, in order; a result that is an exception is raised to
    the caller that submitted that item alone. An exception ``run`` raises goes to every caller
    of its batch. Its thread starts on the first :meth:`submit` and stops with :meth:`close`
    (or with the process: it is a daemon).

    >>> batcher = MicroBatcher(lambda texts: [t.upper() for t in texts], max_size=16)
    >>> batcher.submit("red shoe")
    'RED SHOE'
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_size: int,
        max_wait_seconds: float = 0.0,
        name: str = "imgsearch-batcher",
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        if max_wait_seconds < 0:
            raise ValueError(f"max_wait_seconds must not be negative, got {max_wait_seconds}")
        self._run = run
        self.max_size = max_size
        self.max_wait_seconds = max_wait_seconds
        self._name = name
        self._queue: queue.SimpleQueue[tuple[T, Future[R]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.batches = 0  # passes run, for tests and metrics
        self.items = 0
        self.on_batch: Callable[[int], None] | None = None  # told each batch's size, e.g. for metrics
        self._busy_wait = 0.0  # set from the last pass when it had several items

    def submit(self, item: T) -> R:
        """``item``'s result, computed in a batch with whatever else was submitted meanwhile."""
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
        future: Future[R] = Future()
        self._ensure_started()
        self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Stop the thread after the batches already submitted."""
        with self._start_lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"{self._name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
                self._thread.start()

    def _collect(self, first: tuple[T, Future[R]]) -> tuple[list[tuple[T, Future[R]]], bool]:
        """``first`` and what else arrives within the wait, up to ``max_size``; whether to stop."""
        batch = [first]
        deadline = time.monotonic() + max(self.max_wait_seconds, self._busy_wait)
        while len(batch) < self.max_size:
            remaining = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            live = [(item, future) for item, future in batch if future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batches += 1
            self.items += len(live)
            if self.on_batch is not None:
                self.on_batch(len(live))
            started = time.monotonic()
            try:
                results = self._run([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"{self._name}: {len(results)} results for {len(live)} items")
            except BaseException as exc:  # every caller of the batch hears of it; the thread goes on
                for _, future in live:
                    future.set_exception(exc)
                continue
            finally:
                took = time.monotonic() - started
                self._busy_wait = (
                    min(MAX_BUSY_WAIT_SECONDS, BUSY_WAIT_FRACTION * took) if len(live) > 1 else 0.0
                )
            for (_, future), result in zip(live, results, strict=True):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


class CacheInfo(NamedTuple):
    """As :func:`functools.lru_cache`'s ``cache_info()``."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class LRUCache(Generic[K, V]):
    """A thread-safe least-recently-used cache of at most ``maxsize`` entries (0: keeps nothing)."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError(f"maxsize must not be negative, got {maxsize}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            try:
                value = self._data[key]
            except KeyError:
                self._misses += 1
                return None
            self._data.move_to_end(key)
            self._hits += 1
            return value

    def peek(self, key: K) -> V | None:
        """The value, counted as a hit and made the most recent when present; a miss isn't counted."""
        with self._lock:
            if key not in self._data:
                return None
        return self.get(key)

    def put(self, key: K, value: V) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._hits = self._misses = 0

    def info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self._hits, self._misses, self.maxsize, len(self._data))
