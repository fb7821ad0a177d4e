"""Deleting images and products.

An image's embeddings (every model's) go with it, and a product's images with the product, by
the schema's cascades, in one transaction. An image another product shares stays, with that
product (migration 0019's trigger hands it over before the cascade). A worker that is embedding a deleted image at that
moment finds its claim gone and stores nothing for it (:func:`imgsearch.work.queue.store`). The HNSW
indexes drop the rows at the next vacuum; until then searches skip them and still return
``min(k, matching rows)`` hits.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Engine, delete, func, select

from imgsearch.access import tenancy
from imgsearch.db.models import Image, ImageProduct, Product
from imgsearch.errors import InvalidInput, NotFound
from imgsearch.ingest import checks

MAX_IDS = 10_000  # per call: one statement's parameters


def delete_images(engine: Engine, image_ids: Iterable[int], *, tenant: str | None = None) -> int:
    """Delete every image of ``image_ids``, or none: an id that names no image (none of
    ``tenant``'s, with a tenant) is :class:`NotFound` and nothing is deleted. The count deleted."""
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        return 0
    if len(ids) > MAX_IDS:
        raise InvalidInput(f"at most {MAX_IDS} image ids per call, got {len(ids)}")
    unknown = [i for i in ids if not checks.stored_id(i)]
    if unknown:
        raise NotFound(f"no image with id {unknown[0]!r}; nothing deleted")
    with engine.begin() as conn:
        if tenant is not None:
            tenant = tenancy.scope(conn, tenant)
        # the images' products first, in key order (tenant, product_id), as uploads lock them
        # (imgsearch.ingest.rows): the cascade then counts their facets off image by image
        # (imgsearch._facets_follow), and a writer of the same products waits here instead of in
        # a circle (in id order, which isn't key order once batches created them, two such writers
        # deadlocked: tests/ingest/test_removal.py)
        linked = select(ImageProduct.product_pk).where(ImageProduct.image_id.in_(ids))
        products = select(Product.id).where(Product.id.in_(linked))
        if tenant is not None:  # one shop's rows: on Citus, one shard's
            linked = linked.where(ImageProduct.tenant == tenant)
            products = select(Product.id).where(Product.tenant == tenant, Product.id.in_(linked))
        in_key_order = (Product.tenant.collate("C"), Product.product_id.collate("C"))  # Python's sorted()
        conn.execute(products.order_by(*in_key_order).with_for_update(key_share=True))
        deleted = set(conn.execute(delete(Image).where(Image.id.in_(ids)).returning(Image.id)).scalars())
        missing = [i for i in ids if i not in deleted]
        if missing:  # raising rolls the transaction back
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise NotFound(f"no image with id {missing[0]}{more}; nothing deleted")
    return len(deleted)


def delete_product(engine: Engine, product_id: str, *, tenant: str) -> int:
    """Delete ``tenant``'s product ``product_id`` with its images (an image another product shares
    stays that product's); how many images it had.
    :class:`NotFound` when the tenant has no such product."""
    product_id = checks.identifier(product_id, "product_id")
    with engine.begin() as conn:
        tenant = tenancy.scope(conn, tenant)
        pk = conn.execute(
            select(Product.id).where(Product.tenant == tenant, Product.product_id == product_id)
        ).scalar()
        if pk is None:
            raise NotFound(f"tenant {tenant!r} has no product {product_id!r}")
        images = conn.execute(
            select(func.count()).select_from(ImageProduct).where(ImageProduct.product_pk == pk)
        ).scalar_one()
        conn.execute(delete(Product).where(Product.id == pk))
    return int(images)
