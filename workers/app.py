"""The Celery application, configured from ``IMGSEARCH_*`` settings at worker start."""

from __future__ import annotations

from celery import Celery

from imgsearch.settings import Settings

app = Celery("imgsearch", include=["workers.tasks"])


def configure(settings: Settings) -> Celery:
    """Point the app at the broker and set the delivery guarantees workers rely on."""
    app.conf.update(
        broker_url=settings.redis_url,
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_ignore_result=True,
        # a message is acknowledged after its task ran; a killed worker's message is redelivered
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        beat_schedule={
            "imgsearch-sweep": {"task": "imgsearch.sweep", "schedule": float(settings.sweep_seconds)},
            "imgsearch-boosts": {
                "task": "imgsearch.refresh_boosts",
                "schedule": float(settings.boost_refresh_seconds),
            },
        },
    )
    return app
