"""Reading stored rows back: an image's state and metadata, its bytes or preview, and the
catalog's categories. Each read runs under the tenant's row-level security when it names one, so
another tenant's image is indistinguishable from a missing one; its joins and its filter name
the tenant too, so that on a Citus cluster each is a query of the shop's node (or of every
node's, joined on each)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, select

from imgsearch.access import tenancy
from imgsearch.db import citus
from imgsearch.db.facet_models import facet_counts
from imgsearch.db.models import Embedding, Image, ImageProduct, Product
from imgsearch.errors import InvalidQuery, NotFound
from imgsearch.ingest import checks
from imgsearch.records import ImageRecord, ModelInfo


def image_record(engine: Engine, model: ModelInfo, image_id: Any, tenant: str | None) -> ImageRecord:
    """:meth:`imgsearch.Catalog.get`: ``has_embedding`` says whether ``model`` embedded it."""
    if not checks.stored_id(image_id):
        raise NotFound(f"no image with id {image_id!r}")
    with engine.begin() as conn:
        shop = None if tenant is None else tenancy.scope(conn, tenant)
        row, product_ids = _record_rows(conn, model, image_id, shop)
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    values = row._asdict()
    values["product_ids"] = product_ids
    values["sha256"] = values["sha256"].hex() if values["sha256"] else None
    values["attributes"] = dict(values["attributes"])
    return ImageRecord(**values)


def _named(table: Any, tenant: str | None) -> list[Any]:
    """``table.tenant = tenant`` (none without one): each table of a statement names its tenant,
    which a Citus cluster needs to send the statement to the tenant's node alone."""
    return [] if tenant is None else [table.tenant == tenant]


def _record_rows(conn: Connection, model: ModelInfo, image_id: Any, tenant: str | None) -> tuple[Any, list[str]]:
    has_embedding = exists().where(
        Embedding.tenant == Image.tenant, Embedding.image_id == Image.id, Embedding.model_id == model.id,
        *_named(Embedding, tenant),
    )  # fmt: skip
    stmt = (
        select(
            Image.id.label("image_id"),
            Image.tenant,
            Product.product_id,
            Product.category,
            Product.price,
            Product.currency,
            Product.attributes,
            Image.state,
            Image.error,
            Image.attempts,
            Image.sha256,
            Image.width,
            Image.height,
            Image.format,
            Image.byte_size,
            Image.uri,
            Image.created_at,
            Image.updated_at,
            has_embedding.label("has_embedding"),
            Image.phash,
            Image.duplicate_of,
            Product.title,
            Product.description,
            Product.brand,
        )
        .join(Product, and_(Product.tenant == Image.tenant, Product.id == Image.product_pk))
        .where(Image.id == image_id, *_named(Image, tenant), *_named(Product, tenant))
    )
    owners = (  # its first product first, then the others in the order they linked it
        select(Product.product_id)
        .select_from(ImageProduct)
        .join(Product, and_(Product.tenant == ImageProduct.tenant, Product.id == ImageProduct.product_pk))
        .join(Image, and_(Image.tenant == ImageProduct.tenant, Image.id == ImageProduct.image_id))
        .where(
            ImageProduct.image_id == image_id,
            *_named(ImageProduct, tenant), *_named(Product, tenant), *_named(Image, tenant),
        )
        .order_by(Product.id != Image.product_pk, ImageProduct.created_at, Product.id)
    )  # fmt: skip
    row = conn.execute(stmt).first()
    return row, list(conn.execute(owners).scalars()) if row is not None else []


def image_bytes(engine: Engine, image_id: Any, tenant: str | None, *, preview: bool) -> bytes | None:
    """The bytes stored for an image; ``preview``: those, or the thumbnail kept when they were
    dropped after embedding. None when there are none (a URL upload, an imported embedding)."""
    if not checks.stored_id(image_id):
        raise NotFound(f"no image with id {image_id!r}")
    shown = func.coalesce(Image.content, Image.thumbnail) if preview else Image.content
    stmt = select(shown.label("shown")).where(Image.id == image_id)
    with engine.begin() as conn:
        if tenant is not None:
            stmt = stmt.where(Image.tenant == tenancy.scope(conn, tenant))
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"no image with id {image_id}")
    return None if row.shown is None else bytes(row.shown)


def categories(engine: Engine, tenant: str | None, limit: Any, model_id: int) -> list[tuple[str, int]]:
    """:meth:`imgsearch.Catalog.categories`: categories by number of findable products (with an
    embedding of model ``model_id``), most first. Read from the counts the facets' triggers keep
    (migration 0039: a product counts under its category while it has search rows of the model),
    whatever the catalog's size; a Citus cluster, which keeps none, counts the products."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise InvalidQuery(f"limit must be an integer from 1 to 10000, got {limit!r}")
    with engine.begin() as conn:
        shop = None if tenant is None else tenancy.scope(conn, tenant)
        stmt = _counted_categories(model_id, shop) if citus.on_coordinator(conn) else _kept_categories(model_id, shop)
        return [(row.category, int(row.products)) for row in conn.execute(stmt.limit(limit))]


def _kept_categories(model_id: int, shop: str | None) -> Any:  # a Select
    count = func.sum(facet_counts.c.n).label("products")
    return (
        select(facet_counts.c.value.label("category"), count)
        .where(
            facet_counts.c.model_id == model_id, facet_counts.c.category.is_(None),  # the shops' own counts
            facet_counts.c.facet == "category", *_named(facet_counts.c, shop),
        )
        .group_by(facet_counts.c.value)
        .having(count > 0)
        .order_by(count.desc(), facet_counts.c.value)
    )


def _counted_categories(model_id: int, shop: str | None) -> Any:  # a Select
    count = func.count().label("products")
    findable = (
        select(Embedding.image_id)
        .where(
            Embedding.tenant == Product.tenant, Embedding.product_pk == Product.id,
            Embedding.model_id == model_id, *_named(Embedding, shop),
        )
        .exists()
    )  # fmt: skip
    return (
        select(Product.category, count)
        .where(Product.category.is_not(None), findable, *_named(Product, shop))
        .group_by(Product.category)
        .order_by(count.desc(), Product.category)
    )
