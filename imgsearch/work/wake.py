"""Waking Celery workers after an upload: a message with no payload, by task name.

Redis only wakes workers up; PostgreSQL holds the work. A failed wake-up is logged and the upload
stands: the workers' periodic sweep finds the pending rows anyway.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imgsearch.settings import Settings

log = logging.getLogger(__name__)

MAX_WAKEUPS = 8

Waker = Callable[[int], None]


def from_settings(settings: Settings) -> Waker | None:
    """A :func:`celery_waker` for the settings' broker and queue; None unless
    ``IMGSEARCH_WAKE_WORKERS`` asks for wake-ups."""
    if not settings.wake_workers:
        return None
    return celery_waker(settings.redis_url, settings.queue, settings.batch_size)


def celery_waker(redis_url: str, queue: str, batch_size: int) -> Waker:
    """A function that sends ``imgsearch.embed_pending`` messages for ``count`` new images."""
    from celery import Celery

    client: Any = Celery("imgsearch-client", broker=redis_url)
    client.conf.update(
        broker_connection_retry_on_startup=False,
        broker_connection_max_retries=1,
        broker_transport_options={"max_retries": 1},
    )

    def wake(count: int) -> None:
        messages = min(MAX_WAKEUPS, max(1, math.ceil(count / batch_size)))
        try:
            for _ in range(messages):
                client.send_task("imgsearch.embed_pending", queue=queue, ignore_result=True)
        except Exception as exc:  # the broker is a wake-up only: never fail a committed upload
            log.warning(
                "could not wake workers at %s (%s); the sweep will pick the images up", redis_url, exc
            )

    return wake


def queue_depth(redis_url: str, queue: str) -> int | None:
    """Messages waiting in the Celery queue, or None when the broker can't be reached (within a
    second: status pages and metrics must work without a broker)."""
    try:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)
        try:
            return int(client.llen(queue))
        finally:
            client.close()
    except Exception:
        return None
