"""Images per state (migration 0054): the signed counts per (tenant, state) that triggers on
``images`` append, summed by a read and folded when they pile up (a Citus coordinator, whose
shards keep no counts, counts its images: :mod:`imgsearch.work.progress`). Part of
:data:`imgsearch.db.models.Base`'s metadata."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Connection, Index, Table, Text, func, select, text

from imgsearch.db import engine
from imgsearch.db.base import Base

# an append-only log of signed counts per (tenant, state); a read sums them
image_counts = Table(
    "image_counts",
    Base.metadata,
    Column("tenant", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
    Index("image_counts_tenant_idx", "tenant"),
)

# the rows are folded when they are this many more than their (tenant, state) cells, and twice as many
COMPACT_AFTER = 1000


def per_state(conn: Connection, tenant: str | None) -> dict[str, int]:
    """The images of ``tenant`` (None: every tenant the connection sees) per state, for the states
    that have any. Folds the count rows first where they have piled up (on a primary)."""
    shop = [] if tenant is None else [image_counts.c.tenant == tenant]
    per_cell = (
        select(
            image_counts.c.state,
            func.sum(image_counts.c.n).label("n"),
            func.count().label("entries"),
        )
        .where(*shop)
        .group_by(image_counts.c.tenant, image_counts.c.state)
        .subquery()
    )
    rows = conn.execute(
        select(per_cell.c.state, func.sum(per_cell.c.n), func.sum(per_cell.c.entries), func.count()).group_by(
            per_cell.c.state
        )
    ).all()
    entries, cells = sum(int(r[2]) for r in rows), sum(int(r[3]) for r in rows)
    if entries > 2 * cells + COMPACT_AFTER and not engine.read_only(conn):
        conn.execute(text("SELECT imgsearch.compact_image_counts(:tenant)"), {"tenant": tenant})
    return {str(r[0]): int(r[1]) for r in rows if int(r[1])}
