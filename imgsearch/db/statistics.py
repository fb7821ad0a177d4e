"""Statistics the planner can plan with, right after the writes that change them.

Right after a shop's first upload the catalog's tables hold thousands of rows that PostgreSQL's
statistics know nothing of (they were taken empty, or never): it estimates one row, and a plan
that is right for one row can be hundreds of times too slow for thousands. A filtered total right
after 3,000 products took 347 ms against 1.8 ms for its search (a nested loop reading every
embedding of the shop once per product; ../shared/FINDINGS.md). Autovacuum analyses the tables
a minute or so later. :func:`after_write` applies autovacuum's own rule at once, after each write
that can add many rows (uploads, workers' embeddings, re-embedding): when the rows changed since
the last analysis pass 50 + 10% of those it counted, it analyses what the write touched. On a
Citus coordinator the tables are empty shells and the workers' own autovacuum keeps the shards'
statistics: nothing is done there.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, text

from imgsearch.db import citus
from imgsearch.db.base import SCHEMA

# autovacuum's own rule for analysing a table (autovacuum_analyze_threshold and _scale_factor):
# rows changed since the last analysis above 50 + 10% of the rows it counted then
ANALYZE_THRESHOLD = 50
ANALYZE_SCALE_FACTOR = 0.1
UPLOADED = ("products", "images", "image_products", "embeddings")
_LOCK = 0x696D6761  # one analysis at a time per database: a second writer skips, the first one's covers it


def grown(engine: Engine, written: int, table: str = "embeddings") -> bool:
    """Whether ``table`` changed by a meaningful share since its statistics were taken: the rows
    changed since (PostgreSQL's count, which a backend reports up to a second late, plus the
    ``written`` rows just committed, perhaps counted twice) above 50 + 10% of those it counted
    then (a table never analysed counted none)."""
    with engine.connect() as conn:
        if citus.on_coordinator(conn):
            return False
        row = conn.execute(
            text(
                "SELECT greatest(c.reltuples, 0), coalesce(s.n_mod_since_analyze, 0) FROM pg_class c"
                " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE c.oid = to_regclass(:t)"
            ),
            {"t": f"{SCHEMA}.{table}"},
        ).one_or_none()
    if row is None:
        return False
    counted, changed = float(row[0]), int(row[1]) + written
    return changed > ANALYZE_THRESHOLD + ANALYZE_SCALE_FACTOR * counted


def analyze(engine: Engine, tables: Sequence[str] = UPLOADED) -> bool:
    """``ANALYZE`` the catalog's ``tables`` (names within its schema, never a caller's value),
    unless another process is analysing them now; whether it ran. A role that doesn't own a
    table gets PostgreSQL's warning and the others are analysed."""
    names = ", ".join(f"{SCHEMA}.{name}" for name in tables if name in UPLOADED)
    with engine.begin() as conn:
        if not conn.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _LOCK}).scalar():
            return False
        conn.execute(text(f"ANALYZE {names}"))
    return True


def after_write(engine: Engine, written: int, tables: Sequence[str] = UPLOADED) -> bool:
    """:func:`analyze` ``tables`` when ``written`` rows grew them by a meaningful share (:func:`grown`)."""
    return grown(engine, written) and analyze(engine, tables)
