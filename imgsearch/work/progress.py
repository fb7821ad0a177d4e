"""A catalog's progress: its images per state, how long the oldest waiting one has waited, and
the latest failures (``/v1/status``, ``/metrics``, ``imgsearch status``). The counts are kept by
triggers (:mod:`imgsearch.db.image_counts`); the rest is read through partial indexes (migration
0054): no statement reads every image."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, and_, func, select

from imgsearch.access import tenancy
from imgsearch.db import citus, image_counts
from imgsearch.db.models import Image, ImageState, Product


@dataclass(frozen=True)
class QueueStatus:
    counts: dict[str, int]
    oldest_pending_seconds: float | None
    latest_errors: list[tuple[int, str, str]]  # image id, tenant, error
    products: dict[int, str] = field(default_factory=dict)  # each failed image's (first) product id


def status(engine: Engine, errors: int = 5, *, tenant: str | None = None) -> QueueStatus:
    """Images per state, the age of the oldest one waiting, and the latest ``errors`` failures;
    with ``tenant``, of that tenant's images only (under its row-level security)."""
    with engine.begin() as conn:
        return read_status(conn, errors, tenant)


def read_status(conn: Connection, errors: int, tenant: str | None) -> QueueStatus:
    """:func:`status` in ``conn``'s transaction."""
    # the tenant named in each statement too: on a Citus cluster, a query of its node alone
    shop_name = None if tenant is None else tenancy.scope(conn, tenant)
    shop = [] if shop_name is None else [Image.tenant == shop_name]
    counts = {state.value: 0 for state in ImageState}
    if citus.on_coordinator(conn):  # the shards keep no counts
        counts.update(conn.execute(select(Image.state, func.count()).where(*shop).group_by(Image.state)).tuples().all())
    else:
        counts.update(image_counts.per_state(conn, shop_name))
    oldest = conn.execute(
        select(func.extract("epoch", func.now() - func.min(Image.created_at))).where(
            Image.state.in_([ImageState.PENDING, ImageState.EMBEDDING]), *shop
        )
    ).scalar()
    failed = (  # the latest first, then their products: a product looked up for each one shown
        select(Image.id, Image.tenant, Image.error, Image.product_pk, Image.updated_at)
        .where(Image.state == ImageState.FAILED, *shop)
        .order_by(Image.updated_at.desc(), Image.id.desc())
        .limit(errors)
        .subquery("failed")
    )
    latest = conn.execute(
        select(failed.c.id, failed.c.tenant, failed.c.error, Product.product_id)
        .join(Product, and_(Product.tenant == failed.c.tenant, Product.id == failed.c.product_pk))
        .order_by(failed.c.updated_at.desc(), failed.c.id.desc())
    ).all()
    return QueueStatus(
        counts,
        None if oldest is None else float(oldest),
        [(r.id, r.tenant, r.error or "") for r in latest],
        {r.id: r.product_id for r in latest},
    )
