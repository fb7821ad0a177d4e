"""Ingest: what callers hand over, checked, and written durably.

Checks of values (:mod:`~imgsearch.ingest.checks`), image bytes (:mod:`~imgsearch.ingest.images`)
and vectors (:mod:`~imgsearch.ingest.vectors`) serve every path that takes a caller's values, the
searches' included. Uploads (:mod:`~imgsearch.ingest.uploads`, :mod:`~imgsearch.ingest.rows`) commit
products and images in one transaction before anything else hears of them; bulk imports
(:mod:`~imgsearch.ingest.bulk`) do the same by ``COPY``. Near-duplicates at upload, product updates
and removal live here too. What happens next is :mod:`imgsearch.work`'s.
"""
