"""Celery workers: thin tasks over :mod:`imgsearch.work.queue`.

PostgreSQL decides what is pending; a task carries no payload, claims a batch, embeds it and
re-queues itself while work remains. A periodic sweep re-queues work whose message was lost.
"""
