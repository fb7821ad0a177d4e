"""Work: PostgreSQL as the queue between an upload and its embedding.

Workers are woken by a payload-free message (:mod:`~imgsearch.work.wake`), claim pending rows with
``SKIP LOCKED`` (:mod:`~imgsearch.work.queue`), embed them back to back
(:mod:`~imgsearch.work.pipeline`) and store the results; re-embedding with another model
(:mod:`~imgsearch.work.reembed`) and the texts asked for from SQL
(:mod:`~imgsearch.work.text_requests`) run the same way.
"""
